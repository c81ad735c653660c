// The attributes a file of the mount shows: the image file's owner, group
// and mode from its descriptor (never a path lookup), narrowed by PermFunc.

package fusefs

import (
	"syscall"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// PermFunc decides which permission bits a file of img may show, given the
// owner, group and bits it would show otherwise (the image file's, or what
// chmod/chown set through the mount). See Options.Perm.
type PermFunc func(img *qcow2.Image, uid, gid, mode uint32) uint32

// imageStat is the fstat of the image file's descriptor, opened before the
// mount: the daemon never looks up a path to answer a stat (a path under
// its own mount would deadlock it). If even fstat fails, the file shows
// as root's with no permission bits at all.
func imageStat(img *qcow2.Image) *syscall.Stat_t {
	if fi, err := img.Stat(); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			return st
		}
	}
	return &syscall.Stat_t{}
}

// viewMode is the permission bits a file of img shows: mode narrowed by
// perm, without write bits when the file is read-only.
func viewMode(img *qcow2.Image, perm PermFunc, uid, gid, mode uint32, ro bool) uint32 {
	mode &= 0o7777
	if perm != nil {
		mode = perm(img, uid, gid, mode) & mode
	}
	if ro {
		mode &^= 0o222
	}
	return mode
}
