// Tests of internal snapshots against QEMU: create, apply, delete, errors,
// bitmaps kept, and a random sequence judged by an in-memory model. This
// file is long because the snapshot cases and that model test share one set
// of image builders.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type snapCase struct {
	name    string
	opts    string // qemu-img create -o
	size    int64
	backing bool
	compr   bool // compressed writes
}

func snapCases() []snapCase {
	return []snapCase{
		{name: "v3", opts: "compat=1.1", size: 4 << 20},
		{name: "v2", opts: "compat=0.10", size: 4 << 20},
		{name: "c512", opts: "cluster_size=512", size: 2 << 20},
		{name: "extl2", opts: "extended_l2=on,cluster_size=65536", size: 4 << 20},
		{name: "refbits4", opts: "refcount_bits=4,cluster_size=4096", size: 2 << 20},
		{name: "compressed", opts: "cluster_size=4096", size: 2 << 20, compr: true},
		{name: "backing", opts: "", size: 4 << 20, backing: true},
	}
}

func mtMakeSnapImage(t *testing.T, c snapCase) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "img.qcow2")
	var extra []string
	if c.backing {
		base := mtQemuCreate(t, filepath.Join(dir, "base.qcow2"), c.size, "")
		mtIO(t, base, "write -P 0x11 0 1M", "write -P 0x12 2M 512k")
		extra = []string{"-b", "base.qcow2", "-F", "qcow2"}
	}
	mtQemuCreate(t, path, c.size, c.opts, extra...)
	w := "write"
	if c.compr {
		w = "write -c"
	}
	mtIO(t, path, w+" -P 0x21 0 64k", w+" -P 0x22 512k 128k", "write -P 0x23 1M 4k", "write -z 64k 64k")
	return path
}

// TestSnapshotCreate: snapshots made here read right through QEMU, and
// survive later writes by QEMU and by this package's writer.
func TestSnapshotCreate(t *testing.T) {
	needQEMU(t)
	for _, c := range snapCases() {
		t.Run(c.name, func(t *testing.T) {
			path := mtMakeSnapImage(t, c)
			at1 := mtRaw(t, path)
			if err := SnapshotCreate(path, "first"); err != nil {
				t.Fatalf("SnapshotCreate: %v", err)
			}
			qemuCheckClean(t, path)
			// QEMU overwrites (COW of shared clusters), then a second one.
			mtIO(t, path, "write -P 0x31 0 4k", "write -P 0x32 600k 8k", "discard 512k 64k")
			qemuCheckClean(t, path)
			at2 := mtRaw(t, path)
			if err := SnapshotCreate(path, "second"); err != nil {
				t.Fatalf("SnapshotCreate: %v", err)
			}
			qemuCheckClean(t, path)
			// Our writer overwrites shared clusters.
			img, err := Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.WriteAt(bytes.Repeat([]byte{0x41}, 70000), 1000); err != nil {
				t.Fatal(err)
			}
			if err := img.Discard(1<<20, 4096); err != nil {
				t.Fatal(err)
			}
			snaps := img.Snapshots()
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, path)
			if len(snaps) != 2 || snaps[0].ID != "1" || snaps[0].Name != "first" || snaps[1].ID != "2" || snaps[1].Name != "second" {
				t.Fatalf("Snapshots() = %+v", snaps)
			}
			list := runCombined(t, filepath.Dir(path), "qemu-img", "snapshot", "-l", path)
			if !strings.Contains(list, "first") || !strings.Contains(list, "second") {
				t.Fatalf("qemu-img snapshot -l:\n%s", list)
			}
			mtSameBytes(t, "snapshot first (qemu-img convert -l)", mtRaw(t, path, "-l", "snapshot.name=first"), at1)
			mtSameBytes(t, "snapshot second (qemu-img convert -l)", mtRaw(t, path, "-l", "snapshot.name=second"), at2)
			mtSameBytes(t, "active state", mtOurs(t, path), mtRaw(t, path))
			// QEMU can apply and delete our snapshots.
			runCombined(t, filepath.Dir(path), "qemu-img", "snapshot", "-a", "first", path)
			qemuCheckClean(t, path)
			mtSameBytes(t, "after qemu-img snapshot -a first", mtRaw(t, path), at1)
			runCombined(t, filepath.Dir(path), "qemu-img", "snapshot", "-d", "second", path)
			runCombined(t, filepath.Dir(path), "qemu-img", "snapshot", "-d", "first", path)
			qemuCheckClean(t, path)
		})
	}
}

