// The mapping of qcow2 errors to the errno a FUSE caller sees, in one place;
// image and host failures become a logged EIO.

package fusefs

import (
	"errors"
	"syscall"

	"github.com/qcow2fs/qcow2fs/qcow2"
	"github.com/sirupsen/logrus"
)

// toErrno maps an error from the qcow2 package to the errno the caller of
// the FUSE operation sees. It is the only place where that mapping lives.
// Errors that mean "something is wrong with the image or the host" become
// EIO and are logged with the image and offset, since the errno alone tells
// the user nothing.
func (f *imageFile) toErrno(err error, op string, off, n int64) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, qcow2.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, qcow2.ErrOutOfRange):
		return syscall.ENOSPC
	case errors.Is(err, qcow2.ErrCorrupt):
		errno = syscall.EIO
	case errors.As(err, &errno) && errno == syscall.ENOSPC:
		// The host file system is full: say so rather than EIO.
	default:
		errno = syscall.EIO
	}
	f.log.WithFields(logrus.Fields{
		"image":  f.img.Path(),
		"file":   f.name,
		"offset": off,
		"length": n,
	}).Errorf("%s failed: %v", op, err)
	return errno
}
