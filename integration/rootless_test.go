// Tests of rootless use: a plain user mounting through fusermount3 with run
// state in /tmp or $XDG_RUNTIME_DIR, fuse2fs on a partition file, and the
// refusals a user meets.

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/proc"
	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// fuseDeviceMode sets /dev/fuse's permission bits for the test and puts
// the old ones back afterwards (on this kind of machine it is 0600; the
// distributions' default, which rootless mounts need, is 0666).
func fuseDeviceMode(t *testing.T, mode os.FileMode) {
	t.Helper()
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatal(err)
	}
	old := st.Mode().Perm()
	if err := os.Chmod("/dev/fuse", mode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Chmod("/dev/fuse", old); err != nil {
			t.Errorf("cleanup: chmod /dev/fuse %04o: %v", old, err)
		}
	})
}

// userHome makes a private directory owned by u (like a home directory)
// inside a public one, and a copy of the binary under test u may run.
func userHome(t *testing.T, u testUser) (home, bin string) {
	t.Helper()
	pub := publicTestDir(t)
	bin = filepath.Join(pub, "qcow2fs")
	copyFile(t, qcow2fsBin, bin, 0o755)
	home = mkdir(t, pub, "home")
	chown(t, home, u.Uid, u.Gid)
	chmod(t, home, 0o700)
	return home, bin
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// asUserEnv runs a command as u with XDG_RUNTIME_DIR set to xdg, or unset
// when xdg is "".
func asUserEnv(u testUser, xdg, name string, args ...string) result {
	env := []string{"-u", "XDG_RUNTIME_DIR"}
	if xdg != "" {
		env = []string{"XDG_RUNTIME_DIR=" + xdg}
	}
	return asUser(u, "env", append(append(env, name), args...)...)
}

// TestRootlessMount: a plain user, /dev/fuse open to all, mounts an image
// they own through fusermount3, writes, sees their mount with its daemon
// pid in status, unmounts (which waits for the flush): the image checks
// clean and holds the write. Run state and locks live in /tmp/qcow2fs-UID
// (0700, theirs) without XDG_RUNTIME_DIR, in $XDG_RUNTIME_DIR/qcow2fs with.
func TestRootlessMount(t *testing.T) {
	requireTools(t, "setpriv", "useradd", "fusermount3", "env")
	fuseDeviceMode(t, 0o666)
	u := newTestUser(t, "rl")
	home, bin := userHome(t, u)
	img := filepath.Join(home, "vm.qcow2")
	qemuCreate(t, img, "16M", "", "", "")
	chown(t, img, u.Uid, u.Gid)
	pattern := bytes.Repeat([]byte("rootless"), 8192) // 64 KiB
	pat := filepath.Join(home, "pattern")
	os.WriteFile(pat, pattern, 0o644)
	xdg := filepath.Join(home, "xdg")
	os.Mkdir(xdg, 0o700)
	chown(t, xdg, u.Uid, u.Gid)

	for _, c := range []struct{ name, xdg, runDir string }{
		{"no-xdg", "", fmt.Sprintf("/tmp/qcow2fs-%d", u.Uid)},
		{"xdg", xdg, filepath.Join(xdg, "qcow2fs")},
	} {
		t.Run(c.name, func(t *testing.T) {
			mnt := filepath.Join(home, "mnt-"+c.name)
			os.Mkdir(mnt, 0o755)
			chown(t, mnt, u.Uid, u.Gid)
			t.Cleanup(func() { forceUnmount(t, mnt); os.RemoveAll(c.runDir) })
			if r := asUserEnv(u, c.xdg, bin, "mount", img, mnt); r.Code != 0 {
				t.Fatalf("mount as %s: %s", u, r)
			}
			if r := asUserEnv(u, c.xdg, "dd", "if="+pat, "of="+filepath.Join(mnt, "vm.raw"), "bs=64k", "seek=3", "conv=notrunc", "status=none"); r.Code != 0 {
				t.Fatalf("write as %s: %s", u, r)
			}
			// status lists the mount with the daemon's pid, a process of u.
			r := asUserEnv(u, c.xdg, bin, "status", "--output", "json")
			var list []struct {
				Mountpoint string `json:"mountpoint"`
				PID        int    `json:"pid"`
				State      string `json:"state"`
			}
			if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &list) != nil {
				t.Fatalf("status as %s: %s", u, r)
			}
			pid := 0
			for _, e := range list {
				if e.Mountpoint == mnt {
					pid = e.PID
					if e.State != "serving" {
						t.Errorf("status: %s is %s, want serving", mnt, e.State)
					}
				}
			}
			if pid == 0 {
				t.Fatalf("status as %s shows no pid for %s: %s", u, mnt, r.Stdout)
			}
			var st syscall.Stat_t
			if err := syscall.Stat("/proc/"+strconv.Itoa(pid), &st); err != nil || int(st.Uid) != u.Uid {
				t.Errorf("status pid %d is not a process of %s (%v, uid %d)", pid, u, err, st.Uid)
			}
			if txt := asUserEnv(u, c.xdg, bin, "status").Stdout; !strings.Contains(txt, strconv.Itoa(pid)) {
				t.Errorf("status table lacks pid %d:\n%s", pid, txt)
			}
			// The run-state directory: theirs, private.
			fi, err := os.Lstat(c.runDir)
			if err != nil {
				t.Fatalf("run-state directory: %v", err)
			}
			if s := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || int(s.Uid) != u.Uid || fi.Mode().Perm() != 0o700 {
				t.Errorf("run-state directory %s: %v uid %d, want a 0700 directory of uid %d", c.runDir, fi.Mode(), s.Uid, u.Uid)
			}
			// A second mount of the image is refused (locks, one image one mount).
			mnt2 := filepath.Join(home, "mnt2-"+c.name)
			os.Mkdir(mnt2, 0o755)
			chown(t, mnt2, u.Uid, u.Gid)
			t.Cleanup(func() { forceUnmount(t, mnt2) })
			if r := asUserEnv(u, c.xdg, bin, "mount", "--ro", img, mnt2); r.Code == 0 || !strings.Contains(r.Stderr, mnt) {
				t.Errorf("second mount of a mounted image as %s: %s", u, r)
			}
			// unmount waits for the daemon: the image is free at once.
			if r := asUserEnv(u, c.xdg, bin, "unmount", mnt); r.Code != 0 {
				t.Fatalf("unmount as %s: %s", u, r)
			}
			if !proc.Gone(pid) {
				t.Errorf("unmount returned before daemon %d exited", pid)
			}
			if h := mounts.OpenUnder(img); len(h) > 0 {
				t.Errorf("image still open after unmount: %v", h)
			}
			qemuCheckClean(t, img)
			raw, err := os.ReadFile(qemuRawOf(t, img, filepath.Join(t.TempDir(), "vm.raw")))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw[3<<16:4<<16], pattern) {
				t.Errorf("the image does not hold what %s wrote", u)
			}
		})
	}
}