// TestSnapshotEntryLikeQEMU compares our snapshot table entry with the one
// qemu-img snapshot -c writes.
func TestSnapshotEntryLikeQEMU(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	ours := mtQemuCreate(t, filepath.Join(dir, "ours.qcow2"), 3<<20, "")
	theirs := mtQemuCreate(t, filepath.Join(dir, "theirs.qcow2"), 3<<20, "")
	if err := SnapshotCreate(ours, "snap"); err != nil {
		t.Fatal(err)
	}
	runCombined(t, dir, "qemu-img", "snapshot", "-c", "snap", theirs)
	entry := func(path string) snapshot {
		img, err := Open(path, OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if len(img.s.snaps) != 1 {
			t.Fatalf("%s: %d snapshots", path, len(img.s.snaps))
		}
		return img.s.snaps[0]
	}
	a, b := entry(ours), entry(theirs)
	if a.ID != b.ID || a.Name != b.Name || a.L1Size != b.L1Size || a.VMClockNsec != b.VMClockNsec ||
		a.VMStateSize != b.VMStateSize || !bytes.Equal(a.Extra, b.Extra) {
		t.Fatalf("our entry %+v differs from QEMU's %+v", a, b)
	}
	if d := int64(a.DateSec) - int64(b.DateSec); d < -60 || d > 60 {
		t.Fatalf("date %d vs QEMU's %d", a.DateSec, b.DateSec)
	}
	if got := binary.BigEndian.Uint64(a.Extra[8:]); got != 3<<20 {
		t.Fatalf("disk size in extra data = %d", got)
	}
}

// TestSnapshotApplyDelete: snapshots made by qemu-img are applied and
// deleted here, with qemu-img check clean after each step.
func TestSnapshotApplyDelete(t *testing.T) {
	needQEMU(t)
	for _, c := range snapCases() {
		t.Run(c.name, func(t *testing.T) {
			path := mtMakeSnapImage(t, c)
			dir := filepath.Dir(path)
			at1 := mtRaw(t, path)
			runCombined(t, dir, "qemu-img", "snapshot", "-c", "s1", path)
			mtIO(t, path, "write -P 0x51 0 8k", "write -P 0x52 1536k 64k", "write -z 512k 4k")
			at2 := mtRaw(t, path)
			runCombined(t, dir, "qemu-img", "snapshot", "-c", "s2", path)
			mtIO(t, path, "write -P 0x61 4k 64k")
			now := mtRaw(t, path)

			if err := SnapshotApply(path, "s1"); err != nil {
				t.Fatalf("SnapshotApply: %v", err)
			}
			qemuCheckClean(t, path)
			mtSameBytes(t, "after apply s1 (qemu)", mtRaw(t, path), at1)
			mtSameBytes(t, "after apply s1 (ours)", mtOurs(t, path), at1)
			_ = now
			// Writes after the apply must not leak into the snapshots.
			mtIO(t, path, "write -P 0x71 0 128k")
			qemuCheckClean(t, path)
			mtSameBytes(t, "s1 after writes", mtRaw(t, path, "-l", "snapshot.name=s1"), at1)
			mtSameBytes(t, "s2 after writes", mtRaw(t, path, "-l", "snapshot.name=s2"), at2)

			if err := SnapshotDelete(path, "s1"); err != nil {
				t.Fatalf("SnapshotDelete s1: %v", err)
			}
			qemuCheckClean(t, path)
			mtSameBytes(t, "s2 after deleting s1", mtRaw(t, path, "-l", "snapshot.name=s2"), at2)
			if err := SnapshotApply(path, "2"); err != nil { // by ID
				t.Fatalf("SnapshotApply by ID: %v", err)
			}
			qemuCheckClean(t, path)
			mtSameBytes(t, "after apply s2", mtRaw(t, path), at2)
			if err := SnapshotDelete(path, "s2"); err != nil {
				t.Fatalf("SnapshotDelete s2: %v", err)
			}
			qemuCheckClean(t, path)
			mtSameBytes(t, "after deleting every snapshot", mtRaw(t, path), at2)
			if in := qemuImageInfo(t, path); len(in.Snapshots) != 0 {
				t.Fatalf("snapshots left: %+v", in.Snapshots)
			}
			// With no snapshot left every cluster is exclusively owned
			// again: writes happen in place (COPIED flags right).
			r := mtQemuCheck(t, path)
			if r.Corruptions+r.Leaks != 0 {
				t.Fatalf("check: %+v", r)
			}
		})
	}
}

// TestSnapshotApplyRestoresSize: a snapshot taken before a resize brings
// its own disk size back.
func TestSnapshotApplyRestoresSize(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 2<<20, "cluster_size=4096")
	mtIO(t, path, "write -P 0x10 0 2M")
	at := mtRaw(t, path)
	if err := SnapshotCreate(path, "small"); err != nil {
		t.Fatal(err)
	}
	if err := Resize(path, 64<<20, false); err != nil {
		t.Fatal(err)
	}
	mtIO(t, path, "write -P 0x20 60M 1M", "write -P 0x21 0 4k")
	qemuCheckClean(t, path)
	if err := SnapshotApply(path, "small"); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	if in := qemuImageInfo(t, path); in.VirtualSize != 2<<20 {
		t.Fatalf("virtual size after apply = %d", in.VirtualSize)
	}
	mtSameBytes(t, "content after apply", mtRaw(t, path), at)
	// And the other way: a snapshot of the big state applied on the
	// shrunk image grows it (and its L1 table) again.
	mtIO(t, path, "write -P 0x30 4k 4k")
	if err := SnapshotCreate(path, "small2"); err != nil {
		t.Fatal(err)
	}
	if err := SnapshotDelete(path, "small"); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
}

