// Tests of partition files on an image holding an MBR made by sfdisk
// (read-write and read-only), and of Options.Names renaming files.

package fusefs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// partitionedImage makes dir/disk.qcow2 (64 MiB) holding an MBR written by
// sfdisk: p1 at 1 MiB (10 MiB), extended p2 from 12 MiB, logical p5 at
// 13 MiB (5 MiB). p1 starts with 64 KiB of 0x11, p5 with 64 KiB of 0x55,
// 64 KiB of 0x99 lie at 20 MiB, past p5; the rest is unallocated. It returns the path and the byte ranges.
func partitionedImage(t *testing.T, dir string) (string, [2]int64, [2]int64) {
	t.Helper()
	if _, err := exec.LookPath("sfdisk"); err != nil {
		testenv.Lacking(t, "sfdisk (fdisk package)")
	}
	raw := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(raw, 64<<20)
	cmd := exec.Command("sfdisk", "-q", raw)
	cmd.Stdin = strings.NewReader("label: dos\n2048,10M,83\n24576,,5\n26624,5M,83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	p1 := [2]int64{1 << 20, 10 << 20}
	p5 := [2]int64{13 << 20, 5 << 20}
	// Data past p5 too, at 20 MiB: a partition's SEEK_DATA must not find it.
	run(t, "qemu-io", "-c", "write -P 0x11 1M 64k", "-c", "write -P 0x55 13M 64k", "-c", "write -P 0x99 20M 64k", img)
	return img, p1, p5
}

func TestPartitionFiles(t *testing.T) {
	testenv.RequireFUSE(t)
	path, p1, p5 := partitionedImage(t, t.TempDir())
	var infoCalls atomic.Int32
	info := func(img *qcow2.Image) []byte {
		infoCalls.Add(1)
		return []byte("image: " + img.Path() + "\n")
	}
	mnt, _, _ := mount(t, path, Options{Partitions: true, InfoText: info})

	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"disk-p1.raw", "disk-p5.raw", "disk.info", "disk.raw"}; !slices.Equal(names, want) {
		t.Fatalf("files %v, want %v (no file for the extended partition)", names, want)
	}

	whole, err := os.ReadFile(filepath.Join(mnt, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		r    [2]int64
	}{{"disk-p1.raw", p1}, {"disk-p5.raw", p5}} {
		got, err := os.ReadFile(filepath.Join(mnt, tc.name))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(got)) != tc.r[1] || !bytes.Equal(got, whole[tc.r[0]:tc.r[0]+tc.r[1]]) {
			t.Errorf("%s: %d bytes, not the disk's range [%d, +%d)", tc.name, len(got), tc.r[0], tc.r[1])
		}
	}

	// A write through the partition lands at the partition's offset.
	f := openFile(t, filepath.Join(mnt, "disk-p5.raw"), os.O_RDWR)
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x77}, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, p5[1]); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at the partition's end: %v, want ENOSPC", err)
	}
	// SEEK_DATA/SEEK_HOLE are relative to the partition: data at 0 and at 1 MiB.
	if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || off != 64<<10 {
		t.Errorf("SEEK_HOLE from 0: %d, %v; want %d", off, err, 64<<10)
	}
	if off, err := unix.Seek(int(f.Fd()), 64<<10, unix.SEEK_DATA); err != nil || off != 1<<20 {
		t.Errorf("SEEK_DATA from 64k: %d, %v; want %d", off, err, 1<<20)
	}
	if _, err := unix.Seek(int(f.Fd()), (1<<20)+(64<<10), unix.SEEK_DATA); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("SEEK_DATA after the last data: %v, want ENXIO (the disk's data past the partition must not show)", err)
	}
	f.Sync()
	back := make([]byte, 4096)
	w := openFile(t, filepath.Join(mnt, "disk.raw"), os.O_RDONLY)
	if _, err := w.ReadAt(back, p5[0]+1<<20); err != nil || !bytes.Equal(back, bytes.Repeat([]byte{0x77}, 4096)) {
		t.Errorf("write through disk-p5.raw not at the partition's offset in disk.raw (%v)", err)
	}

	// The info file: read-only, the text InfoText makes.
	text, err := os.ReadFile(filepath.Join(mnt, "disk.info"))
	if err != nil || string(text) != "image: "+path+"\n" {
		t.Errorf("disk.info: %q, %v", text, err)
	}
	if _, err := os.OpenFile(filepath.Join(mnt, "disk.info"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
		t.Errorf("open disk.info for writing: %v, want EROFS", err)
	}
	st, err := os.Stat(filepath.Join(mnt, "disk.info"))
	if err != nil || st.Size() != int64(len(text)) || st.Mode().Perm() != 0o444 {
		t.Errorf("stat disk.info: %v, %v", st, err)
	}
}

func TestPartitionFilesReadOnly(t *testing.T) {
	testenv.RequireFUSE(t)
	path, _, _ := partitionedImage(t, t.TempDir())
	mnt, _, _ := mount(t, path, Options{ReadOnly: true, Partitions: true})
	p := filepath.Join(mnt, "disk-p1.raw")
	if _, err := os.OpenFile(p, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open %s for writing on a read-only mount: %v, want EROFS", p, err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o444 {
		t.Errorf("stat %s: %v, %v; want mode 0444", p, st, err)
	}
}

// TestNames: Names renames an image's files (the overlay shows the
// evidence's name, not the overlay's).
func TestNames(t *testing.T) {
	path := makeImage(t, t.TempDir())
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	root, views, err := buildTree([]*qcow2.Image{img}, Options{Names: []string{"evidence"}, InfoText: func(*qcow2.Image) []byte { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		v.Close()
	}
	var names []string
	for _, f := range root.files {
		names = append(names, f.name)
	}
	for _, f := range root.infos {
		names = append(names, f.name)
	}
	if want := []string{"evidence.raw", "evidence@s1.raw", "evidence.info"}; !slices.Equal(names, want) {
		t.Errorf("files %v, want %v", names, want)
	}
}
