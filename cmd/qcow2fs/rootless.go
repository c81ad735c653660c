// Mounts by users other than root. The kernel lets a user mount FUSE
// through the set-uid fusermount3 (go-fuse runs it when mount(2) is not
// allowed); what a user may do is decided there and by /dev/fuse's mode.
// The checks here run before anything is opened, so that a refusal names
// its cause instead of relaying "fusermount exited with code 256".

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// fuseDevice and fuseConf are variables for the tests.
var (
	fuseDevice = "/dev/fuse"
	fuseConf   = "/etc/fuse.conf"
)

// checkUserMount refuses, with the reason, a mount a non-root user cannot
// make: no access to /dev/fuse, or allow_other/allow_root without
// user_allow_other in /etc/fuse.conf.
func checkUserMount(cfg *mountConfig) error {
	if os.Geteuid() == 0 {
		return nil
	}
	if err := unix.Faccessat(unix.AT_FDCWD, fuseDevice, unix.R_OK|unix.W_OK, unix.AT_EACCESS); err != nil {
		return fuseDeviceError(err)
	}
	if cfg.AllowOther || cfg.AllowRoot {
		opt := "allow_other"
		if cfg.AllowRoot {
			opt = "allow_root"
		}
		ok, err := userAllowOther()
		if err != nil {
			return fmt.Errorf("%s: %s is asked, and %v: fusermount3 allows it to users only with the line user_allow_other there", opt, opt, err)
		}
		if !ok {
			return fmt.Errorf("%s: %s has no line user_allow_other: fusermount3 refuses %s to users other than root without it (ask root to add it, or mount without %s)",
				opt, fuseConf, opt, opt)
		}
	}
	return nil
}

// fuseDeviceError explains why /dev/fuse cannot be used.
func fuseDeviceError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no %s on this machine (the fuse kernel module is not loaded: modprobe fuse), so no FUSE mount is possible", fuseDevice)
	}
	detail := ""
	if st, serr := os.Stat(fuseDevice); serr == nil {
		s := st.Sys().(*syscall.Stat_t)
		detail = fmt.Sprintf(" (mode %04o, owner uid %d, gid %d)", st.Mode().Perm(), s.Uid, s.Gid)
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("no access to %s%s: users other than root need it readable and writable to mount (mode 0666 is fuse3's default; ask root, or mount as root)",
			fuseDevice, detail)
	}
	return fmt.Errorf("cannot use %s%s: %v", fuseDevice, detail, err)
}

// userAllowOther reports whether /etc/fuse.conf has the line
// user_allow_other (fusermount3 reads it the same way: one option a line,
// # comments, surrounding blanks ignored).
func userAllowOther() (bool, error) {
	f, err := os.Open(fuseConf)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("there is no %s", fuseConf)
		}
		return false, fmt.Errorf("%s cannot be read: %v", fuseConf, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "user_allow_other" {
			return true, nil
		}
	}
	return false, sc.Err()
}

// userRunDir is the run-state directory of a user other than root:
// $XDG_RUNTIME_DIR/qcow2fs when XDG_RUNTIME_DIR is set and is the user's
// own, else /tmp/qcow2fs-UID. (A XDG_RUNTIME_DIR inherited from another
// account, as su and setpriv leave it, is not ours and is passed over.)
func userRunDir() string {
	uid := os.Geteuid()
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		if st, err := os.Stat(d); err == nil && st.IsDir() && int(st.Sys().(*syscall.Stat_t).Uid) == uid {
			return filepath.Join(d, "qcow2fs")
		}
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("qcow2fs-%d", uid))
}

// errRunDirUnsafe marks a run-state directory that someone else controls.
var errRunDirUnsafe = errors.New("unsafe run-state directory")

// ensureRunDir creates the run-state directory when missing and checks it
// is safe to keep locks and pids in: a real directory (not a symlink)
// owned by us and, for a user, closed to everyone else (0700). In a
// shared /tmp another user could have made /tmp/qcow2fs-UID first, to
// feed us pids or hold our locks: such a directory is refused, not used.
func ensureRunDir(dir string) error {
	mode := os.FileMode(0o700)
	if os.Geteuid() == 0 {
		mode = 0o755
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		if err := os.MkdirAll(dir, mode); err != nil {
			return err
		}
	}
	return checkRunDir(dir)
}

// checkRunDir checks an existing run-state directory (see ensureRunDir).
func checkRunDir(dir string) error { return checkRunDirFor(dir, os.Geteuid()) }

func checkRunDirFor(dir string, uid int) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	s := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("%w: %s is not a directory (%v)", errRunDirUnsafe, dir, st.Mode().Type())
	case int(s.Uid) != uid:
		return fmt.Errorf("%w: %s belongs to uid %d, not to you (uid %d); remove it", errRunDirUnsafe, dir, s.Uid, uid)
	case uid != 0 && st.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%w: %s is open to other users (%v); it must be 0700", errRunDirUnsafe, dir, st.Mode().Perm())
	}
	return nil
}
