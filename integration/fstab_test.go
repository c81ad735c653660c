// The fstab tests drive mount(8) for real, with a temporary fstab
// (mount --fstab FILE). mount(8) finds its helper in /sbin: for type
// fuse.qcow2fs it runs /sbin/mount.fuse.qcow2fs if present, else fuse3's
// /sbin/mount.fuse, which runs "qcow2fs SOURCE MOUNTPOINT -o OPTIONS"
// through /bin/sh; for type qcow2fs it runs /sbin/mount.qcow2fs. mount(8)
// drops PATH from the environment, so the shell finds qcow2fs only in the
// default PATH (/usr/local/sbin first). The tests install those names as
// symlinks to the binary under test and remove them afterwards; a name
// already taken (a real installation) is never touched.

package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// ignoredOpts are generic options an fstab line may carry: accepted and
// ignored by qcow2fs (or consumed by mount(8) and mount.fuse3 on the way).
const ignoredOpts = "nofail,noatime,nodev,nosuid,noexec,_netdev,x-systemd.automount,x-systemd.device-timeout=10s,comment=qcow2fs-test"

// installLink makes path a symlink to target for the duration of the test.
func installLink(t *testing.T, path, target string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		testenv.NotClean(t, path+" already exists (an installed qcow2fs?); the test does not replace it")
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if dst, err := os.Readlink(path); err == nil && dst == target {
			os.Remove(path)
		}
	})
}

// requireAbsent stops the test when path exists: mount(8) would use it
// instead of the helper the test means to exercise.
func requireAbsent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		testenv.NotClean(t, path+" exists and would take precedence over the helper under test")
	}
}

