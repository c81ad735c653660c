// Tests of a sparse 4 TiB image: mountinfo entry, size and allocation,
// SEEK_DATA/SEEK_HOLE, and chosen ranges equal to QEMU's view.

package integration

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"golang.org/x/sys/unix"
)

// TestSparseHugeImage mounts a 4 TiB image holding a few clusters: the
// mount shows in /proc/mounts as fuse.qcow2fs with the image's absolute path,
// stat reports the virtual size and real allocation, SEEK_DATA/SEEK_HOLE
// find exactly the written clusters, and chosen ranges equal qemu's view.
func TestSparseHugeImage(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")

	const (
		c  = int64(64 << 10)
		tb = int64(1) << 40
	)
	size := 4 * tb
	type span struct{ off, n int64 }
	data := []span{{0, 2 * c}, {tb, c}, {2*tb + 3*c, 4 * c}, {size - c, c}}
	img := k.Path("huge")
	qemuCreate(t, img, fmt.Sprint(size), "", "", "")
	var cmds []string
	for _, r := range data {
		cmds = append(cmds, k.Rand(r.off, r.n))
	}
	cmds = append(cmds, Zero(3*tb, c)) // a zero cluster is a hole too
	qemuIO(t, img, cmds...)
	oracle := filepath.Join(dir, "huge-oracle.raw")
	qemuToRaw(t, img, "", oracle)
	before := testenv.HashTree(t, k.Dir)

	// Mount by a relative path: /proc/mounts must still show the absolute one.
	rel, err := filepath.Rel(mustGetwd(t), img)
	if err != nil {
		t.Fatal(err)
	}
	mountQcow2fs(t, mnt, []string{"--ro"}, rel)

	t.Run("proc-mounts", func(t *testing.T) {
		src, typ, ok := procMountsEntry(t, mnt)
		if !ok {
			t.Fatalf("%s not in /proc/mounts", mnt)
		}
		if typ != fuseType {
			t.Errorf("/proc/mounts type %q, want %q", typ, fuseType)
		}
		if src != img {
			t.Errorf("/proc/mounts source %q, want the image's absolute path %q", src, img)
		}
	})

	file := filepath.Join(mnt, "huge.raw")
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	t.Run("stat", func(t *testing.T) {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != size {
			t.Errorf("st_size %d, want %d", st.Size, size)
		}
		if st.Blocks <= 0 {
			t.Errorf("st_blocks %d, want > 0", st.Blocks)
		}
		// The host holds a few clusters plus metadata, not terabytes.
		if st.Blocks*512 > 64<<20 {
			t.Errorf("st_blocks %d (%d bytes) for an image holding %d KiB", st.Blocks, st.Blocks*512, 8*c>>10)
		}
	})

	t.Run("seek", func(t *testing.T) {
		fd := int(f.Fd())
		cases := []struct {
			whence int
			from   int64
			want   int64 // -1: ENXIO
		}{
			{unix.SEEK_DATA, 0, 0},
			{unix.SEEK_HOLE, 0, 2 * c},
			{unix.SEEK_HOLE, 100, 2 * c},
			{unix.SEEK_DATA, 2 * c, tb},
			{unix.SEEK_DATA, tb + 5, tb + 5},
			{unix.SEEK_HOLE, tb, tb + c},
			{unix.SEEK_DATA, tb + c, 2*tb + 3*c},
			{unix.SEEK_HOLE, 2*tb + 3*c, 2*tb + 7*c},
			{unix.SEEK_DATA, 2*tb + 7*c, size - c}, // skips the zero cluster
			{unix.SEEK_HOLE, 3*tb + 10, 3*tb + 10},
			{unix.SEEK_HOLE, size - c, size}, // the virtual end of file
			{unix.SEEK_DATA, size, -1},
		}
		for _, tc := range cases {
			name := map[int]string{unix.SEEK_DATA: "SEEK_DATA", unix.SEEK_HOLE: "SEEK_HOLE"}[tc.whence]
			got, err := unix.Seek(fd, tc.from, tc.whence)
			switch {
			case tc.want == -1:
				if !errors.Is(err, syscall.ENXIO) {
					t.Errorf("lseek(%d, %s) = %d, %v; want ENXIO", tc.from, name, got, err)
				}
			case err != nil || got != tc.want:
				t.Errorf("lseek(%d, %s) = %d, %v; want %d", tc.from, name, got, err, tc.want)
			}
		}
	})

	t.Run("ranges", func(t *testing.T) {
		o, err := os.Open(oracle)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		for _, r := range append(data, span{3 * tb, c}, span{tb / 2, c}) {
			from, to := max(r.off-c-512, 0), min(r.off+r.n+c+512, size)
			if err := compareRange(f, o, from, to-from); err != nil {
				t.Errorf("range [%d, %d): %v", from, to, err)
			}
		}
	})

	f.Close()
	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// procMountsEntry returns the source and type /proc/mounts shows for point.
func procMountsEntry(t *testing.T, point string) (source, fstype string, ok bool) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) >= 3 && mounts.Unescape(fl[1]) == point {
			source, fstype, ok = mounts.Unescape(fl[0]), fl[2], true
		}
	}
	return source, fstype, ok
}
