// Tests of mounting an image with a bad snapshot entry and a 300-character
// snapshot name: the bad one hidden with an escaped warning, the long one
// shortened, every file read as QEMU reads it, check exiting 2 like QEMU's.

package integration

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestHostileSnapshotMount: an image with one bad snapshot table entry (an
// unaligned L1 table offset, under a name holding a terminal escape) and a
// valid snapshot with a 300-character name. QEMU opens it and qemu-img
// check exits 2; qcow2fs mounts it read-write, hides the bad snapshot with
// an escaped warning, shows the long-named one under a shortened file name
// listed in vm.info, serves every file as QEMU reads it, and its check
// exits 2 as well. --no-snapshots mounts it too.
func TestHostileSnapshotMount(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	qemuCreate(t, img, "4M", "", "", "")
	qemuIO(t, img, "write -P 0x11 0 1M")
	run(t, "qemu-img", "snapshot", "-c", "s1", img)
	qemuIO(t, img, "write -P 0x22 512k 1M")
	run(t, "qemu-img", "snapshot", "-c", "bad\x1b[31m", img)
	// qemu-img cuts names at 255 bytes; the format does not.
	long := strings.Repeat("L", 300)
	run(t, qcow2fsBin, "snapshot", "create", long, img)
	qemuIO(t, img, "write -P 0x33 1M 1M")
	bad := testenv.SnapshotEntryOffset(t, img, 1)
	b, _ := os.ReadFile(img)
	testenv.PatchFile(t, img, bad, be64(binary.BigEndian.Uint64(b[bad:])+512))

	if r := execute("", "qemu-img", "check", img); r.Code != 2 {
		t.Fatalf("qemu-img check: %s (want exit 2)", r)
	}
	want := map[string]string{}
	for _, snap := range []string{"", "s1", long} {
		out := filepath.Join(dir, "want-"+snap[:min(len(snap), 8)]+".raw")
		qemuToRaw(t, img, snap, out)
		want[snap] = out
	}
	if r := execute("", qcow2fsBin, "check", img); r.Code != 2 {
		t.Errorf("qcow2fs check: %s (want exit 2)", r)
	}

	mnt := mkdir(t, dir, "mnt")
	r := execute("", qcow2fsBin, "mount", img, mnt)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r.Code != 0 {
		t.Fatalf("mount: %s", r)
	}
	if !strings.Contains(r.Stderr, `snapshot "bad\x1b[31m" (ID "2") not shown`) || strings.ContainsRune(r.Stderr, 0x1b) {
		t.Errorf("mount's warning about the bad snapshot (escaped, naming it) is missing:\n%q", r.Stderr)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names, short []string
	for _, e := range ents {
		names = append(names, e.Name())
		if strings.HasPrefix(e.Name(), "vm@LLLL") {
			short = append(short, e.Name())
		}
		if _, err := os.Stat(filepath.Join(mnt, e.Name())); err != nil {
			t.Errorf("stat %s: %v", e.Name(), err)
		}
	}
	sort.Strings(names)
	if len(names) != 4 || len(short) != 1 || len(short[0]) > 255 || names[0] != "vm.info" || names[1] != "vm.raw" || names[3] != "vm@s1.raw" {
		t.Fatalf("directory %q: want vm.info, vm.raw, vm@s1.raw and one shortened vm@LLL…raw", names)
	}
	compareFiles(t, filepath.Join(mnt, "vm.raw"), want[""])
	compareFiles(t, filepath.Join(mnt, "vm@s1.raw"), want["s1"])
	compareFiles(t, filepath.Join(mnt, short[0]), want[long])
	info := readFile(filepath.Join(mnt, "vm.info"))
	if !strings.Contains(info, short[0]) || !strings.Contains(info, "snapshot ID 2 cannot be used") {
		t.Errorf("vm.info lacks the shortened file name or the hidden snapshot:\n%s", info)
	}

	// The active disk is writable; the write lands where QEMU reads it.
	f, err := os.OpenFile(filepath.Join(mnt, "vm.raw"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("\x44", 4096)), 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	unmountQcow2fs(t, mnt, img)
	if r := execute("", "qemu-img", "check", img); r.Code != 2 {
		t.Errorf("qemu-img check after the write: %s (want 2: the bad entry only)", r)
	}
	qemuToRaw(t, img, "", filepath.Join(dir, "after.raw"))
	if got := readFile(filepath.Join(dir, "after.raw")); len(got) != 4<<20 || got[3<<20] != 0x44 || got[1<<20] != 0x33 {
		t.Errorf("QEMU does not read the write back")
	}

	mountQcow2fs(t, mnt, []string{"--ro", "--no-snapshots"}, img)
	ents, _ = os.ReadDir(mnt)
	if len(ents) != 2 {
		t.Errorf("--no-snapshots mount lists %d files", len(ents))
	}
	unmountQcow2fs(t, mnt, img)
}
