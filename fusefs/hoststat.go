// Once mounted, the daemon never looks anything up by path: the mount may
// cover the images' own directory (cd /images && qcow2fs mount vm.qcow2 .),
// and a stat(2) of a path under it would come back to this daemon as a
// request it can only answer by asking itself — a deadlock. Attributes
// therefore come from descriptors opened before the mount: the images' own
// and one on the directory that holds them.

package fusefs

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// hostDir is the directory holding the (first) image, opened before the
// mount: the root directory's owner and times and the figures df shows
// come from it. It is never read; O_NOATIME says so to anyone auditing the
// daemon's descriptors (forensic mounts), and O_PATH is the fallback for a
// directory we may search but not read.
type hostDir struct{ fd int }

func openHostDir(path string) (hostDir, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	fd, err := unix.Open(path, flags|unix.O_NOATIME, 0)
	if err == unix.EPERM { // O_NOATIME: only for the owner (or root)
		fd, err = unix.Open(path, flags, 0)
	}
	if err == unix.EACCES {
		fd, err = unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return hostDir{-1}, fmt.Errorf("open %s: %w", path, err)
	}
	return hostDir{fd}, nil
}

func (d hostDir) stat(st *syscall.Stat_t) error {
	if d.fd < 0 {
		return syscall.EBADF
	}
	return syscall.Fstat(d.fd, st)
}

func (d hostDir) statfs(st *syscall.Statfs_t) error {
	if d.fd < 0 {
		return syscall.EBADF
	}
	return syscall.Fstatfs(d.fd, st)
}

func (d hostDir) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
	}
}
