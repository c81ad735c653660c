// Tests of --overlay: writes land in the overlay (which qemu-img reads and
// checks), the evidence never changes, and the overlay is reused or refused.

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestOverlay: a mount with --overlay shows the evidence writable; writes
// (with discards and zero-ranges, over data of both evidence layers) land
// in the overlay, which qemu-img then reads as evidence + writes and checks
// clean; the evidence and its backing file never change and are only ever
// open read-only; the overlay is reused by the next mount (-o overlay=, the
// fstab form) and refused when its backing file is not the evidence.
func TestOverlay(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "evidence"))
	base := k.BkPath("base.qcow2")
	qemuCreate(t, base, "16M", "cluster_size=4096", "", "")
	qemuIO(t, base, k.Scribble(4096, 16<<20)...)
	ev := k.Path("disk")
	qemuCreate(t, ev, "16M", "", "bk/base.qcow2", "qcow2")
	qemuIO(t, ev, k.Scribble(64<<10, 16<<20)...)
	before := testenv.HashTree(t, k.Dir)

	work := mkdir(t, dir, "work")
	ovl := filepath.Join(work, "disk-overlay.qcow2")
	ref := qemuRawOf(t, ev, filepath.Join(work, "reference.raw")) // evidence + the same writes
	mnt := mkdir(t, dir, "mnt")

	mountQcow2fs(t, mnt, []string{"--overlay", ovl}, ev)
	if got := strings.Join(listDir(t, mnt), " "); got != "disk.info disk.raw" {
		t.Errorf("overlay mount lists %s, want the evidence's name: disk.info disk.raw", got)
	}
	info := qemuInfo(t, ovl)
	if info.Format != "qcow2" || info.VirtualSize != 16<<20 {
		t.Errorf("overlay %s: %+v", ovl, info)
	}
	// Both evidence files (disk.qcow2 and its backing file) are open
	// read-only; only the overlay is writable.
	assertReadOnlyOpens(t, mnt, k.Dir, 2)

	raw := filepath.Join(mnt, "disk.raw")
	if st, err := os.Stat(raw); err != nil || st.Mode().Perm()&0o200 == 0 {
		t.Fatalf("disk.raw is not writable on an overlay mount: %v %v", st, err)
	}
	f, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	refF, err := os.OpenFile(ref, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ops := genWorkload(seedFor(t, t.Name()), workloadShape{Size: 16 << 20, Cluster: 64 << 10, L2Span: 4 << 20, Ops: 150})
	err = applyWorkload(f, refF, ops)
	f.Close()
	refF.Close()
	if err != nil {
		t.Fatal(err)
	}
	compareFiles(t, raw, ref)
	unmountQcow2fs(t, mnt, k.Dir, ovl)

	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
	qemuCheckClean(t, ovl)
	qemuCompareRaw(t, ref, ovl)

	// Reused, through the mount.fuse form with -o overlay=.
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r := execute("", qcow2fsBin, ev, mnt, "-o", "rw,overlay="+ovl); r.Code != 0 {
		t.Fatalf("remount with -o overlay=: %s", r)
	}
	compareFiles(t, raw, ref)
	unmountQcow2fs(t, mnt, k.Dir, ovl)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))

	// An overlay of something else is refused, and so is the evidence
	// itself as its own overlay.
	if r := execute("", qcow2fsBin, "mount", "--overlay", ovl, base, mnt); r.Code != 1 || !strings.Contains(r.Stderr, "not "+base) {
		t.Errorf("overlay whose backing file is another image: %s", r)
	}
	if r := execute("", qcow2fsBin, "mount", "--overlay", ev, ev, mnt); r.Code != 2 || !strings.Contains(r.Stderr, "is the image itself") {
		t.Errorf("the evidence as its own overlay: %s", r)
	}
	if _, ok := mounts.Find(mnt); ok {
		t.Errorf("a refused overlay mount left %s mounted", mnt)
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}
