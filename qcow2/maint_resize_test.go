// Tests of resize and its refusals, and of allocating runs longer than a
// refcount block's reach across refcount table growth.

package qcow2

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// mtResized is content resized the way a disk is: cut, or zero-extended.
func mtResized(b []byte, size int64) []byte {
	out := make([]byte, size)
	copy(out, b)
	return out
}

func TestResize(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name    string
		opts    string
		size    int64
		grow    int64
		shrink  int64
		backing int64 // size of a qcow2 backing file (0: none)
		snap    bool
	}
	cases := []tc{
		{name: "v3", size: 4 << 20, grow: 9<<20 + 512, shrink: 1<<20 + 1536},
		{name: "v2", opts: "compat=0.10", size: 4 << 20, grow: 6 << 20, shrink: 2 << 20},
		{name: "c512-l1-moves", opts: "cluster_size=512", size: 2 << 20, grow: 96 << 20, shrink: 700 << 10},
		{name: "extl2", opts: "extended_l2=on,cluster_size=32768", size: 4 << 20, grow: 8<<20 + 4096, shrink: 3<<20 + 512},
		{name: "refbits1", opts: "refcount_bits=1,cluster_size=4096", size: 2 << 20, grow: 40 << 20, shrink: 1 << 20},
		{name: "longer-backing", size: 2 << 20, backing: 8 << 20, grow: 6 << 20, shrink: 1 << 20},
		{name: "datafile-raw", opts: "data_file=img.data,data_file_raw=on", size: 4 << 20, grow: 5 << 20, shrink: 1 << 20},
		{name: "snapshot-v3", size: 4 << 20, grow: 8 << 20, shrink: 2 << 20, snap: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			var extra []string
			if c.backing > 0 {
				base := mtQemuCreate(t, filepath.Join(dir, "base.qcow2"), c.backing, "")
				mtIO(t, base, fmt.Sprintf("write -P 0x66 0 %d", c.backing))
				extra = []string{"-b", "base.qcow2", "-F", "qcow2"}
			}
			mtQemuCreate(t, path, c.size, c.opts, extra...)
			mtIO(t, path, "write -P 0x11 0 300k", fmt.Sprintf("write -P 0x12 %d 4096", c.size-4096), "write -z 512k 64k")
			var snapContent []byte
			if c.snap {
				runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", path)
				snapContent = mtRaw(t, path)
				mtIO(t, path, "write -P 0x13 0 8k")
			}
			orig := mtRaw(t, path)
			check := func(what string, size int64, want []byte) {
				t.Helper()
				qemuCheckClean(t, path)
				if in := qemuImageInfo(t, path); in.VirtualSize != size {
					t.Fatalf("%s: qemu-img info virtual size %d, want %d", what, in.VirtualSize, size)
				}
				mtSameBytes(t, what+" (qemu)", mtRaw(t, path), want)
				mtSameBytes(t, what+" (ours)", mtOurs(t, path), want)
				if c.snap {
					// (qemu-img convert -l shows it at the current size)
					mtSameBytes(t, what+": snapshot", mtRaw(t, path, "-l", "snapshot.name=s"), mtResized(snapContent, size))
				}
			}
			// Grow: QEMU resizes a copy the same way; contents must agree.
			theirs := mtCopy(t, path, filepath.Join(dir, "theirs.qcow2"))
			if err := Resize(path, c.grow, false); err != nil {
				t.Fatalf("Resize grow: %v", err)
			}
			runCombined(t, dir, "qemu-img", "resize", "-q", theirs, fmt.Sprint(c.grow))
			want := mtRaw(t, theirs)
			check("after grow", c.grow, want)
			if c.backing == 0 {
				mtSameBytes(t, "grown content", want, mtResized(orig, c.grow))
			}
			// Writes past the old end work and stay clean.
			mtIO(t, path, fmt.Sprintf("write -P 0x21 %d 65536", c.grow-65536))
			grown := mtRaw(t, path)
			// Shrink.
			if err := Resize(path, c.shrink, false); err == nil {
				t.Fatal("shrink without the flag succeeded")
			}
			if err := Resize(path, c.shrink, true); err != nil {
				t.Fatalf("Resize shrink: %v", err)
			}
			check("after shrink", c.shrink, grown[:c.shrink])
			// Grow again: what lay past the cut must read as zeros (or as
			// the backing file where QEMU shows it).
			if err := Resize(path, c.grow, false); err != nil {
				t.Fatalf("Resize regrow: %v", err)
			}
			regrown := mtResized(grown[:c.shrink], c.grow)
			if c.backing > 0 {
				regrown = mtRaw(t, path)
				for i := c.shrink; i < min(c.grow, c.backing); i++ {
					if regrown[i] != 0 {
						t.Fatalf("regrown image shows backing data at %#x", i)
					}
				}
			}
			check("after regrow", c.grow, regrown)
			if c.snap {
				// The snapshot kept its own size and content.
				if err := SnapshotApply(path, "s"); err != nil {
					t.Fatal(err)
				}
				qemuCheckClean(t, path)
				mtSameBytes(t, "snapshot applied", mtRaw(t, path), snapContent)
			}
		})
	}
}

