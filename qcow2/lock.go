// QEMU-compatible image locking (block/file-posix.c): the permission lock
// bytes on the image file, and LockError for a conflict with another process.

package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// QEMU-compatible image locking (block/file-posix.c): open-file-description
// byte locks on the image file, one byte per permission. Byte 100+i means "I
// hold permission i", byte 200+i "I do not share permission i". A would-be
// user of permission i first tests 200+i; one that refuses to share i tests
// 100+i. Locks are taken on the descriptor used for I/O, so they live exactly
// as long as the open image.
const (
	lockPermBase   = 100
	lockSharedBase = 200

	permConsistentRead = 1 << 0
	permWrite          = 1 << 1
	permWriteUnchanged = 1 << 2
	permResize         = 1 << 3
	permAll            = 0xf
)

var permNames = []string{"consistent read", "write", "write unchanged", "resize"}

// ErrLocked reports an image another process uses in a conflicting way.
var ErrLocked = errors.New("image is locked by another process")

// LockError says which lock conflicts.
type LockError struct {
	File string
	What string
}

func (e *LockError) Error() string {
	return fmt.Sprintf("%s: %s (is another process — a qcow2fs mount, qemu or qemu-img — using the image? -U/--force-share inspects it anyway)", e.File, e.What)
}

func (e *LockError) Unwrap() error { return ErrLocked }

// lockImage takes QEMU's lock bytes on f for the permissions we hold (perm)
// and those we do not share (unshared), after checking nobody conflicts.
func lockImage(f *os.File, path string, perm, unshared int) error {
	fd := int(f.Fd())
	for i := 0; i < 4; i++ {
		if perm&(1<<i) != 0 {
			if held, err := lockHeld(fd, lockSharedBase+int64(i)); err != nil {
				return fmt.Errorf("%s: test lock: %w", path, err)
			} else if held {
				return &LockError{File: path, What: fmt.Sprintf("failed to get %q lock: another process does not share it", permNames[i])}
			}
		}
		if unshared&(1<<i) != 0 {
			if held, err := lockHeld(fd, lockPermBase+int64(i)); err != nil {
				return fmt.Errorf("%s: test lock: %w", path, err)
			} else if held {
				return &LockError{File: path, What: fmt.Sprintf("failed to get shared %q lock: another process holds it", permNames[i])}
			}
		}
	}
	for i := 0; i < 4; i++ {
		if perm&(1<<i) != 0 {
			if err := setReadLock(fd, lockPermBase+int64(i)); err != nil {
				return lockErr(path, err)
			}
		}
		if unshared&(1<<i) != 0 {
			if err := setReadLock(fd, lockSharedBase+int64(i)); err != nil {
				return lockErr(path, err)
			}
		}
	}
	return nil
}

func lockErr(path string, err error) error {
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return &LockError{File: path, What: "lock conflict"}
	}
	return fmt.Errorf("%s: lock: %w", path, err)
}

func setReadLock(fd int, b int64) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: b, Len: 1}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}

// lockHeld reports whether another open file description holds byte b.
func lockHeld(fd int, b int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}
