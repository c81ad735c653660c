// Package fusefs presents open qcow2 images as flat raw files through FUSE.
//
// The tree is one directory holding one regular file per image ("vm.qcow2"
// → "vm.raw"), one read-only file per internal snapshot ("vm@NAME.raw"),
// optionally one file per partition ("vm-p1.raw") and a read-only text file
// with the image's metadata ("vm.info"). Every FUSE operation on a file
// translates into one call on its *qcow2.Image; this package knows nothing
// of the format itself.
package fusefs

import (
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// Options controls a mount.
type Options struct {
	// ReadOnly mounts read-only: files lose their write bits, opens for
	// writing fail with EROFS and the mount carries "ro". Images opened
	// read-only are served read-only whatever this says.
	ReadOnly bool
	// AllowOther lets users other than the mounter access the files
	// (needs user_allow_other in /etc/fuse.conf for non-root mounters).
	// It implies DefaultPermissions: the files' owners and modes are then
	// the only thing between other users and the images.
	AllowOther bool
	// AllowRoot lets root in besides the mounter, and nobody else: the
	// mount is made with allow_other and the daemon refuses everyone else
	// (the kernel has no such policy; libfuse emulates it the same way).
	AllowRoot bool
	// DefaultPermissions makes the kernel check file modes against the caller.
	DefaultPermissions bool
	// Perm, when set, narrows the permission bits of the files of an image
	// (and of its snapshots, partitions and info file). Every file shows
	// the owner, group and mode of the image file, from an fstat of its
	// descriptor; Perm gets those (or what chmod/chown set through the
	// mount) and returns the bits that may stay. Write bits are dropped
	// besides on read-only files, and every bit but read on info files.
	Perm PermFunc
	// DirectIO opens files with FOPEN_DIRECT_IO: every read and write goes to
	// the daemon, bypassing the kernel page cache for the raw files.
	DirectIO bool
	// WritebackCache lets the kernel keep buffered writes in its page
	// cache and send them later (FUSE_WRITEBACK_CACHE): write(2) returns
	// once the page is dirty. fsync, close and Suspend write them back
	// first. It cannot be combined with Partitions (a write kept in one
	// file's page cache would not show through the others) and means
	// nothing on a read-only mount.
	WritebackCache bool
	// NoSnapshots hides the files of internal snapshots.
	NoSnapshots bool
	// FsName is the mount's source as shown in /proc/mounts; by default the
	// absolute path of the image (comma-joined paths for several images).
	FsName string
	// Partitions adds a file per partition of each image's MBR or GPT
	// partition table: NAME-p1.raw, NAME-p2.raw, ... (numbered as Linux
	// numbers them). The table is read once, at mount time.
	Partitions bool
	// Names, when set, gives the file name stem of each image, in the order
	// of the images ("vm" → vm.raw, vm-p1.raw, vm.info); "" keeps the
	// default, the image's base name without .qcow2/.qcow.
	Names []string
	// InfoText, when set, adds a read-only NAME.info beside each NAME.raw
	// holding what it returns for the image (made anew on each open).
	InfoText func(img *qcow2.Image) []byte
	// Warn receives problems worth telling the user at mount time (an
	// unreadable partition table, ...); nil logs them as warnings.
	Warn func(msg string)
	// URing chooses the transport: URingAuto (FUSE over io_uring when the
	// kernel offers it and we mount as root, else the classic /dev/fuse
	// loop), URingOn (io_uring or fail) or URingOff; "" means the
	// QCOW2FS_URING environment variable, else auto (transport.go).
	URing string
	// Debug logs every FUSE request (go-fuse's debug output).
	Debug bool
	// Log receives error and warning lines; nil means logrus's standard logger.
	Log *logrus.Logger
}

// Limits and timeouts of every mount. The directory never changes while
// mounted, so names can be cached for long; attributes carry st_blocks,
// which changes with writes, so they are cached only briefly.
//
// maxReadAhead asks for 1 MiB, but the kernel caps FUSE readahead at the
// bdi's read_ahead_kb (see docs/PERFORMANCE.md for what that costs).
const (
	maxWrite        = 1 << 20
	maxReadAhead    = 1 << 20
	entryTimeout    = time.Minute
	negativeTimeout = time.Minute
	attrTimeout     = time.Second
	// blockSize is st_blksize: the preferred I/O size reported to programs.
	blockSize = 4096
)

// writeback tells whether the mount asks the kernel for a write-back cache:
// only a writable mount has writes to keep.
func (o Options) writeback() bool { return o.WritebackCache && !o.ReadOnly }

// Conflict reports options that exclude each other, named as mount
// options (Mount refuses them; the CLI calls it for a usage error first).
func (o Options) Conflict() error {
	switch {
	case o.WritebackCache && o.DirectIO:
		return fmt.Errorf("writeback_cache and direct_io exclude each other: direct I/O bypasses the page cache that writeback_cache keeps writes in")
	case o.WritebackCache && o.Partitions:
		return fmt.Errorf("writeback_cache and partitions exclude each other: a write kept in the page cache of one file (vm.raw) would not show in the other files of the disk (vm-p1.raw) until written back")
	}
	return nil
}
