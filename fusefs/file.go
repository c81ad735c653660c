// imageFile, the raw view of an image, a snapshot or a partition: read,
// write, flush and fsync, attributes, lseek SEEK_DATA/SEEK_HOLE and
// fallocate, each going straight to the image with no per-open state.

package fusefs

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// imageFile is the raw view of one image (or of one internal snapshot), or
// of a window of it: one partition, for --partitions. It holds no per-open
// state: every operation goes straight to the image, whose methods are safe
// for concurrent use, so requests run in parallel.
type imageFile struct {
	fs.Inode

	img      *qcow2.Image
	name     string
	ro       bool // read-only mount, read-only image, or snapshot view
	directIO bool
	log      logrus.FieldLogger

	// The file shows bytes [base, base+length) of the virtual disk; whole
	// is set for the full disk (base 0, length the virtual size).
	base, length int64
	whole        bool

	// siblings are the files of the same image, whose cached pages a
	// write through this one invalidates (coherence.go); opened says the
	// kernel may hold pages of this file.
	siblings *siblings
	opened   openedFlag

	// health is shared by every file of the image: a panic in a request
	// puts the image out of service (guard.go).
	health *imageHealth

	// writeGen counts completed modifications; flushedGen is the count the
	// last successful flush covered (set under flushMu, read without it).
	// close() and fsync() only pay for an fdatasync when something was
	// written since; when nothing was, they answer at once, even while
	// the mount is suspended (Suspend flushed everything). flushMu
	// serialises flushes, so an fsync that finds another flush running
	// waits for it rather than returning before the data is durable.
	writeGen   atomic.Uint64
	flushMu    sync.Mutex
	flushedGen atomic.Uint64

	// perm narrows the permission bits (Options.Perm); nil keeps them.
	perm PermFunc

	// gate is the mount's suspend gate (gate.go, live.go): every request
	// that touches img passes it. img is swapped (reopened at resume) only
	// while the gate is closed and drained; nil means the file's snapshot
	// was deleted while the mount was suspended.
	gate *gate

	// attrMu guards what chmod/chown/touch changed: kept in memory only
	// (there is nowhere in a qcow2 image to store them). Unset fields
	// follow the image file.
	attrMu sync.Mutex
	mode   *uint32 // permission bits
	uid    *uint32
	gid    *uint32
	atime  *time.Time
	mtime  *time.Time
}

var (
	_ fs.NodeOpener    = (*imageFile)(nil)
	_ fs.NodeReader    = (*imageFile)(nil)
	_ fs.NodeWriter    = (*imageFile)(nil)
	_ fs.NodeFlusher   = (*imageFile)(nil)
	_ fs.NodeFsyncer   = (*imageFile)(nil)
	_ fs.NodeGetattrer = (*imageFile)(nil)
	_ fs.NodeSetattrer = (*imageFile)(nil)
	_ fs.NodeLseeker   = (*imageFile)(nil)
	_ fs.NodeAllocater = (*imageFile)(nil)
)

func newImageFile(img *qcow2.Image, name string, opts *Options) *imageFile {
	f := newWindowFile(img, name, 0, img.Size(), opts)
	f.whole = true
	return f
}

// newWindowFile makes a file showing length bytes of the disk from base
// (a partition).
func newWindowFile(img *qcow2.Image, name string, base, length int64, opts *Options) *imageFile {
	return &imageFile{
		img: img, name: name, ro: opts.ReadOnly || img.ReadOnly(), directIO: opts.DirectIO,
		log: opts.Log, perm: opts.Perm, base: base, length: length,
	}
}

// size is the file's size: the virtual disk's, or the window's.
func (f *imageFile) size() int64 { return f.length }