func TestResizeRefusals(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "v2.qcow2"), 1<<20, "compat=0.10")
	runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", path)
	for name, err := range map[string]error{
		"v2 with snapshots":    Resize(path, 2<<20, false),
		"unaligned size":       Resize(path, 2<<20+1, false),
		"negative size":        Resize(path, -512, true),
		"missing image":        Resize(filepath.Join(dir, "none.qcow2"), 1<<20, false),
		"L1 beyond QEMU limit": Resize(mtQemuCreate(t, filepath.Join(dir, "c512.qcow2"), 1<<20, "cluster_size=512"), 1<<50, false),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	qemuCheckClean(t, path)
	// An image in use is refused.
	p2 := mtQemuCreate(t, filepath.Join(dir, "busy.qcow2"), 1<<20, "")
	img, err := Open(p2, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var le *LockError
	if err := Resize(p2, 2<<20, false); !errors.As(err, &le) {
		t.Fatalf("resize of an image in use: %v", err)
	}
}

// TestAllocRun: runs longer than a refcount block's reach, across refcount
// table growth; every run cluster ends up with refcount 1 and nothing
// else, so qemu-img check reports exactly the runs as leaks.
func TestAllocRun(t *testing.T) {
	needQEMU(t)
	for _, o := range []CreateOptions{
		{Size: 1 << 20, ClusterSize: 512, RefcountBits: 64},
		{Size: 1 << 20, ClusterSize: 4096, RefcountBits: 1},
		{Size: 1 << 20},
	} {
		path := filepath.Join(t.TempDir(), "img.qcow2")
		if err := Create(path, o); err != nil {
			t.Fatal(err)
		}
		m, err := openMaint(path)
		if err != nil {
			t.Fatal(err)
		}
		total := int64(0)
		for _, n := range []int64{1, 63, 64, 65, 200, 1000, 5000} {
			start, err := m.w.allocRun(n)
			if err != nil {
				t.Fatal(err)
			}
			for cl := start; cl < start+n; cl++ {
				if rc, _ := m.w.refcount(cl); rc != 1 {
					t.Fatalf("cluster %d of run [%d,+%d) has refcount %d", cl, start, n, rc)
				}
			}
			total += n
		}
		if err := m.close(nil); err != nil {
			t.Fatal(err)
		}
		r := mtQemuCheck(t, path)
		if r.Corruptions != 0 || int64(r.Leaks) != total {
			t.Fatalf("%+v: qemu-img check %+v, want exactly %d leaks", o, r, total)
		}
		c, err := Check(path, CheckOptions{Repair: "leaks"})
		if err != nil || c.LeaksFixed != int(total) || c.Leaks != 0 {
			t.Fatalf("repair: %+v %v", c, err)
		}
		qemuCheckClean(t, path)
	}
}
