// Tests of mounted images, with QEMU's reads as the reference: read-only
// and read-write mounts, SEEK_DATA/SEEK_HOLE, write read-back, name
// clashes, direct I/O and the tree options.

package fusefs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// run runs a QEMU tool and fails the test with its output on error.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// makeImage creates dir/img.qcow2 (4 MiB): 1 MiB of 0xab at 0, then
// snapshot s1, then 512 KiB of 0xcd at 2 MiB, so the snapshot and the
// active image differ.
func makeImage(t *testing.T, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "img.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	run(t, "qemu-io", "-c", "write -P 0xab 0 1M", img)
	run(t, "qemu-img", "snapshot", "-c", "s1", img)
	run(t, "qemu-io", "-c", "write -P 0xcd 2M 512k", img)
	return img
}

// qemuRaw returns what QEMU reads from the image (or one of its snapshots).
func qemuRaw(t *testing.T, img, snapshot string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	args := []string{"convert", "-O", "raw"}
	if snapshot != "" {
		args = append(args, "-l", "snapshot.name="+snapshot)
	}
	run(t, "qemu-img", append(args, img, out)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mount opens the image and mounts it in a fresh directory; cleanup
// unmounts and closes whatever the test leaves.
func mount(t *testing.T, path string, opts Options) (string, *qcow2.Image, *Server) {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: opts.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(mnt, []*qcow2.Image{img}, opts)
	if err != nil {
		img.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, srv); img.Close() })
	return mnt, img, srv
}

// unmount unmounts, detaching lazily when something still holds a file
// open: Wait must not block forever on a mount the test process itself
// keeps busy.
func unmount(t *testing.T, srv *Server) {
	t.Helper()
	if err := srv.Unmount(); err != nil {
		t.Errorf("unmount: %v", err)
		if err := syscall.Unmount(srv.Mountpoint(), syscall.MNT_DETACH); err != nil {
			t.Errorf("lazy unmount: %v", err)
		}
	}
	srv.Wait()
}

// openFile opens a file in the mount and closes it at cleanup, before the
// mount's own cleanup runs.
func openFile(t *testing.T, name string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestReadOnlyMount(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	mnt, _, _ := mount(t, path, Options{ReadOnly: true})

	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"img.raw", "img@s1.raw"}; !slices.Equal(names, want) {
		t.Fatalf("files %v, want %v", names, want)
	}

	raw := filepath.Join(mnt, "img.raw")
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, qemuRaw(t, path, "")) {
		t.Error("img.raw differs from qemu-img convert output")
	}
	snap, err := os.ReadFile(filepath.Join(mnt, "img@s1.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if want := qemuRaw(t, path, "s1"); !bytes.Equal(snap, want) {
		t.Error("img@s1.raw differs from qemu-img convert -l snapshot.name=s1 output")
	}
	if bytes.Equal(snap, got) {
		t.Error("snapshot and active image read the same; the test image is wrong")
	}

	st, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 4<<20 {
		t.Errorf("size %d, want %d", st.Size(), 4<<20)
	}
	if st.Mode() != 0o444 {
		t.Errorf("mode %v, want -r--r--r--", st.Mode())
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Blocks == 0 || sys.Blksize != blockSize {
		t.Errorf("st_blocks %d st_blksize %d", sys.Blocks, sys.Blksize)
	}

	for _, flag := range []int{os.O_RDWR, os.O_WRONLY} {
		f, err := os.OpenFile(raw, flag, 0)
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("open flag %#x: %v, want EROFS", flag, err)
		}
		if err == nil {
			f.Close()
		}
	}

	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Blocks == 0 {
		t.Error("statfs reports no blocks")
	}
	mountinfoHas(t, mnt, "fuse.qcow2fs", path)
}

func TestSeekDataHole(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	mnt, _, _ := mount(t, path, Options{ReadOnly: true})
	f := openFile(t, filepath.Join(mnt, "img.raw"), os.O_RDONLY)
	fd := int(f.Fd())
	for _, tc := range []struct {
		off    int64
		whence int
		want   int64
		err    error
	}{
		{0, unix.SEEK_DATA, 0, nil},
		{0, unix.SEEK_HOLE, 1 << 20, nil},
		{1 << 20, unix.SEEK_DATA, 2 << 20, nil},
		{2 << 20, unix.SEEK_HOLE, 2<<20 + 512<<10, nil},
		{3 << 20, unix.SEEK_DATA, 0, syscall.ENXIO},
		{3 << 20, unix.SEEK_HOLE, 3 << 20, nil},
		{4 << 20, unix.SEEK_HOLE, 0, syscall.ENXIO},
	} {
		got, err := unix.Seek(fd, tc.off, tc.whence)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("seek(%d, %d) = %d, %v; want %v", tc.off, tc.whence, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("seek(%d, %d) = %d, %v; want %d", tc.off, tc.whence, got, err, tc.want)
		}
	}
}

