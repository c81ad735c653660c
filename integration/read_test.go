// Tests of the read path: every image of the read matrix mounted read-only
// and compared with qemu-img convert byte for byte; --ro refusing writes.

package integration

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestReadMatrix mounts every image of the read matrix read-only in one
// mount and checks each exposed file (and each snapshot file) against
// qemu-img convert byte for byte, then that nothing was modified.
func TestReadMatrix(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	oracle := mkdir(t, dir, "oracle")
	mnt := mkdir(t, dir, "mnt")

	matrix := readMatrix()
	var images []string
	want := map[string]string{} // exposed name -> oracle raw file
	sizes := map[string]int64{}
	for _, im := range matrix {
		path := k.Path(im.Name)
		im.Build(k, path)
		images = append(images, path)
		want[im.Name+".raw"] = filepath.Join(oracle, im.Name+".raw")
		qemuToRaw(t, path, "", want[im.Name+".raw"])
		sizes[im.Name+".raw"] = qemuInfo(t, path).VirtualSize
		for _, s := range im.Snapshots {
			n := im.Name + "@" + s + ".raw"
			want[n] = filepath.Join(oracle, n)
			sizes[n] = snapshotOracle(t, path, s, want[n])
		}
	}
	before := testenv.HashTree(t, k.Dir)

	mountQcow2fs(t, mnt, []string{"--ro"}, images...)

	t.Run("listing", func(t *testing.T) {
		entries, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var got, exp []string
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".info") {
				continue // NAME.info: the image's metadata as text, not a disk
			}
			got = append(got, e.Name())
		}
		for n := range want {
			exp = append(exp, n)
		}
		sort.Strings(got)
		sort.Strings(exp)
		if strings.Join(got, " ") != strings.Join(exp, " ") {
			t.Errorf("mount lists\n  %v\nwant\n  %v", got, exp)
		}
	})

	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			p := filepath.Join(mnt, n)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != sizes[n] {
				t.Errorf("st_size %d, want the virtual size %d", st.Size(), sizes[n])
			}
			if sys := st.Sys().(*syscall.Stat_t); sys.Blocks <= 0 {
				t.Errorf("st_blocks %d for an image holding data, want > 0", sys.Blocks)
			}
			compareFiles(t, p, want[n])
		})
	}

	t.Run("snapshots-read-only", func(t *testing.T) {
		// Snapshot files refuse writers whatever the mount mode.
		for _, n := range names {
			if !strings.Contains(n, "@") {
				continue
			}
			if f, err := os.OpenFile(filepath.Join(mnt, n), os.O_WRONLY, 0); err == nil {
				f.Close()
				t.Errorf("%s: open for writing succeeded", n)
			}
		}
	})

	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// TestReadOnlyRefusesWrites: on a --ro mount every way of opening for
// writing fails with EROFS, and the image is untouched.
func TestReadOnlyRefusesWrites(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := k.Path("ro")
	plain("", 64<<10, 4<<20)(k, img)
	before := testenv.HashTree(t, k.Dir)

	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	file := filepath.Join(mnt, "ro.raw")
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC} {
		f, err := os.OpenFile(file, flag, 0)
		if err == nil {
			f.Close()
			t.Errorf("open(%s, %#x) succeeded on a read-only mount", file, flag)
			continue
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("open(%s, %#x): %v, want EROFS", file, flag, err)
		}
	}
	if err := os.Truncate(file, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("truncate on a read-only mount: %v, want EROFS", err)
	}
	if f, err := os.Create(filepath.Join(mnt, "new.raw")); err == nil {
		f.Close()
		t.Errorf("creating a file in the mount succeeded")
	}
	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// snapshotOracle writes the disk of internal snapshot snap of img to out and
// returns its size. The oracle is the image reverted to the snapshot
// (qemu-img snapshot -a on a copy), which restores the snapshot's own disk
// size; `qemu-img convert -l` reads the same bytes but keeps the active
// layer's size, so it must agree over the common prefix, zeros beyond.
func snapshotOracle(t *testing.T, img, snap, out string) int64 {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(img), ".revert-"+snap+"-"+filepath.Base(img))
	run(t, "cp", "--sparse=always", img, tmp)
	defer os.Remove(tmp)
	run(t, "qemu-img", "snapshot", "-a", snap, tmp)
	qemuToRaw(t, tmp, "", out)

	viaL := out + ".convert-l"
	qemuToRaw(t, img, snap, viaL)
	defer os.Remove(viaL)
	a, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.Open(viaL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	as, _ := a.Stat()
	bs, _ := b.Stat()
	common := min(as.Size(), bs.Size())
	if err := compareRange(b, a, 0, common); err != nil {
		t.Fatalf("snapshot %s of %s: qemu-img convert -l and snapshot -a disagree: %v", snap, img, err)
	}
	if bs.Size() > common {
		if err := compareRange(b, zeroReader{}, common, bs.Size()-common); err != nil {
			t.Fatalf("snapshot %s of %s: convert -l past the snapshot's size: %v", snap, img, err)
		}
	}
	return as.Size()
}

// zeroReader reads as endless zeros.
type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}
