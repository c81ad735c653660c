// Unit tests of rootless mounting's checks: the run-state directory,
// user_allow_other in /etc/fuse.conf, and /dev/fuse errors.

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckRunDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	me := os.Geteuid()
	private := mk("private", 0o700)
	open := mk("open", 0o755)
	if err := os.Symlink(private, filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	for _, c := range []struct {
		dir  string
		uid  int
		want string // "" for accepted
	}{
		{private, me, ""},
		{open, 0, ""}, // root's /run/qcow2fs is 0755
		{private, me + 4242, "belongs to uid"},
		{filepath.Join(base, "link"), me, "not a directory"},
		{file, me, "not a directory"},
	} {
		err := checkRunDirFor(c.dir, c.uid)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s for uid %d: %v, want accepted", c.dir, c.uid, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, errRunDirUnsafe)):
			t.Errorf("%s for uid %d: %v, want an unsafe-directory error saying %q", c.dir, c.uid, err, c.want)
		}
	}
	// A user's directory open to others is refused (as uid 4242, owner).
	if me == 0 {
		if err := os.Chown(open, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if err := checkRunDirFor(open, 4242); err == nil || !strings.Contains(err.Error(), "must be 0700") {
			t.Errorf("a user's 0755 run directory: %v, want refused", err)
		}
	}
}

func TestUserAllowOther(t *testing.T) {
	old := fuseConf
	defer func() { fuseConf = old }()
	dir := t.TempDir()
	for _, c := range []struct {
		text string
		want bool
	}{
		{"", false},
		{"# user_allow_other\nmount_max = 1000\n", false},
		{"#user_allow_other\n", false},
		{"mount_max = 10\n  user_allow_other  \n", true},
		{"user_allow_other # comment\n", true},
		{"user_allow_others\n", false},
	} {
		fuseConf = filepath.Join(dir, "fuse.conf")
		os.WriteFile(fuseConf, []byte(c.text), 0o644)
		got, err := userAllowOther()
		if err != nil || got != c.want {
			t.Errorf("fuse.conf %q: %v, %v; want %v", c.text, got, err, c.want)
		}
	}
	fuseConf = filepath.Join(dir, "missing")
	if ok, err := userAllowOther(); ok || err == nil || !strings.Contains(err.Error(), "there is no") {
		t.Errorf("missing fuse.conf: %v, %v", ok, err)
	}
}

func TestFuseDeviceError(t *testing.T) {
	old := fuseDevice
	defer func() { fuseDevice = old }()
	fuseDevice = filepath.Join(t.TempDir(), "fuse")
	os.WriteFile(fuseDevice, nil, 0o600)
	msg := fuseDeviceError(syscall.EACCES).Error()
	for _, want := range []string{"no access to " + fuseDevice, "mode 0600", "readable and writable"} {
		if !strings.Contains(msg, want) {
			t.Errorf("EACCES message %q lacks %q", msg, want)
		}
	}
	if msg := fuseDeviceError(syscall.ENOENT).Error(); !strings.Contains(msg, "modprobe fuse") {
		t.Errorf("ENOENT message %q", msg)
	}
}
