// The kernel knows two access policies for a FUSE mount: only the mounting
// user (the default), or everyone (allow_other). libfuse's allow_root, "the
// mounting user and root", is not a kernel policy: libfuse mounts with
// allow_other and answers EACCES itself to requests from anyone else. We do
// the same here, below the node tree, so that no operation (lookup, stat,
// open, readdir, statfs, xattrs, ...) can be forgotten.
//
// Requests on a file handle that was already opened (read, write, flush,
// release, ...) pass: the opener was checked at open, and a descriptor
// handed on (to a loop device, or through a Unix socket) keeps working, as
// with any file system.

package fusefs

import (
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// mountOwner is the user allow_root lets in besides root: the one who
// mounts (a variable so tests can pretend to be someone else).
var mountOwner = func() uint32 { return uint32(os.Getuid()) }

// onlyOwnerAndRoot wraps the node file system and refuses requests from
// callers other than uid 0 and owner.
type onlyOwnerAndRoot struct {
	fuse.RawFileSystem
	owner uint32
}

func (o *onlyOwnerAndRoot) denied(h *fuse.InHeader) bool {
	uid := h.Caller.Uid
	return uid != 0 && uid != o.owner
}

func (o *onlyOwnerAndRoot) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Lookup(cancel, h, name, out)
}

func (o *onlyOwnerAndRoot) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.GetAttr(cancel, in, out)
}

func (o *onlyOwnerAndRoot) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Statx(cancel, in, out)
}

func (o *onlyOwnerAndRoot) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.SetAttr(cancel, in, out)
}

func (o *onlyOwnerAndRoot) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Access(cancel, in)
}

func (o *onlyOwnerAndRoot) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Open(cancel, in, out)
}

func (o *onlyOwnerAndRoot) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.OpenDir(cancel, in, out)
}

func (o *onlyOwnerAndRoot) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.StatFs(cancel, h, out)
}

func (o *onlyOwnerAndRoot) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if o.denied(h) {
		return 0, fuse.EACCES
	}
	return o.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (o *onlyOwnerAndRoot) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if o.denied(h) {
		return 0, fuse.EACCES
	}
	return o.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (o *onlyOwnerAndRoot) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (o *onlyOwnerAndRoot) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

// The tree is fixed, so the operations that would change it fail anyway;
// refusing them here keeps the answer the same for every forbidden caller.

func (o *onlyOwnerAndRoot) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Create(cancel, in, name, out)
}

func (o *onlyOwnerAndRoot) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Mknod(cancel, in, name, out)
}

func (o *onlyOwnerAndRoot) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (o *onlyOwnerAndRoot) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Unlink(cancel, h, name)
}

func (o *onlyOwnerAndRoot) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Rmdir(cancel, h, name)
}

func (o *onlyOwnerAndRoot) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (o *onlyOwnerAndRoot) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Link(cancel, in, name, out)
}

func (o *onlyOwnerAndRoot) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	if o.denied(h) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (o *onlyOwnerAndRoot) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if o.denied(h) {
		return nil, fuse.EACCES
	}
	return o.RawFileSystem.Readlink(cancel, h)
}

func (o *onlyOwnerAndRoot) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	if o.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return o.RawFileSystem.Tmpfile(cancel, in, out)
}
