// Package fusefs presents open qcow2 images as flat raw files through FUSE.
//
// The tree is one directory holding one regular file per image ("vm.qcow2"
// → "vm.raw") and one read-only file per internal snapshot
// ("vm@NAME.raw"). Every FUSE operation on a file translates into one call
// on its *qcow2.Image; this package knows nothing of the format itself.
package fusefs

import (
	"time"

	"github.com/sirupsen/logrus"
)

// Options controls a mount.
type Options struct {
	// ReadOnly mounts read-only: files are 0444, opens for writing fail with
	// EROFS and the mount carries "ro". Images opened read-only are served
	// read-only whatever this says.
	ReadOnly bool
	// AllowOther lets users other than the mounter access the files
	// (needs user_allow_other in /etc/fuse.conf for non-root mounters).
	AllowOther bool
	// DefaultPermissions makes the kernel check file modes against the caller.
	DefaultPermissions bool
	// DirectIO opens files with FOPEN_DIRECT_IO: every read and write goes to
	// the daemon, bypassing the kernel page cache for the raw files.
	DirectIO bool
	// NoSnapshots hides the files of internal snapshots.
	NoSnapshots bool
	// FsName is the mount's source as shown in /proc/mounts; by default the
	// absolute path of the image (comma-joined paths for several images).
	FsName string
	// Debug logs every FUSE request (go-fuse's debug output).
	Debug bool
	// Log receives error and warning lines; nil means logrus's standard logger.
	Log *logrus.Logger
}

// Limits and timeouts of every mount. The directory never changes while
// mounted, so names can be cached for long; attributes carry st_blocks,
// which changes with writes, so they are cached only briefly.
//
// maxReadAhead: the kernel caps FUSE readahead at the backing device's
// default (read_ahead_kb 128 on this 6.18 kernel, checked in
// /sys/class/bdi/0:N), so asking for 1 MiB changes nothing measurable;
// raising read_ahead_kb of the mount's bdi to 1024 by hand gave roughly
// +20% on a sequential dd of a 512 MiB image (noisy, shared 2-core box).
const (
	maxWrite        = 1 << 20
	maxReadAhead    = 1 << 20
	entryTimeout    = time.Minute
	negativeTimeout = time.Minute
	attrTimeout     = time.Second
	// blockSize is st_blksize: the preferred I/O size reported to programs.
	blockSize = 4096
)