// TestRootlessPartitionFuse2fs: the rootless route to the files inside a
// disk, no loop device: qcow2fs --ro --partitions, then fuse2fs on the
// partition file, both as a plain user.
func TestRootlessPartitionFuse2fs(t *testing.T) {
	requireTools(t, "setpriv", "useradd", "fusermount3", "sfdisk", "mkfs.ext4", "fuse2fs", "dd")
	fuseDeviceMode(t, 0o666)
	u := newTestUser(t, "rp")
	home, bin := userHome(t, u)
	work := testDir(t)
	// An MBR disk whose partition 1 holds ext4 with a known file.
	content := mkdir(t, work, "content")
	secret := "hello from inside the partition\n"
	os.WriteFile(filepath.Join(content, "hello.txt"), []byte(secret), 0o644)
	fsImg := filepath.Join(work, "p1.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-d", content, fsImg, "30M")
	disk := filepath.Join(work, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 32<<20); err != nil {
		t.Fatal(err)
	}
	sfdisk(t, disk, "label: dos\n2048,,83\n")
	run(t, "dd", "if="+fsImg, "of="+disk, "bs=1M", "seek=1", "conv=notrunc", "status=none")
	img := filepath.Join(home, "vm.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, img)
	chown(t, img, u.Uid, u.Gid)
	before := testenv.HashTree(t, img)
	m := filepath.Join(home, "m")
	root := filepath.Join(home, "root")
	for _, d := range []string{m, root} {
		os.Mkdir(d, 0o755)
		chown(t, d, u.Uid, u.Gid)
	}
	t.Cleanup(func() {
		quietRun("fusermount3", "-u", "-z", root)
		forceUnmount(t, m)
		os.RemoveAll(fmt.Sprintf("/tmp/qcow2fs-%d", u.Uid))
	})
	if r := asUserEnv(u, "", bin, "mount", "--ro", "--partitions", img, m); r.Code != 0 {
		t.Fatalf("mount as %s: %s", u, r)
	}
	if r := asUserEnv(u, "", "fuse2fs", "-o", "ro", filepath.Join(m, "vm-p1.raw"), root); r.Code != 0 {
		t.Fatalf("fuse2fs as %s: %s", u, r)
	}
	if got := asUserOK(t, u, "cat", filepath.Join(root, "hello.txt")); got != secret {
		t.Errorf("hello.txt through fuse2fs on vm-p1.raw: %q, want %q", got, secret)
	}
	asUserOK(t, u, "fusermount3", "-u", root)
	// fuse2fs exits (and lets go of vm-p1.raw) a moment after its unmount;
	// until then the qcow2fs mount is rightly busy.
	for deadline := time.Now().Add(10 * time.Second); len(mounts.OpenUnder(m)) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if r := asUserEnv(u, "", bin, "unmount", m); r.Code != 0 {
		t.Fatalf("unmount as %s: %s", u, r)
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, img))
}

