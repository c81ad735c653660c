// Tests that an image damaged in one place keeps serving beside a healthy
// one: EIO for the damaged range only, the daemon stays up.

package integration

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDamagedImageKeepsServing: an image whose metadata is damaged in one
// place mounts beside a healthy one; reading the damaged range gives EIO,
// the rest of that image and the other image keep working, and the daemon
// stays up.
func TestDamagedImageKeepsServing(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	good := filepath.Join(dir, "good.qcow2")
	bad := filepath.Join(dir, "bad.qcow2")
	for _, p := range []string{good, bad} {
		qemuCreate(t, p, "4M", "cluster_size=65536", "", "")
		qemuIO(t, p, "write -P 0x42 0 192k")
	}
	// Unalign the second L2 entry of bad.qcow2 (the L2 table is the first
	// cluster after header, refcount table/block and L1 in a fresh image;
	// find it through the L1 table).
	f, err := os.OpenFile(bad, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	f.ReadAt(b[:], 40) // l1_table_offset
	l1 := int64(binary.BigEndian.Uint64(b[:]))
	f.ReadAt(b[:], l1)
	l2 := int64(binary.BigEndian.Uint64(b[:]) & 0x00fffffffffffe00)
	f.ReadAt(b[:], l2+8)
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])+512)
	f.WriteAt(b[:], l2+8)
	f.Close()

	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mountQcow2fs(t, mnt, []string{"--ro"}, good, bad)
	buf := make([]byte, 4096)
	bf, err := os.Open(filepath.Join(mnt, "bad.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if _, err := bf.ReadAt(buf, 65536); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the damaged cluster: %v, want EIO", err)
	}
	for _, c := range []struct {
		file string
		off  int64
	}{{"bad.raw", 0}, {"bad.raw", 131072}, {"good.raw", 65536}} {
		fh, err := os.Open(filepath.Join(mnt, c.file))
		if err != nil {
			t.Fatal(err)
		}
		n, err := fh.ReadAt(buf, c.off)
		fh.Close()
		if err != nil || n != len(buf) || buf[0] != 0x42 || buf[4095] != 0x42 {
			t.Fatalf("%s at %d after the damaged read: n=%d err=%v byte %#x", c.file, c.off, n, err, buf[0])
		}
	}
	bf.Close()
	unmountQcow2fs(t, mnt, good, bad)
}