// writeFstab writes a one-line fstab and returns its path.
func writeFstab(t *testing.T, dir, source, mnt, typ, opts string) string {
	t.Helper()
	p := filepath.Join(dir, "fstab")
	line := fmt.Sprintf("%s %s %s %s 0 0\n", source, mnt, typ, opts)
	if err := os.WriteFile(p, []byte("# qcow2fs integration test\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mountCount counts the mounts at point.
func mountCount(t *testing.T, point string) int {
	t.Helper()
	mounts, err := mounts.Read()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mounts {
		if m.Point == point {
			n++
		}
	}
	return n
}

// fstabMount runs "mount --fstab FSTAB MNT", then "mount --fstab FSTAB -a"
// twice, and checks there is exactly one qcow2fs mount of source at mnt.
func fstabMount(t *testing.T, fstab, mnt, source string) {
	t.Helper()
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r := execute("", "mount", "--fstab", fstab, mnt); r.Code != 0 {
		t.Fatalf("mount --fstab %s %s: %s", fstab, mnt, r)
	}
	for i := 0; i < 2; i++ {
		if r := execute("", "mount", "--fstab", fstab, "-a"); r.Code != 0 {
			t.Fatalf("mount --fstab %s -a (run %d): %s", fstab, i+1, r)
		}
	}
	if n := mountCount(t, mnt); n != 1 {
		t.Fatalf("%d mounts at %s after mount DIR and mount -a twice, want 1", n, mnt)
	}
	m, _ := mounts.Find(mnt)
	if m.FSType != fuseType || m.Source != source {
		t.Fatalf("%s: type %s source %s, want %s %s", mnt, m.FSType, m.Source, fuseType, source)
	}
}

// TestFstab mounts through mount(8) and a temporary fstab: via fuse3's
// mount.fuse3, via our own mount.fuse.qcow2fs helper, and as type qcow2fs
// via mount.qcow2fs; read-only with the generic options, a read-write
// directory source, and an unknown option refused by name.
func TestFstab(t *testing.T) {
	requireTools(t, "mount", "mount.fuse3")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "8M", "", "", "")
	qemuIO(t, img, k.Rand(0, 1<<20), k.Rand(5<<20, 100000))
	oracle := qemuRawOf(t, img, filepath.Join(dir, "vm-oracle.raw"))
	before := testenv.HashTree(t, k.Dir)

	// checkRO asserts the read-only mount at mnt shows the image and
	// refuses writes, then unmounts it.
	checkRO := func(t *testing.T, mnt string) {
		t.Helper()
		compareFiles(t, filepath.Join(mnt, "vm.raw"), oracle)
		if f, err := os.OpenFile(filepath.Join(mnt, "vm.raw"), os.O_WRONLY, 0); err == nil {
			f.Close()
			t.Errorf("vm.raw opened for writing on an -o ro fstab mount")
		}
		if opts := mountOptions(t, mnt); !hasAll(opts, "ro", "nodev", "nosuid", "noexec") {
			t.Errorf("mount options %q lack ro,nodev,nosuid,noexec", opts)
		}
		unmountQcow2fs(t, mnt, k.Dir)
	}

	t.Run("mount.fuse3", func(t *testing.T) {
		requireAbsent(t, "/sbin/mount.fuse.qcow2fs")
		requireAbsent(t, "/usr/sbin/mount.fuse.qcow2fs")
		installLink(t, "/usr/local/sbin/qcow2fs", qcow2fsBin)
		sub := mkdir(t, dir, "fuse3")
		mnt := mkdir(t, sub, "mnt")
		fstab := writeFstab(t, sub, img, mnt, "fuse.qcow2fs", "ro,"+ignoredOpts)
		fstabMount(t, fstab, mnt, img)
		checkRO(t, mnt)
	})

	t.Run("mount.fuse.qcow2fs", func(t *testing.T) {
		// Our helper alone: qcow2fs is on no PATH, so mount.fuse3 could not
		// have done it.
		requireAbsent(t, "/usr/local/sbin/qcow2fs")
		installLink(t, "/sbin/mount.fuse.qcow2fs", qcow2fsBin)
		sub := mkdir(t, dir, "helper")
		mnt := mkdir(t, sub, "mnt")
		fstab := writeFstab(t, sub, img, mnt, "fuse.qcow2fs", "ro,"+ignoredOpts)
		fstabMount(t, fstab, mnt, img)
		checkRO(t, mnt)
	})

	t.Run("type-qcow2fs", func(t *testing.T) {
		installLink(t, "/sbin/mount.qcow2fs", qcow2fsBin)
		sub := mkdir(t, dir, "plain")
		mnt := mkdir(t, sub, "mnt")
		fstab := writeFstab(t, sub, img, mnt, "qcow2fs", "ro,"+ignoredOpts)
		fstabMount(t, fstab, mnt, img)
		checkRO(t, mnt)
	})

	t.Run("directory-rw", func(t *testing.T) {
		// A directory source, read-write ("defaults"): every image in it
		// appears, writes land in the images, mount -a still mounts once.
		installLink(t, "/sbin/mount.fuse.qcow2fs", qcow2fsBin)
		sub := mkdir(t, dir, "dirsrc")
		imgs := mkdir(t, sub, "images")
		for _, n := range []string{"a", "b"} {
			qemuCreate(t, filepath.Join(imgs, n+".qcow2"), "4M", "", "", "")
		}
		os.WriteFile(filepath.Join(imgs, "notes.txt"), []byte("not an image\n"), 0o644)
		mnt := mkdir(t, sub, "mnt")
		fstab := writeFstab(t, sub, imgs, mnt, "fuse.qcow2fs", "defaults,nofail")
		fstabMount(t, fstab, mnt, imgs)
		if opts := mountOptions(t, mnt); hasAll(opts, "ro") {
			t.Errorf("defaults mounted read-only: %q", opts)
		}
		got := listDir(t, mnt)
		if want := "a.info a.raw b.info b.raw"; strings.Join(got, " ") != want {
			t.Errorf("directory mount lists %v, want %s", got, want)
		}
		msg := []byte("written via fstab")
		f, err := os.OpenFile(filepath.Join(mnt, "b.raw"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(msg, 4096); err != nil {
			t.Fatalf("write b.raw: %v", err)
		}
		f.Close()
		unmountQcow2fs(t, mnt, imgs)
		b := filepath.Join(imgs, "b.qcow2")
		qemuCheckClean(t, b)
		raw, err := os.ReadFile(qemuRawOf(t, b, filepath.Join(sub, "b-oracle.raw")))
		if err != nil {
			t.Fatal(err)
		}
		if string(raw[4096:4096+len(msg)]) != string(msg) {
			t.Errorf("b.qcow2 does not hold what was written through the mount")
		}
	})

	t.Run("unknown-option", func(t *testing.T) {
		installLink(t, "/sbin/mount.fuse.qcow2fs", qcow2fsBin)
		sub := mkdir(t, dir, "unknown")
		mnt := mkdir(t, sub, "mnt")
		fstab := writeFstab(t, sub, img, mnt, "fuse.qcow2fs", "ro,sparkle")
		t.Cleanup(func() { forceUnmount(t, mnt) })
		r := execute("", "mount", "--fstab", fstab, mnt)
		if r.Code == 0 || !strings.Contains(r.Stderr, `unknown mount option "sparkle"`) {
			t.Errorf("fstab with an unknown option: %s", r)
		}
		if _, ok := mounts.Find(mnt); ok {
			t.Errorf("mounted despite the unknown option")
		}
	})

	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// mountOptions returns the per-mount options of the mount at point
// (/proc/self/mountinfo field 6).
func mountOptions(t *testing.T, point string) string {
	t.Helper()
	e, _ := mounts.Find(point)
	return e.Options
}

// hasAll reports whether the comma-separated list holds every one of want.
func hasAll(list string, want ...string) bool {
	have := map[string]bool{}
	for _, o := range strings.Split(list, ",") {
		have[o] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

// listDir returns the sorted names in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}
