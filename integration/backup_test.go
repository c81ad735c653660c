// Tests of backup beside mounts and failures: refused on a read-write
// mount, and a backup that runs out of space on a tiny tmpfs clearing no
// dirty bit.

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupRefusedWhileMounted: backup refuses an image mounted
// read-write (naming the mount, writing no target); a read-only mount may
// be backed up, but not with --clear (which needs the writer locks).
func TestBackupRefusedWhileMounted(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	qemuCreate(t, img, "8M", "", "", "")
	run(t, "qemu-img", "bitmap", "--add", img, "b")
	run(t, "qemu-io", "-c", "write -P 7 1M 300k", img)
	target := filepath.Join(dir, "full.qcow2")
	mnt := mkdir(t, dir, "mnt")

	mountQcow2fs(t, mnt, nil, img)
	for _, args := range [][]string{
		{"backup", img, target},
		{"backup", "--bitmap", "b", "--full", "--clear", img, target},
	} {
		r := execute("", qcow2fsBin, args...)
		if r.Code != 1 || !strings.Contains(r.Stderr, img+" is mounted read-write at "+mnt) ||
			!strings.Contains(r.Stderr, "qcow2fs unmount "+mnt) || strings.Count(r.Stderr, "\n") != 1 {
			t.Errorf("qcow2fs %s on a rw-mounted image: want exit 1 naming the mount: %s", strings.Join(args, " "), r)
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Fatalf("refused backup left %s: %v", target, err)
		}
	}
	unmountQcow2fs(t, mnt, img)

	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	r := execute("", qcow2fsBin, "backup", "--bitmap", "b", "--full", "--clear", img, target)
	if r.Code != 1 || !strings.Contains(r.Stderr, "is mounted read-only at "+mnt) {
		t.Errorf("backup --clear of a ro-mounted image: want exit 1 naming the mount: %s", r)
	}
	run(t, qcow2fsBin, "backup", img, target)
	unmountQcow2fs(t, mnt, img)
	run(t, "qemu-img", "check", target)
	run(t, "qemu-img", "compare", img, target)
}

// TestBackupClearSafety: a backup that fails for lack of space (target on
// a tiny tmpfs) reports the target and the problem, leaves no target, and
// clears nothing: the bitmap keeps every dirty bit. A retry elsewhere
// then succeeds and clears it.
func TestBackupClearSafety(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	qemuCreate(t, img, "16M", "", "", "")
	run(t, "qemu-img", "bitmap", "--add", img, "b")
	run(t, "qemu-io", "-c", "write -P 1 0 3M", "-c", "write -P 2 8M 2M", img)
	before := run(t, qcow2fsBin, "map", "--bitmap", "b", "--output", "json", img)
	if !strings.Contains(before, `"dirty":true`) && !strings.Contains(before, `"dirty": true`) {
		t.Fatalf("no dirty bits to lose:\n%s", before)
	}
	tiny := mkdir(t, dir, "tiny")
	run(t, "mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", tiny)
	t.Cleanup(func() { execute("", "umount", tiny) })
	target := filepath.Join(tiny, "full.qcow2")
	r := execute("", qcow2fsBin, "backup", "--bitmap", "b", "--full", "--clear", img, target)
	if r.Code != 1 || !strings.Contains(r.Stderr, target) || !strings.Contains(r.Stderr, "no space left on device") ||
		strings.Count(r.Stderr, "\n") != 1 {
		t.Fatalf("backup onto a full tmpfs: want exit 1 naming %s and ENOSPC: %s", target, r)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("failed backup left %s: %v", target, err)
	}
	if after := run(t, qcow2fsBin, "map", "--bitmap", "b", "--output", "json", img); after != before {
		t.Fatalf("dirty bits lost by a failed backup:\nbefore %s\nafter  %s", before, after)
	}
	run(t, "qemu-img", "check", img)
	good := filepath.Join(dir, "full.qcow2")
	run(t, qcow2fsBin, "backup", "--bitmap", "b", "--full", "--clear", img, good)
	run(t, "qemu-img", "compare", img, good)
	if after := run(t, qcow2fsBin, "map", "--bitmap", "b", "--output", "json", img); strings.Contains(after, "true") {
		t.Fatalf("bitmap not cleared by a successful backup:\n%s", after)
	}
}