// Open refuses write access to read-only files. There is no file handle:
// all state lives in the node.
func (f *imageFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.ro && (flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0) {
		return nil, 0, syscall.EROFS
	}
	f.opened.Store(true)
	var fuseFlags uint32
	if f.directIO || flags&syscall.O_DIRECT != 0 {
		// Direct I/O: the mount asked for it, or this opener bypasses the
		// page cache anyway (fio --direct=1, losetup --direct-io=on).
		// FOPEN_DIRECT_IO with parallel direct writes lets the kernel send
		// concurrent writes to one file in parallel instead of serialising
		// them on the inode lock; the image does not need that lock.
		fuseFlags |= fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	} else {
		// Keep the pages cached by earlier opens. The mount controls
		// the kernel's data cache explicitly (no invalidation on mtime,
		// ExplicitDataCacheControl in mount.go): every change to the bytes
		// of this file comes through this daemon, and each one the
		// kernel cannot see for itself is invalidated by name — writes
		// through a sibling file (coherence.go) and whatever changed
		// while suspended (resume, live.go).
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	return nil, fuseFlags, 0
}

// Read fills dest straight from the image; go-fuse owns dest, so no copy or
// buffer pool is needed. A read crossing the end of the disk is short.
func (f *imageFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (_ fuse.ReadResult, errno syscall.Errno) {
	if !f.health.ok() {
		return nil, outOfService
	}
	if e := f.in(ctx); e != 0 {
		return nil, e
	}
	defer f.gate.leave()
	defer f.guard("read", off, &errno)
	size := f.size()
	if off >= size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	if rest := size - off; int64(len(dest)) > rest {
		dest = dest[:rest]
	}
	n, err := f.img.ReadAt(dest, f.base+off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, f.toErrno(err, "read", f.base+off, int64(len(dest)))
	}
	// io.EOF: the end of the disk came first; a short read says so.
	return fuse.ReadResultData(dest[:n]), 0
}

// Write stores data at off. A write crossing the end of the virtual disk is
// cut short there and one starting at or past it fails with ENOSPC, as on a
// block device: the disk never grows.
func (f *imageFile) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (_ uint32, errno syscall.Errno) {
	if f.ro {
		return 0, syscall.EROFS
	}
	if !f.health.ok() {
		return 0, outOfService
	}
	if e := f.in(ctx); e != 0 {
		return 0, e
	}
	defer f.gate.leave()
	defer f.guard("write", off, &errno)
	if len(data) == 0 {
		return 0, 0
	}
	size := f.size()
	if off >= size {
		return 0, syscall.ENOSPC
	}
	if rest := size - off; int64(len(data)) > rest {
		data = data[:rest]
	}
	n, err := f.img.WriteAt(data, f.base+off)
	// Even a failed write may have changed metadata: let the next flush run.
	f.writeGen.Add(1)
	// And data: the other files of the disk drop their cached pages.
	f.changed(f.base+off, int64(len(data)))
	if err != nil {
		return uint32(n), f.toErrno(err, "write", f.base+off, int64(len(data)))
	}
	return uint32(n), 0
}

// Flush runs on every close(2) of a descriptor: make what was written
// durable then, so that closing the file is a safe point.
func (f *imageFile) Flush(ctx context.Context, _ fs.FileHandle) syscall.Errno {
	return f.flush(ctx, "flush")
}

// Fsync makes every completed write durable (metadata in dependency order,
// then fdatasync, inside Image.Flush).
func (f *imageFile) Fsync(ctx context.Context, _ fs.FileHandle, flags uint32) syscall.Errno {
	return f.flush(ctx, "fsync")
}

func (f *imageFile) flush(ctx context.Context, op string) (errno syscall.Errno) {
	if f.ro {
		return 0
	}
	if !f.health.ok() {
		// What was written may not be durable, and never will be.
		return outOfService
	}
	// Nothing written since the last successful flush: durable already.
	// Answered without the gate, so that a close while suspended (every
	// exec of a process holding the file open closes it) does not wait
	// for the resume.
	if f.flushedGen.Load() >= f.writeGen.Load() {
		return 0
	}
	if e := f.in(ctx); e != 0 {
		return e
	}
	defer f.gate.leave()
	defer f.guard(op, 0, &errno)
	gen := f.writeGen.Load() // every write completed before this call
	f.flushMu.Lock()
	defer f.flushMu.Unlock()
	if f.flushedGen.Load() >= gen {
		return 0
	}
	if err := f.img.Flush(); err != nil {
		return f.toErrno(err, op, 0, 0)
	}
	f.flushedGen.Store(gen)
	return 0
}

// Getattr reports the virtual size, the host space the image really holds,
// and owner and times of the image file unless changed through this mount.
func (f *imageFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if e := f.in(ctx); e != 0 {
		return e
	}
	defer f.gate.leave()
	f.fillAttr(&out.Attr)
	out.SetTimeout(attrTimeout)
	return 0
}

func (f *imageFile) fillAttr(a *fuse.Attr) {
	st := imageStat(f.img)
	a.Atime, a.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	a.Mtime, a.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	a.Ctime, a.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
	a.Size = uint64(f.size())
	held := f.img.HostBytes()
	if !f.whole {
		// A partition's own allocation would take a walk over its part of
		// the block status on every stat; the image's, capped at the
		// partition's size, is a cheap upper bound.
		held = min(held, f.size())
	}
	a.Blocks = uint64(held+511) / 512
	a.Blksize = blockSize
	a.Nlink = 1

	f.attrMu.Lock()
	defer f.attrMu.Unlock()
	uid, gid, mode := st.Uid, st.Gid, st.Mode&0o777
	if f.uid != nil {
		uid = *f.uid
	}
	if f.gid != nil {
		gid = *f.gid
	}
	if f.mode != nil {
		mode = *f.mode
	}
	a.Uid, a.Gid = uid, gid
	a.Mode = syscall.S_IFREG | viewMode(f.img, f.perm, uid, gid, mode, f.ro)
	if f.atime != nil {
		a.Atime, a.Atimensec = uint64(f.atime.Unix()), uint32(f.atime.Nanosecond())
	}
	if f.mtime != nil {
		a.Mtime, a.Mtimensec = uint64(f.mtime.Unix()), uint32(f.mtime.Nanosecond())
	}
}

// Setattr keeps mode, owner and time changes in memory and refuses size
// changes: the virtual size is changed offline, not under a mounted file.
// Setting the size it already has is accepted (some tools do that).
func (f *imageFile) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if e := f.in(ctx); e != 0 {
		return e
	}
	defer f.gate.leave()
	if sz, ok := in.GetSize(); ok && int64(sz) != f.size() {
		f.log.WithField("image", f.img.Path()).Warnf(
			"refused to change the size of %s to %d bytes while mounted; unmount and run `qcow2fs resize`", f.name, sz)
		return syscall.EPERM
	}
	f.attrMu.Lock()
	if m, ok := in.GetMode(); ok {
		// Kept as asked; what shows is still narrowed like the image's
		// own mode, so chmod cannot grant more than the image does.
		m &= 0o7777
		f.mode = &m
	}
	if uid, ok := in.GetUID(); ok {
		f.uid = &uid
	}
	if gid, ok := in.GetGID(); ok {
		f.gid = &gid
	}
	if t, ok := in.GetATime(); ok {
		f.atime = &t
	}
	if t, ok := in.GetMTime(); ok {
		f.mtime = &t
	}
	f.attrMu.Unlock()
	f.fillAttr(&out.Attr)
	out.SetTimeout(attrTimeout)
	return 0
}

// Whence values of lseek(2) that the kernel forwards to the file system.
const (
	seekData = 3
	seekHole = 4
)

// Lseek answers SEEK_DATA and SEEK_HOLE from the image's block status, so
// that cp --sparse, tar -S and qemu-img see the holes.
func (f *imageFile) Lseek(ctx context.Context, _ fs.FileHandle, off uint64, whence uint32) (_ uint64, errno syscall.Errno) {
	if !f.health.ok() {
		return 0, outOfService
	}
	if e := f.in(ctx); e != 0 {
		return 0, e
	}
	defer f.gate.leave()
	defer f.guard("lseek", int64(off), &errno)
	size := f.size()
	if off >= uint64(size) {
		return 0, syscall.ENXIO
	}
	end := f.base + size // on the disk
	switch whence {
	case seekData:
		pos, err := f.img.SeekData(f.base + int64(off))
		if err != nil {
			return 0, f.toErrno(err, "seek data", f.base+int64(off), 0)
		}
		if pos < 0 || pos >= end {
			return 0, syscall.ENXIO
		}
		return uint64(pos - f.base), 0
	case seekHole:
		pos, err := f.img.SeekHole(f.base + int64(off))
		if err != nil {
			return 0, f.toErrno(err, "seek hole", f.base+int64(off), 0)
		}
		// The end of the window is a hole boundary like the end of a file.
		return uint64(min(pos, end) - f.base), 0
	default:
		return 0, syscall.EINVAL
	}
}

// fallocate(2) mode bits.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Allocate implements fallocate(2): punching a hole discards, zeroing a
// range writes zeroes (as flags where the format can), and plain
// preallocation inside the disk is a no-op since the disk never grows.
func (f *imageFile) Allocate(ctx context.Context, _ fs.FileHandle, off, length uint64, mode uint32) (errno syscall.Errno) {
	if f.ro {
		return syscall.EROFS
	}
	if !f.health.ok() {
		return outOfService
	}
	if e := f.in(ctx); e != 0 {
		return e
	}
	defer f.gate.leave()
	defer f.guard("fallocate", int64(off), &errno)
	size := uint64(f.size())
	end := off + length
	if end < off {
		return syscall.EFBIG
	}
	keepSize := mode&fallocKeepSize != 0
	if end > size && !keepSize {
		// Would grow the file, which a virtual disk cannot do while mounted.
		return syscall.ENOSPC
	}
	// With KEEP_SIZE, only the part inside the disk matters.
	end = min(end, size)
	if off >= end {
		return 0
	}
	n := int64(end - off)
	at := f.base + int64(off) // on the disk
	var err error
	var op string
	switch mode &^ fallocKeepSize {
	case 0:
		return 0
	case fallocPunchHole:
		if !keepSize { // the kernel enforces this too
			return syscall.EOPNOTSUPP
		}
		op, err = "discard", f.img.Discard(at, n)
	case fallocZeroRange:
		op, err = "write zeroes", f.img.WriteZeroes(at, n)
	default:
		return syscall.EOPNOTSUPP
	}
	f.writeGen.Add(1)
	f.changed(at, n)
	return f.toErrno(err, op, at, n)
}

// in lets a request on f through the suspend gate; on success the caller
// defers f.gate.leave(). A file whose snapshot went away while the mount
// was suspended answers ESTALE.
func (f *imageFile) in(ctx context.Context) syscall.Errno {
	if e := f.gate.enter(ctx); e != 0 {
		return e
	}
	if f.img == nil {
		f.gate.leave()
		return syscall.ESTALE
	}
	return 0
}
