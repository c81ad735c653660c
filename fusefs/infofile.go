// infoFile, the read-only NAME.info beside NAME.raw: what `qcow2fs info`
// prints, made anew on each open.

package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// infoFile is the read-only NAME.info beside NAME.raw: the image's metadata
// as text (what `qcow2fs info` prints). The text is made anew on every open
// (dirty flag, disk usage and the like change while mounted), and each open
// reads the text it started with.
type infoFile struct {
	fs.Inode

	name string
	text func() []byte
	// The owner, group and mode (read bits only) of the image: whoever may
	// read the image may read this.
	img    *qcow2.Image
	perm   PermFunc
	health *imageHealth // the image's (guard.go)
	gate   *gate        // the mount's suspend gate (gate.go); img is swapped behind it
}

var (
	_ fs.NodeOpener    = (*infoFile)(nil)
	_ fs.NodeGetattrer = (*infoFile)(nil)
	_ fs.NodeReader    = (*infoFile)(nil)
)

// infoHandle holds the text one open reads.
type infoHandle struct{ text []byte }

func (f *infoFile) Open(ctx context.Context, flags uint32) (_ fs.FileHandle, _ uint32, errno syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	if !f.health.ok() {
		return nil, 0, outOfService
	}
	if e := f.gate.enter(ctx); e != 0 {
		return nil, 0, e
	}
	defer f.gate.leave()
	defer f.guard("open", &errno)
	// Direct I/O: the kernel must not cut reads at a size it cached from an
	// earlier, shorter text, nor serve an old text from its page cache.
	return &infoHandle{text: f.text()}, fuse.FOPEN_DIRECT_IO, 0
}

func (f *infoFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*infoHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= int64(len(h.text)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(int64(len(h.text)), off+int64(len(dest)))
	return fuse.ReadResultData(h.text[off:end]), 0
}

func (f *infoFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) (errno syscall.Errno) {
	if e := f.gate.enter(ctx); e != 0 {
		return e
	}
	defer f.gate.leave()
	defer f.guard("getattr", &errno)
	st := imageStat(f.img)
	out.FromStat(st)
	n := 0
	if h, ok := fh.(*infoHandle); ok {
		n = len(h.text)
	} else if f.health.ok() {
		n = len(f.text())
	}
	out.Size = uint64(n)
	out.Blocks = uint64(n+511) / 512
	out.Blksize = blockSize
	out.Mode = syscall.S_IFREG | viewMode(f.img, f.perm, st.Uid, st.Gid, st.Mode&0o777, true)&0o444
	out.Nlink = 1
	out.Ino = f.StableAttr().Ino
	out.SetTimeout(attrTimeout)
	return 0
}