// TestReadWriteMount checks what a writable mount refuses, which does not
// depend on the image's write path.
func TestReadWriteMount(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	mnt, _, _ := mount(t, path, Options{})
	raw := filepath.Join(mnt, "img.raw")
	st, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o644 {
		t.Errorf("mode %v, want -rw-r--r--", st.Mode())
	}
	if st, err := os.Stat(filepath.Join(mnt, "img@s1.raw")); err != nil || st.Mode() != 0o444 {
		t.Errorf("snapshot file: %v, %v; want mode -r--r--r--", st, err)
	}
	if _, err := os.OpenFile(filepath.Join(mnt, "img@s1.raw"), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open snapshot for writing: %v, want EROFS", err)
	}
	f := openFile(t, raw, os.O_RDWR)
	if err := f.Truncate(1 << 20); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	if err := f.Truncate(4 << 20); err != nil {
		t.Errorf("truncate to the same size: %v", err)
	}
	if _, err := f.WriteAt([]byte("x"), 4<<20); !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EFBIG) {
		t.Errorf("write past the end: %v, want ENOSPC", err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 5<<20, 4096); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("fallocate past the end: %v, want ENOSPC", err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4096); err != nil {
		t.Errorf("fallocate inside the disk: %v", err)
	}
	if err := f.Chmod(0o600); err != nil {
		t.Errorf("chmod: %v", err)
	} else if st, _ := f.Stat(); st.Mode() != 0o600 {
		t.Errorf("mode after chmod %v", st.Mode())
	}
}

// TestWriteReadBack writes through the mount and checks QEMU reads the same
// bytes after unmount. It needs the qcow2 write path.
func TestWriteReadBack(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	img, err := qcow2.Open(path, qcow2.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(mnt, []*qcow2.Image{img}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			unmount(t, srv)
			img.Close()
		}
	})
	f := openFile(t, filepath.Join(mnt, "img.raw"), os.O_RDWR)
	want := bytes.Repeat([]byte{0x5a}, 3000)
	if _, err := f.WriteAt(want, 1<<20-1000); err != nil {
		t.Fatalf("write: %v", err)
	}
	// Punch a hole into the 0xab area and zero a range of the 0xcd area.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 64<<10, 64<<10); err != nil {
		t.Fatalf("punch hole: %v", err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 2<<20, 4096); err != nil {
		t.Fatalf("zero range: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	unmounted = true

	exp := make([]byte, 4<<20)
	for i := range 1 << 20 {
		exp[i] = 0xab
	}
	for i := range 512 << 10 {
		exp[2<<20+i] = 0xcd
	}
	copy(exp[1<<20-1000:], want)
	clear(exp[64<<10 : 128<<10])
	clear(exp[2<<20 : 2<<20+4096])
	if got := qemuRaw(t, path, ""); !bytes.Equal(got, exp) {
		t.Error("image content after writes differs from what was written")
	}
	run(t, "qemu-img", "check", path)
}

func TestNameClash(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	var imgs []*qcow2.Image
	for _, d := range []string{dir1, dir2} {
		p := filepath.Join(d, "same.qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
		img, err := qcow2.Open(p, qcow2.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		imgs = append(imgs, img)
	}
	if _, _, err := buildTree(imgs, Options{}); err == nil {
		t.Fatal("two images named same.qcow2 mounted together without error")
	}
}

// mountinfoHas checks /proc/self/mountinfo lists mnt with the file system
// type and source.
func mountinfoHas(t *testing.T, mnt, fstype, source string) {
	t.Helper()
	e, ok := mounts.Find(mnt)
	if !ok {
		t.Fatalf("%s not in /proc/self/mountinfo", mnt)
	}
	if e.FSType != fstype || e.Source != source {
		t.Errorf("mount %s: type %s source %s; want %s %s", mnt, e.FSType, e.Source, fstype, source)
	}
	if opts := "," + e.Options + ","; !strings.Contains(opts, ",ro,") || !strings.Contains(opts, ",nodev,") {
		t.Errorf("mount options %s lack ro,nodev", e.Options)
	}
}

func TestDirectIO(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	mnt, _, _ := mount(t, path, Options{ReadOnly: true, DirectIO: true})
	got, err := os.ReadFile(filepath.Join(mnt, "img.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, qemuRaw(t, path, "")) {
		t.Error("img.raw read with direct I/O differs from qemu-img convert output")
	}
}

func TestTreeOptions(t *testing.T) {
	dir := t.TempDir()
	path := makeImage(t, dir)
	other := filepath.Join(dir, "other.qcow")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", other, "1M")
	var imgs []*qcow2.Image
	for _, p := range []string{path, other} {
		img, err := qcow2.Open(p, qcow2.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		imgs = append(imgs, img)
	}
	names := func(r *rootDir) []string {
		var out []string
		for _, f := range r.files {
			out = append(out, f.name)
		}
		return out
	}

	root, views, err := buildTree(imgs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"img.raw", "other.raw", "img@s1.raw"}; !slices.Equal(names(root), want) {
		t.Errorf("files %v, want %v", names(root), want)
	}
	if len(views) != 1 || !root.files[2].ro {
		t.Errorf("%d snapshot views, snapshot read-only %v", len(views), root.files[2].ro)
	}
	for _, v := range views {
		v.Close()
	}

	root, views, err = buildTree(imgs, Options{NoSnapshots: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"img.raw", "other.raw"}; !slices.Equal(names(root), want) || len(views) != 0 {
		t.Errorf("NoSnapshots: files %v, %d views", names(root), len(views))
	}
}
