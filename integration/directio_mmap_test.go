// Tests that a --direct-io mount's file can still be mapped MAP_SHARED, read
// and written through the mapping, and seen by pread and qemu-img.

package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectIOSharedMmap: on a --direct-io mount (every open gets
// FOPEN_DIRECT_IO) vm.raw can still be mapped MAP_SHARED, read and written
// through the mapping; after msync a pread sees the bytes, and after
// unmount so does qemu-img.
func TestDirectIOSharedMmap(t *testing.T) {
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "8M")
	qemuIO(t, img, "write -P 0x5a 1M 64k")
	mnt := mkdir(t, dir, "mnt")
	for _, flags := range [][]string{{"--direct-io"}, {"-o", "direct_io"}} {
		mountQcow2fs(t, mnt, flags, img)
		f, err := os.OpenFile(filepath.Join(mnt, "vm.raw"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		const size = 4 << 20
		m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			f.Close()
			unmountQcow2fs(t, mnt, img)
			t.Fatalf("%v: mmap(MAP_SHARED) of vm.raw: %v", flags, err)
		}
		if !bytes.Equal(m[1<<20:1<<20+65536], bytes.Repeat([]byte{0x5a}, 65536)) {
			t.Errorf("%v: the mapping does not show the image's data", flags)
		}
		pat := bytes.Repeat([]byte("mmap!"), 20000) // crosses pages, unaligned
		copy(m[3000:], pat)
		if err := unix.Msync(m, unix.MS_SYNC); err != nil {
			t.Errorf("%v: msync: %v", flags, err)
		}
		got := make([]byte, len(pat))
		if _, err := f.ReadAt(got, 3000); err != nil || !bytes.Equal(got, pat) {
			t.Errorf("%v: pread after msync does not see the mapping's writes (%v)", flags, err)
		}
		// A pwrite is seen through the mapping.
		if _, err := f.WriteAt([]byte("pwrite"), 2<<20); err != nil {
			t.Fatal(err)
		}
		if string(m[2<<20:2<<20+6]) != "pwrite" {
			t.Errorf("%v: the mapping does not see a pwrite: %q", flags, m[2<<20:2<<20+6])
		}
		unix.Munmap(m)
		f.Close()
		unmountQcow2fs(t, mnt, img)
		qemuCheckClean(t, img)
		raw := qemuRawOf(t, img, filepath.Join(dir, "after.raw"))
		b, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[3000:3000+len(pat)], pat) || string(b[2<<20:2<<20+6]) != "pwrite" {
			t.Errorf("%v: qemu-img does not see the writes made through the mapping", flags)
		}
		os.Remove(raw)
	}
}
