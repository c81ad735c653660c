// Tests of write edges on a read-write mount: past the virtual size,
// truncate, read-only snapshot files.

package integration

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteEdges: on a read-write mount, writes past the virtual size fail
// (EFBIG or ENOSPC) without growing the file, truncate is refused, snapshot
// files stay read-only, and the image is clean afterwards.
func TestWriteEdges(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := k.Path("edges")
	const size = 8 << 20
	plain("", 64<<10, size)(k, img)
	run(t, "qemu-img", "snapshot", "-c", "S", img)

	mountQcow2fs(t, mnt, nil, img)
	file := filepath.Join(mnt, "edges.raw")
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s for writing: %v", file, err)
	}
	defer f.Close()

	if _, err := f.WriteAt([]byte("x"), size); !errors.Is(err, syscall.EFBIG) && !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at the virtual size: %v, want EFBIG or ENOSPC", err)
	}
	if n, err := f.WriteAt(make([]byte, 100), size-10); err == nil || n > 10 {
		t.Errorf("write across the virtual size: wrote %d, %v; want at most 10 bytes and an error", n, err)
	}
	if err := f.Truncate(size + 1<<20); err == nil {
		t.Errorf("growing truncate succeeded; resizing is offline maintenance")
	}
	if err := f.Truncate(size / 2); err == nil {
		t.Errorf("shrinking truncate succeeded; resizing is offline maintenance")
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Errorf("size after refused writes and truncates: %v, %v; want %d", st.Size(), err, size)
	}
	if s, err := os.OpenFile(filepath.Join(mnt, "edges@S.raw"), os.O_WRONLY, 0); err == nil {
		s.Close()
		t.Errorf("a snapshot file opened for writing on a read-write mount")
	}
	f.Close()
	unmountQcow2fs(t, mnt, k.Dir)
	qemuCheckClean(t, img)
}
