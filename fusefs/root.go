// rootDir, the mount's one directory: fixed entries with stable inode
// numbers, statfs and its attributes.

package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// rootDir is the mount's only directory. Its entries are fixed at mount
// time; lookups and readdir are served by go-fuse from the children added
// in OnAdd.
type rootDir struct {
	fs.Inode

	files []*imageFile
	infos []*infoFile
	// dir is the host directory that holds the (first) image, opened
	// before the mount (hoststat.go): df on the mount reports its file
	// system's figures, and the root shows its owner and times.
	dir hostDir
	// ro: the mount is read-only; namespace changes get EROFS, not EPERM.
	ro bool
	// health records the images a panic put out of service (guard.go).
	health *healthBook

	// For live operations (live.go): the suspend gate every image request
	// passes, the options and file name stems the tree was built with,
	// the snapshot files, and the next inode number to hand out.
	gate    *gate
	opts    Options
	stems   []string
	snaps   []*snapFile
	nextIno uint64
}

var (
	_ fs.NodeOnAdder   = (*rootDir)(nil)
	_ fs.NodeStatfser  = (*rootDir)(nil)
	_ fs.NodeGetattrer = (*rootDir)(nil)
)

// OnAdd creates one persistent inode per file, with stable inode numbers
// (the root is 1) so tools that remember inodes see the same file.
func (r *rootDir) OnAdd(ctx context.Context) {
	ino := uint64(2)
	for _, f := range r.files {
		ch := r.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
		r.AddChild(f.name, ch, false)
		ino++
	}
	for _, f := range r.infos {
		ch := r.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
		r.AddChild(f.name, ch, false)
		ino++
	}
	r.nextIno = ino
}

func (r *rootDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := r.dir.statfs(&st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

func (r *rootDir) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := r.dir.stat(&st); err == nil {
		out.FromStat(&st)
	}
	out.Ino = 1
	out.Size = 0
	out.Blocks = 0
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.SetTimeout(attrTimeout)
	return 0
}
