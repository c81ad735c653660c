// The passthrough's nodes: a root directory holding one file, served by
// pread and pwrite on one shared descriptor (no FUSE passthrough on purpose).

package main

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// dir is the mount's root: one directory holding the one file.
type dir struct {
	fs.Inode
	file *rawFile
	name string
}

var _ fs.NodeOnAdder = (*dir)(nil)

func (d *dir) OnAdd(ctx context.Context) {
	ch := d.NewPersistentInode(ctx, d.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	d.AddChild(d.name, ch, false)
}

// rawFile serves the host file through one shared descriptor. Like
// qcow2fs's image file it has no file handles and no lock: pread and
// pwrite at explicit offsets are safe to run in parallel.
//
// It deliberately does not use fs.LoopbackFile: that type offers the
// kernel a backing file (FUSE passthrough, Linux 6.9+), after which reads
// and writes bypass this server altogether and the "ceiling" would no
// longer measure FUSE at all.
type rawFile struct {
	fs.Inode
	fd       int
	directIO bool
}

var (
	_ fs.NodeOpener    = (*rawFile)(nil)
	_ fs.NodeReader    = (*rawFile)(nil)
	_ fs.NodeWriter    = (*rawFile)(nil)
	_ fs.NodeFlusher   = (*rawFile)(nil)
	_ fs.NodeFsyncer   = (*rawFile)(nil)
	_ fs.NodeGetattrer = (*rawFile)(nil)
	_ fs.NodeSetattrer = (*rawFile)(nil)
	_ fs.NodeAllocater = (*rawFile)(nil)
)

func (f *rawFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	var fuseFlags uint32
	// Same rule as qcow2fs: O_DIRECT openers get FOPEN_DIRECT_IO with
	// parallel direct writes, so the ceiling measures the same FUSE path.
	if f.directIO || flags&syscall.O_DIRECT != 0 {
		fuseFlags |= fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return nil, fuseFlags, 0
}

// Read copies into go-fuse's buffer, as qcow2fs does for an allocated
// cluster, so the ceiling pays the same copy.
func (f *rawFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := unix.Pread(f.fd, dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *rawFile) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(f.fd, data, off)
	if err != nil {
		return uint32(max(n, 0)), fs.ToErrno(err)
	}
	return uint32(n), 0
}

// Flush (every close) does nothing: the host page cache holds the data
// and fsync asks for durability explicitly.
func (f *rawFile) Flush(ctx context.Context, _ fs.FileHandle) syscall.Errno { return 0 }

func (f *rawFile) Fsync(ctx context.Context, _ fs.FileHandle, flags uint32) syscall.Errno {
	return fs.ToErrno(unix.Fdatasync(f.fd))
}

func (f *rawFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&st)
	out.Ino = 2
	out.SetTimeout(attrTimeout)
	return 0
}

// Setattr accepts only what cannot change the disk: like a block device,
// the file keeps its size.
func (f *rawFile) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		var st syscall.Stat_t
		if err := syscall.Fstat(f.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		if int64(sz) != st.Size {
			return syscall.EPERM
		}
	}
	return f.Getattr(ctx, nil, out)
}

// Allocate passes fallocate(2) through, so discards (mkfs, fstrim through
// a loop device) punch holes in the host file.
func (f *rawFile) Allocate(ctx context.Context, _ fs.FileHandle, off, length uint64, mode uint32) syscall.Errno {
	return fs.ToErrno(unix.Fallocate(f.fd, mode, int64(off), int64(length)))
}