// TestSnapshotRefcountOverflow: with 2-bit refcounts a cluster can be
// shared three ways at most; a fourth reference is refused before anything
// changes.
func TestSnapshotRefcountOverflow(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 1<<20, "refcount_bits=2,cluster_size=4096")
	mtIO(t, path, "write -P 0x10 0 64k")
	want := mtRaw(t, path)
	for _, name := range []string{"a", "b"} {
		if err := SnapshotCreate(path, name); err != nil {
			t.Fatal(err)
		}
	}
	qemuCheckClean(t, path)
	err := SnapshotCreate(path, "c")
	if err == nil || !strings.Contains(err.Error(), "refcount") {
		t.Fatalf("third snapshot with 2-bit refcounts: %v", err)
	}
	qemuCheckClean(t, path)
	if in := qemuImageInfo(t, path); len(in.Snapshots) != 2 {
		t.Fatalf("%d snapshots after the refused create", len(in.Snapshots))
	}
	mtSameBytes(t, "content", mtRaw(t, path), want)
	mtSameBytes(t, "snapshot b", mtRaw(t, path, "-l", "snapshot.name=b"), want)
}

func TestSnapshotErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := SnapshotCreate(path, "a"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"duplicate name":  SnapshotCreate(path, "a"),
		"empty name":      SnapshotCreate(path, ""),
		"delete missing":  SnapshotDelete(path, "nope"),
		"apply missing":   SnapshotApply(path, "nope"),
		"missing image":   SnapshotCreate(filepath.Join(dir, "none.qcow2"), "x"),
		"not an image":    SnapshotCreate(writeJunk(t, dir), "x"),
		"data file image": SnapshotCreate(dataFileImage(t, dir), "x"),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	// A mounted (open read-write) image is refused.
	img, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var le *LockError
	if err := SnapshotCreate(path, "b"); !errors.As(err, &le) {
		t.Fatalf("SnapshotCreate on an image in use: %v", err)
	}
}