// TestRootlessRefusals: the refusals a user meets name their cause: no
// access to /dev/fuse; allow_other / allow_root without user_allow_other
// in /etc/fuse.conf. Nothing is mounted.
func TestRootlessRefusals(t *testing.T) {
	requireTools(t, "setpriv", "useradd", "fusermount3", "env")
	u := newTestUser(t, "rr")
	home, bin := userHome(t, u)
	img := filepath.Join(home, "vm.qcow2")
	qemuCreate(t, img, "4M", "", "", "")
	chown(t, img, u.Uid, u.Gid)
	mnt := filepath.Join(home, "mnt")
	os.Mkdir(mnt, 0o755)
	chown(t, mnt, u.Uid, u.Gid)
	t.Cleanup(func() { forceUnmount(t, mnt); os.RemoveAll(fmt.Sprintf("/tmp/qcow2fs-%d", u.Uid)) })
	refused := func(t *testing.T, want []string, args ...string) {
		t.Helper()
		r := asUserEnv(u, "", bin, append(append([]string{"mount"}, args...), img, mnt)...)
		if r.Code != 1 {
			t.Errorf("mount %v as %s: %s, want exit 1", args, u, r)
		}
		for _, w := range want {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("mount %v as %s: stderr %q lacks %q", args, u, r.Stderr, w)
			}
		}
		if strings.Contains(r.Stderr, "exited with code") || strings.Count(strings.TrimSpace(r.Stderr), "\n") > 0 {
			t.Errorf("mount %v as %s: want one line naming the cause, got %q", args, u, r.Stderr)
		}
		if _, ok := mounts.Find(mnt); ok {
			t.Fatalf("mounted despite the refusal")
		}
	}

	t.Run("dev-fuse", func(t *testing.T) {
		fuseDeviceMode(t, 0o600)
		refused(t, []string{"no access to /dev/fuse", "mode 0600", "readable and writable"})
	})

	t.Run("user_allow_other", func(t *testing.T) {
		fuseDeviceMode(t, 0o666)
		old, err := os.ReadFile("/etc/fuse.conf")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile("/etc/fuse.conf", old, 0o644) })
		// Commented out, as Debian ships it.
		os.WriteFile("/etc/fuse.conf", []byte("# mount_max = 1000\n#user_allow_other\n"), 0o644)
		refused(t, []string{"allow_other", "/etc/fuse.conf", "user_allow_other"}, "--allow-other")
		refused(t, []string{"allow_root", "/etc/fuse.conf", "user_allow_other"}, "-o", "allow_root")
		// With the line, the same mount works.
		os.WriteFile("/etc/fuse.conf", []byte("user_allow_other\n"), 0o644)
		if r := asUserEnv(u, "", bin, "mount", "--ro", "--allow-other", img, mnt); r.Code != 0 {
			t.Fatalf("mount --allow-other as %s with user_allow_other: %s", u, r)
		}
		if r := asUserEnv(u, "", bin, "unmount", mnt); r.Code != 0 {
			t.Fatalf("unmount: %s", r)
		}
	})
}
