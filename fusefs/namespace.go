// The directory's entries are fixed for the life of the mount: one file
// per image, snapshot, partition and info text. Every operation that would
// add, remove or rename an entry is refused — EPERM, or EROFS on a
// read-only mount. Left unimplemented, go-fuse answers some of them with
// success: rm of vm.raw "worked" and the file vanished from the listing
// until the next mount (and losetup -l showed the loop device's file as
// "(deleted)"), though nothing was deleted.

package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

var (
	_ fs.NodeUnlinker  = (*rootDir)(nil)
	_ fs.NodeRmdirer   = (*rootDir)(nil)
	_ fs.NodeRenamer   = (*rootDir)(nil)
	_ fs.NodeMkdirer   = (*rootDir)(nil)
	_ fs.NodeMknoder   = (*rootDir)(nil)
	_ fs.NodeCreater   = (*rootDir)(nil)
	_ fs.NodeLinker    = (*rootDir)(nil)
	_ fs.NodeSymlinker = (*rootDir)(nil)
)

// refuseChange is the errno of every namespace change.
func (r *rootDir) refuseChange() syscall.Errno {
	if r.ro {
		return syscall.EROFS
	}
	return syscall.EPERM
}

func (r *rootDir) Unlink(ctx context.Context, name string) syscall.Errno {
	return r.refuseChange()
}

func (r *rootDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	return r.refuseChange()
}

func (r *rootDir) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return r.refuseChange()
}

func (r *rootDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, r.refuseChange()
}

func (r *rootDir) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, r.refuseChange()
}

func (r *rootDir) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, r.refuseChange()
}

func (r *rootDir) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, r.refuseChange()
}

func (r *rootDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, r.refuseChange()
}
