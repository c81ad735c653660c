// Mount locks. "Is anything mounted there? No? Then mount" is a race: four
// qcow2fs processes started at once onto one mount point all see nothing
// mounted and stack four mounts; four read-only mounts of one image all get
// in, because QEMU's reader locks on the image share by design. So a mount
// takes an exclusive flock on a lock file per mount point and per image
// (in the run-state directory) before it checks, and holds them until its
// mount is ready or has failed: the next one then finds the mount and is
// refused, naming it.
//
// A second mount of an image already mounted is refused also when both are
// read-only, which the image locks alone would allow: one image, one mount
// is what the documentation promises, and what status, unmount and the
// maintenance commands' "unmount it first" messages rely on to name the
// one mount that holds an image.
//
// flock locks vanish with the process that holds them, so a mount killed
// half-way leaves nothing held. A lock file is removed by its holder, while
// still holding it; a waiter that then gets the lock of the removed file
// notices (the path no longer leads to its file) and starts over.

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mountLockTimeout bounds the wait for another mount's set-up (opening its
// images, which for a dirty image includes rebuilding the refcounts).
var mountLockTimeout = time.Minute

type heldLock struct {
	path string
	f    *os.File
}

// mountLocks are the locks one mount holds while it sets up.
type mountLocks struct{ held []heldLock }

// lockKey is one thing to lock and how to name it in a message.
type lockKey struct {
	file string // lock file name
	what string // "mount point /mnt/x", "image /a/b.qcow2"
}

// mountLockKeys lists what a mount locks: its mount point (by path) and
// each image (by device and inode, so that another path to the same file
// meets the same lock; by path when it does not exist yet, an overlay).
func mountLockKeys(mountpoint string, files []string) []lockKey {
	keys := []lockKey{{file: "mp-" + hashName(mountpoint) + ".lock", what: "mount point " + mountpoint}}
	seen := map[string]bool{}
	for _, f := range files {
		var name string
		if st, err := os.Stat(f); err == nil {
			s := st.Sys().(*syscall.Stat_t)
			name = fmt.Sprintf("img-%x-%x.lock", s.Dev, s.Ino)
		} else {
			abs, _ := filepath.Abs(f)
			name = "img-" + hashName(abs) + ".lock"
		}
		if !seen[name] {
			seen[name] = true
			keys = append(keys, lockKey{file: name, what: "image " + f})
		}
	}
	// One order for everyone: no two mounts wait on each other.
	sort.Slice(keys, func(i, j int) bool { return keys[i].file < keys[j].file })
	return keys
}

func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// lockMount takes the locks of a mount, waiting at most mountLockTimeout
// for another mount's set-up to finish. The locks live in the run-state
// directory (root's, or the user's own private one); one that someone else
// controls is refused rather than trusted.
func lockMount(mountpoint string, files []string) (*mountLocks, error) {
	l := &mountLocks{}
	dir := runStateDir()
	if err := ensureRunDir(dir); err != nil {
		if errors.Is(err, errRunDirUnsafe) {
			return nil, fmt.Errorf("cannot lock the mount: %w", err)
		}
		return l, nil // best effort, like the run state itself (read-only /run, say)
	}
	deadline := time.Now().Add(mountLockTimeout)
	for _, k := range mountLockKeys(mountpoint, files) {
		h, err := takeLock(filepath.Join(dir, k.file), deadline)
		if err != nil {
			l.release()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				holder := ""
				if pid := lockHolder(filepath.Join(dir, k.file)); pid > 0 {
					holder = fmt.Sprintf(" (pid %d)", pid)
				}
				return nil, fmt.Errorf("%s: another qcow2fs mount%s has been setting it up for more than %v", k.what, holder, mountLockTimeout)
			}
			return nil, fmt.Errorf("lock %s: %w", k.what, err)
		}
		l.held = append(l.held, h)
	}
	return l, nil
}

// takeLock locks the file at path exclusively, polling until deadline.
func takeLock(path string, deadline time.Time) (heldLock, error) {
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return heldLock{}, err
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			// The file may have been removed by the holder we waited
			// for: only the file the path leads to now counts.
			var a, b unix.Stat_t
			if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(path, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
				f.Truncate(0)
				f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
				return heldLock{path: path, f: f}, nil
			}
			f.Close()
			continue
		}
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return heldLock{}, err
		}
		if time.Now().After(deadline) {
			return heldLock{}, os.ErrDeadlineExceeded
		}
		time.Sleep(delay)
	}
}

// lockHolder returns the pid recorded in a lock file (0 if none).
func lockHolder(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// release removes the lock files and lets go of them; it may be called
// more than once.
func (l *mountLocks) release() {
	if l == nil {
		return
	}
	for i := len(l.held) - 1; i >= 0; i-- {
		os.Remove(l.held[i].path)
		l.held[i].f.Close()
	}
	l.held = nil
}
