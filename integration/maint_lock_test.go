// Image locking between qcow2fs and QEMU, both ways, and between two
// qcow2fs processes: maintenance never runs on a mounted image, and a
// refusal names the mount point (or the process) holding the image.

package integration

import (
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// maintModifying lists every modifying command on img (base is its
// backing file, other an unrelated image for rebase) that a mount refuses.
// (snapshot create and delete of a read-write mounted image are done live
// by its daemon: TestLiveSnapshots; so are snapshot create --external and
// commit: live_external_test.go.)
func maintModifying(img, other string) [][]string {
	return [][]string{
		{"create", "-q", img, "1M"},
		{"check", "--repair", "all", img},
		{"check", "-r", "leaks", img},
		{"snapshot", "apply", "s1", img},
		{"resize", img, "+1M"},
		{"resize", "--shrink", img, "-1M"},
		{"rebase", "-b", other, img},
		{"rebase", "-u", "-b", "", img},
		{"bitmap", "--add", img, "newbitmap"},
	}
}

func TestMaintLocking(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	base := k.Path("base")
	qemuCreate(t, base, "8M", "", "", "")
	qemuIO(t, base, k.Rand(0, 1<<20))
	vm := k.Path("vm")
	qemuCreate(t, vm, "8M", "", "base.qcow2", "qcow2")
	qemuIO(t, vm, k.Rand(1<<20, 1<<20))
	run(t, "qemu-img", "snapshot", "-c", "s1", vm)
	other := k.Path("other")
	qemuCreate(t, other, "8M", "", "", "")
	over := k.Path("over") // an image over vm.qcow2
	qemuCreate(t, over, "8M", "", "vm.qcow2", "qcow2")

	mnt := mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, nil, vm)
	// (Taken after mounting: a read-write open may round the file up to a
	// whole cluster.) The refused commands must change nothing.
	before := testenv.HashTree(t, k.Dir)

	t.Run("qemu-refuses-mounted", func(t *testing.T) {
		if r := execute("", "qemu-img", "info", vm); r.Code == 0 || !strings.Contains(r.Stderr, "lock") {
			t.Errorf("qemu-img info of a rw-mounted image without -U: want a lock failure: %s", r)
		}
		if r := execute("", "qemu-img", "check", vm); r.Code == 0 || !strings.Contains(r.Stderr, "lock") {
			t.Errorf("qemu-img check of a rw-mounted image: want a lock failure: %s", r)
		}
		if r := execute("", "qemu-img", "resize", base, "+1M"); r.Code == 0 {
			t.Errorf("qemu-img resize of the backing file of a mounted image succeeded: %s", r)
		}
		run(t, "qemu-img", "info", "-U", vm)
	})

	t.Run("qcow2fs-refuses-mounted", func(t *testing.T) {
		for _, args := range maintModifying(vm, other) {
			r := maintRun("", args...)
			want := "is mounted read-write at " + mnt
			if r.Code != 1 || !strings.Contains(r.Stderr, want) || !strings.Contains(r.Stderr, "qcow2fs unmount "+mnt) ||
				!strings.Contains(r.Stderr, "daemon pid ") || strings.Count(r.Stderr, "\n") != 1 || !strings.HasPrefix(r.Stderr, "qcow2fs: ") ||
				!strings.Contains(r.Stderr, "qcow2fs suspend "+mnt) || !strings.Contains(r.Stderr, "qcow2fs snapshot create") {
				t.Errorf("qcow2fs %s on a mounted image: want exit 1 and one line naming the mount and the live forms: %s", strings.Join(args, " "), r)
			}
		}
		// The backing file is held too; the message names the mount.
		r := maintRun("", "resize", base, "+1M")
		if r.Code != 1 || !strings.Contains(r.Stderr, "backing chain of "+vm) || !strings.Contains(r.Stderr, mnt) {
			t.Errorf("resize of the mounted image's backing file: %s", r)
		}
		// Readers need -U, and say so.
		for _, args := range [][]string{{"check", vm}, {"map", vm}, {"snapshot", "-l", vm}, {"info", vm}} {
			r := maintRun("", args...)
			if r.Code != 1 {
				t.Errorf("qcow2fs %s on a rw-mounted image without -U: want exit 1: %s", strings.Join(args, " "), r)
			}
			if args[0] != "info" && !strings.Contains(r.Stderr, mnt) {
				t.Errorf("qcow2fs %s: the refusal does not name the mount point: %s", strings.Join(args, " "), r)
			}
		}
		for _, args := range [][]string{{"check", "-U", vm}, {"map", "-U", vm}, {"map", "-U", "--output", "json", vm}, {"snapshot", "-l", "-U", vm}, {"info", "-U", vm}} {
			maintOK(t, args...)
		}
	})

	t.Run("two-qcow2fs", func(t *testing.T) {
		// Another daemon may not open the mounted image's backing file
		// read-write, nor mount another image over the mounted one.
		mnt2 := mkdir(t, dir, "mnt2")
		r := maintRun("", "mount", base, mnt2)
		if r.Code == 0 {
			forceUnmount(t, mnt2)
			t.Fatalf("a second daemon mounted the backing file of a rw-mounted image read-write")
		}
		if r := maintRun("", "mount", over, mnt2); r.Code == 0 {
			forceUnmount(t, mnt2)
			t.Fatalf("a second daemon mounted an image whose backing file is mounted read-write")
		} else if !strings.Contains(r.Stderr, "lock") {
			t.Errorf("mount over a mounted image: want a lock refusal: %s", r)
		}
	})

	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
	unmountQcow2fs(t, mnt, k.Dir)
	// Unmounted: everything works again.
	run(t, "qemu-img", "info", vm)
	maintOK(t, "check", vm)
	maintOK(t, "resize", "-q", vm, "+1M")

	t.Run("qemu-io-holds", func(t *testing.T) {
		img := k.Path("held")
		qemuCreate(t, img, "4M", "", "", "")
		holdWithQemuIO(t, img)
		mnt3 := mkdir(t, dir, "mnt3")
		if r := maintRun("", "mount", img, mnt3); r.Code != 1 || !strings.Contains(r.Stderr, "lock") {
			forceUnmount(t, mnt3)
			t.Errorf("mount of an image qemu-io holds: want exit 1 and a lock message: %s", r)
		}
		if r := maintRun("", "resize", img, "+1M"); r.Code != 1 || !strings.Contains(r.Stderr, "qemu-io") {
			t.Errorf("resize of an image qemu-io holds: want exit 1 naming qemu-io: %s", r)
		}
		if r := maintRun("", "map", img); r.Code != 1 || !strings.Contains(r.Stderr, "-U") {
			t.Errorf("map of an image qemu-io holds: want exit 1 suggesting -U: %s", r)
		}
		maintOK(t, "map", "-U", img)
		maintOK(t, "check", "-U", img)
	})
}
