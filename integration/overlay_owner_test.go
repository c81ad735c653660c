// Tests of empty option values (usage errors, nothing mounted) and of who
// owns an overlay: a new one takes the evidence's owner and mode, another
// user's is refused.

package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestEmptyOptionValues: an empty value is a usage error for every option
// that takes one (exit 2, nothing mounted). `--overlay ""` used to mount
// the evidence itself read-write.
func TestEmptyOptionValues(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	ev := filepath.Join(dir, "ev.qcow2")
	qemuCreate(t, ev, "4M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	before := testenv.HashTree(t, dir)
	for _, args := range [][]string{
		{"--overlay", ""}, {"--overlay="}, {"--log", ""}, {"--log="},
		{"--cache-size", ""}, {"-o", "overlay="}, {"-o", "log="},
	} {
		full := append(append([]string{"mount"}, args...), ev, mnt)
		r := execute("", qcow2fsBin, full...)
		if _, ok := mounts.Find(mnt); ok {
			forceUnmount(t, mnt)
			t.Errorf("qcow2fs %q mounted", full)
			continue
		}
		if r.Code != 2 || !strings.Contains(r.Stderr, "empty") {
			t.Errorf("qcow2fs %q: want a usage error (exit 2) about the empty value: %s", full, r)
		}
	}
	for _, args := range [][]string{{"info", "--output", "", ev}, {"hash", "--algo=", ev}} {
		if r := execute("", qcow2fsBin, args...); r.Code != 2 || !strings.Contains(r.Stderr, "empty") {
			t.Errorf("qcow2fs %q: want a usage error (exit 2) about the empty value: %s", args, r)
		}
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, dir))
}

// TestOverlayOwnership: a new overlay gets the evidence's owner, group and
// mode (it holds the evidence's data), so the mount shows it with the
// evidence's permissions; an existing overlay that belongs to another user
// (neither the mounter, nor root, nor the evidence's owner) is refused.
func TestOverlayOwnership(t *testing.T) {
	requireEnv(t)
	dir := publicTestDir(t)
	u := newTestUser(t, "e")
	other := newTestUser(t, "x")
	ev := filepath.Join(dir, "ev.qcow2")
	qemuCreate(t, ev, "4M", "", "", "")
	qemuIO(t, ev, "write -P 0x21 0 64k")
	chown(t, ev, u.Uid, u.Gid)
	chmod(t, ev, 0o640)
	work := mkdir(t, dir, "work")
	mnt := mkdir(t, dir, "mnt")

	ovl := filepath.Join(work, "new.qcow2")
	mountQcow2fs(t, mnt, []string{"--overlay", ovl, "--allow-other"}, ev)
	wantAttr(t, ovl, u.Uid, u.Gid, 0o640)
	wantAttr(t, filepath.Join(mnt, "ev.raw"), u.Uid, u.Gid, 0o640)
	wantAccess(t, writeAs(u, filepath.Join(mnt, "ev.raw")), u, "write ev.raw", true)
	wantAccess(t, readAs(other, filepath.Join(mnt, "ev.raw")), other, "read ev.raw", false)
	unmountQcow2fs(t, mnt, ev, ovl)
	// The evidence's owner's overlay, reused.
	mountQcow2fs(t, mnt, []string{"--overlay", ovl}, ev)
	unmountQcow2fs(t, mnt, ev, ovl)

	// Planted by another user, over evidence that user may read (so it is
	// the ownership, not the backing file, that makes the difference).
	chmod(t, ev, 0o644)
	planted := filepath.Join(work, "planted.qcow2")
	qemuCreate(t, planted, "4M", "", ev, "qcow2")
	chown(t, planted, other.Uid, other.Gid)
	mountRefused(t, mnt, []string{planted, other.Name, "belongs to"}, "--overlay", planted, ev)
	// The same overlay given to the evidence's owner is theirs to use.
	chown(t, planted, u.Uid, u.Gid)
	mountQcow2fs(t, mnt, []string{"--overlay", planted}, ev)
	unmountQcow2fs(t, mnt, ev, planted)
}