func writeJunk(t *testing.T, dir string) string {
	p := filepath.Join(dir, "junk.qcow2")
	if err := os.WriteFile(p, bytes.Repeat([]byte("junk"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func dataFileImage(t *testing.T, dir string) string {
	p := filepath.Join(dir, "df.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20, DataFile: "df.raw"}); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMaintenanceKeepsBitmaps: operations that keep the guest content keep
// QEMU's persistent bitmaps valid (qemu-img check stays clean, the bitmap
// stays listed); those that would change content or size behind their
// back refuse.
func TestMaintenanceKeepsBitmaps(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	base := mtQemuCreate(t, filepath.Join(dir, "base.qcow2"), 4<<20, "")
	mtIO(t, base, "write -P 1 0 1M")
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 4<<20, "", "-b", "base.qcow2", "-F", "qcow2")
	mtIO(t, path, "write -P 2 64k 64k")
	runCombined(t, dir, "qemu-img", "bitmap", "--add", path, "bm0")
	runCombined(t, dir, "qemu-img", "bitmap", "--add", base, "bmb")
	mtIO(t, path, "write -P 3 1M 64k")
	hasBitmap := func(t *testing.T, p, name string) {
		t.Helper()
		qemuCheckClean(t, p)
		out := runCombined(t, dir, "qemu-img", "info", p)
		if !strings.Contains(out, name) {
			t.Fatalf("bitmap %s gone from %s:\n%s", name, p, out)
		}
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"snapshot create", func() error { return SnapshotCreate(path, "s") }},
		{"snapshot apply", func() error { return SnapshotApply(path, "s") }},
		{"snapshot delete", func() error { return SnapshotDelete(path, "s") }},
		{"rebase", func() error { return Rebase(path, "base.qcow2", "qcow2", false) }},
		{"check repair", func() error { _, err := Check(path, CheckOptions{Repair: "all"}); return err }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		hasBitmap(t, path, "bm0")
	}
	if err := Resize(path, 8<<20, false); err == nil || !strings.Contains(err.Error(), "bm0") {
		t.Fatalf("resize of an image with bitmaps: %v", err)
	}
	if err := Commit(path); err == nil || !strings.Contains(err.Error(), "bitmaps") {
		t.Fatalf("commit into a backing file with bitmaps: %v", err)
	}
	hasBitmap(t, path, "bm0")
	hasBitmap(t, base, "bmb")
}

// TestSnapshotEmptyImage: a zero-sized image (no L1 table at all) takes
// snapshots, applies and deletes them, and grows afterwards.
func TestSnapshotEmptyImage(t *testing.T) {
	needQEMU(t)
	path := filepath.Join(t.TempDir(), "empty.qcow2")
	if err := Create(path, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	for _, step := range []func() error{
		func() error { return SnapshotCreate(path, "zero") },
		func() error { return Resize(path, 1<<20, false) },
		func() error { return SnapshotCreate(path, "one") },
		func() error { return SnapshotApply(path, "zero") },
		func() error { return SnapshotApply(path, "one") },
		func() error { return SnapshotDelete(path, "zero") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
		qemuCheckClean(t, path)
	}
	if in := qemuImageInfo(t, path); in.VirtualSize != 1<<20 || len(in.Snapshots) != 1 {
		t.Fatalf("info: %+v", in)
	}
	mtIO(t, path, "write -P 1 0 4k")
	qemuCheckClean(t, path)
}

// TestSnapshotRandomSequence drives an image through a random mix of
// writes (QEMU's and ours), snapshot create/apply/delete (QEMU's and ours)
// and resizes, checking it against an in-memory model after every step:
// qemu-img check clean, active content and every snapshot's content right.
func TestSnapshotRandomSequence(t *testing.T) {
	needQEMU(t)
	for _, opts := range []string{"cluster_size=4096", "cluster_size=16384,extended_l2=on", "cluster_size=4096,refcount_bits=8,compat=1.1"} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			size := int64(1 << 20)
			path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), size, opts)
			active := make([]byte, size)
			snaps := map[string][]byte{}
			var names []string
			seed := uint64(99)
			rnd := func(n int64) int64 {
				seed = seed*6364136223846793005 + 1442695040888963407
				return int64(seed>>33) % n
			}
			pick := func() string { return names[rnd(int64(len(names)))] }
			drop := func(name string) {
				delete(snaps, name)
				for i, n := range names {
					if n == name {
						names = append(names[:i], names[i+1:]...)
						break
					}
				}
			}
			next := 0
			for step := 0; step < 45; step++ {
				var what string
				switch op := rnd(10); {
				case op < 3: // a write, by QEMU or by us
					off := rnd(int64(len(active))) &^ 511
					n := min(1+rnd(40000), int64(len(active))-off)
					pat := byte(1 + rnd(250))
					if rnd(2) == 0 {
						what = fmt.Sprintf("qemu write %#x+%d", off, n)
						mtIO(t, path, fmt.Sprintf("write -P %d %d %d", pat, off, n))
					} else {
						what = fmt.Sprintf("our write %#x+%d", off, n)
						img, err := Open(path, OpenOptions{})
						if err != nil {
							t.Fatal(err)
						}
						if _, err := img.WriteAt(bytes.Repeat([]byte{pat}, int(n)), off); err != nil {
							t.Fatal(err)
						}
						if err := img.Close(); err != nil {
							t.Fatal(err)
						}
					}
					copy(active[off:off+n], bytes.Repeat([]byte{pat}, int(n)))
				case op < 5: // snapshot create
					name := fmt.Sprintf("s%d", next)
					next++
					if rnd(2) == 0 {
						what = "our create " + name
						if err := SnapshotCreate(path, name); err != nil {
							t.Fatalf("%s: %v", what, err)
						}
					} else {
						what = "qemu create " + name
						runCombined(t, dir, "qemu-img", "snapshot", "-c", name, path)
					}
					snaps[name] = append([]byte(nil), active...)
					names = append(names, name)
				case op < 7 && len(names) > 0: // apply
					name := pick()
					if rnd(3) > 0 {
						what = "our apply " + name
						if err := SnapshotApply(path, name); err != nil {
							t.Fatalf("%s: %v", what, err)
						}
					} else {
						what = "qemu apply " + name
						runCombined(t, dir, "qemu-img", "snapshot", "-a", name, path)
					}
					active = append([]byte(nil), snaps[name]...)
				case op < 8 && len(names) > 0: // delete
					name := pick()
					if rnd(3) > 0 {
						what = "our delete " + name
						if err := SnapshotDelete(path, name); err != nil {
							t.Fatalf("%s: %v", what, err)
						}
					} else {
						what = "qemu delete " + name
						runCombined(t, dir, "qemu-img", "snapshot", "-d", name, path)
					}
					drop(name)
				default: // resize
					ns := (256<<10 + rnd(2<<20)) &^ 511
					what = fmt.Sprintf("resize %d -> %d", len(active), ns)
					if err := Resize(path, ns, true); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					active = mtResized(active, ns)
				}
				qemuCheckClean(t, path)
				mtSameBytes(t, fmt.Sprintf("step %d (%s): active", step, what), mtRaw(t, path), active)
				if step%5 == 4 || step == 44 {
					mtSameBytes(t, fmt.Sprintf("step %d (%s): active (ours)", step, what), mtOurs(t, path), active)
					for _, name := range names {
						got := mtRaw(t, path, "-l", "snapshot.name="+name)
						mtSameBytes(t, fmt.Sprintf("step %d (%s): snapshot %s", step, what, name), got, mtResized(snaps[name], int64(len(active))))
					}
				}
			}
		})
	}
}
