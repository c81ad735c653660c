// Server and Mount: building the tree of files from the images and their
// snapshots and partitions, the go-fuse mount options, serving, unmounting
// and waiting.

package fusefs

import (
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/internal/fuseuring"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// Server is a mounted qcow2fs file system.
type Server struct {
	fuse       *fuse.Server
	mountpoint string
	// views are the snapshot images this package opened; the caller's
	// images stay the caller's to flush and close.
	views     []*qcow2.Image
	logPipe   io.Closer // feeds go-fuse's log lines into logrus
	dir       hostDir   // the root's host directory, closed with the views
	health    *healthBook
	closeOnce sync.Once

	// Live operations (live.go). liveMu serialises suspend and resume;
	// images are the caller's images while they are open, which suspend
	// closes and resume replaces.
	root      *rootDir
	liveMu    sync.Mutex
	images    []*qcow2.Image
	suspended bool
	// files are the image files (device and inode) the images had when
	// suspended: resume refuses a path that now leads to another file.
	files []os.FileInfo
	// writeback: the kernel may hold written pages that have not reached
	// us yet (Options.WritebackCache); suspend has them sent first.
	writeback bool

	// transport is TransportClassic or TransportURing (transport.go);
	// ownMount is set when we mounted with a descriptor of our own, which
	// go-fuse cannot unmount.
	transport string
	uring     *fuseuring.Transport
	ownMount  bool
}

// Mount mounts images at mountpoint and starts serving in the background.
// It returns once the kernel has the mount. The caller keeps ownership of
// images: after Wait returns, it flushes and closes them.
func Mount(mountpoint string, images []*qcow2.Image, opts Options) (*Server, error) {
	if len(images) == 0 {
		return nil, fmt.Errorf("no image to mount")
	}
	if err := opts.Conflict(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	root, views, err := buildTree(images, opts)
	if err != nil {
		return nil, err
	}
	srv := &Server{mountpoint: mountpoint, views: views, dir: hostDir{-1}, health: root.health, root: root,
		images: append([]*qcow2.Image(nil), images...), writeback: opts.writeback()}
	// Opened before the mount, which may cover this very directory.
	if root.dir, err = openHostDir(filepath.Dir(images[0].Path())); err != nil {
		srv.closeViews()
		return nil, err
	}
	srv.dir = root.dir
	fsOpts, logPipe := fuseOptions(images, opts)
	srv.logPipe = logPipe
	// What fs.Mount does, with room to wrap the node file system.
	var raw fuse.RawFileSystem = fs.NewNodeFS(root, fsOpts)
	if opts.AllowRoot {
		raw = &onlyOwnerAndRoot{RawFileSystem: raw, owner: mountOwner()}
	}
	mode, err := uringMode(opts.URing)
	if err != nil {
		srv.closeViews()
		return nil, err
	}
	srv.transport = TransportClassic
	if mode != URingOff {
		why := uringUsable()
		switch {
		case why == "":
			if err := srv.mountURing(raw, mountpoint, fsOpts.MountOptions, mode == URingOn, opts); err != nil {
				srv.closeViews()
				return nil, err
			}
			if srv.fuse != nil {
				return srv, nil
			}
			// auto, and io_uring failed after all: the mount is gone,
			// mount again the classic way.
		case mode == URingOn:
			srv.closeViews()
			return nil, fmt.Errorf("mount %s: uring=on: FUSE over io_uring %s", mountpoint, why)
		default:
			opts.Log.Debugf("FUSE over io_uring not used: %s", why)
		}
	}
	fsrv, err := fuse.NewServer(raw, mountpoint, &fsOpts.MountOptions)
	if err != nil {
		srv.closeViews()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	go fsrv.Serve()
	if err := fsrv.WaitMount(); err != nil {
		// The kernel never answered INIT: take the mount down again.
		fsrv.Unmount()
		srv.closeViews()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	srv.fuse = fsrv
	return srv, nil
}

// mountURing mounts with a /dev/fuse descriptor of our own, lets go-fuse
// answer INIT (offering FUSE_OVER_IO_URING) and serve /dev/fuse, and
// starts the ring queues. On failure with strict unset it leaves nothing
// mounted and srv.fuse nil, for the caller to mount the classic way.
func (srv *Server) mountURing(raw fuse.RawFileSystem, mountpoint string, mopts fuse.MountOptions, strict bool, opts Options) error {
	fail := func(err error) error {
		if strict {
			return fmt.Errorf("mount %s: uring=on: %w", mountpoint, err)
		}
		opts.Log.Warnf("FUSE over io_uring not used: %v", err)
		return nil
	}
	mopts.ExtraCapabilities |= fuse.CAP_OVER_IO_URING
	fd, err := mountFD(mountpoint, &mopts)
	if err != nil {
		return fail(err)
	}
	// go-fuse serves a descriptor it is given as the mount point
	// /dev/fd/N; it must not mount again.
	mopts.DirectMount, mopts.DirectMountStrict = false, false
	fsrv, err := fuse.NewServer(raw, fmt.Sprintf("/dev/fd/%d", fd), &mopts)
	if err != nil {
		syscall.Close(fd)
		unmountFD(mountpoint)
		return fail(err)
	}
	go fsrv.Serve()
	srv.fuse = fsrv
	srv.ownMount = true
	tr, err := startURing(fsrv, raw, &mopts, fd, opts.Log.Warnf)
	if err != nil {
		if strict {
			// Requests that queued for the ring go to /dev/fuse
			// once a REGISTER failed, and the unmount needs none.
			fuseuring.Refuse(fd)
			srv.Unmount()
			srv.fuse.Wait()
			srv.fuse = nil
			return fmt.Errorf("mount %s: uring=on: %w", mountpoint, err)
		}
		// A failed REGISTER switched the kernel back to /dev/fuse; make
		// sure of it in case none was sent, and keep serving there.
		fuseuring.Refuse(fd)
		opts.Log.Warnf("FUSE over io_uring not used: %v", err)
		pollHack(mountpoint)
		return nil
	}
	srv.uring = tr
	srv.transport = TransportURing
	pollHack(mountpoint)
	opts.Log.Infof("FUSE transport: io_uring (%d ring entries per CPU)", uringTune.depth)
	return nil
}

// Transport tells how the kernel's requests reach the daemon:
// TransportClassic or TransportURing.
func (s *Server) Transport() string { return s.transport }

// Mountpoint returns the directory the file system is mounted on.
func (s *Server) Mountpoint() string { return s.mountpoint }

// Unmount asks the kernel to unmount. It fails (EBUSY) while files are open.
func (s *Server) Unmount() error {
	if s.ownMount {
		return unmountFD(s.mountpoint)
	}
	return s.fuse.Unmount()
}

// Wait blocks until the file system is unmounted (by Unmount, umount(8) or
// fusermount3 -u) and every request is answered, then releases the
// snapshot views. After it returns the caller may close the images.
func (s *Server) Wait() {
	s.fuse.Wait()
	if s.uring != nil {
		s.uring.Wait()
	}
	s.closeViews()
}

// Failed reports whether a panic put img out of service (guard.go): the
// caller must then neither flush nor close it — either may wait for ever
// on a lock the panic left held — and leave its file to the process's
// exit, as after a crash.
func (s *Server) Failed(img *qcow2.Image) bool { return s.health.failed(img) }

func (s *Server) closeViews() {
	s.closeOnce.Do(func() {
		for _, v := range s.views {
			if s.Failed(v) {
				continue // its lock may be held for ever (guard.go)
			}
			v.Close()
		}
		s.dir.close()
		if s.logPipe != nil {
			s.logPipe.Close()
		}
	})
}

// buildTree makes the root directory with one file per image and per
// snapshot (and per partition, and the info files, when asked). A name used
// twice is an error: the user must rename an image rather than have one
// silently hide another.
func buildTree(images []*qcow2.Image, opts Options) (*rootDir, []*qcow2.Image, error) {
	if opts.Names != nil && len(opts.Names) != len(images) {
		return nil, nil, fmt.Errorf("%d names for %d images", len(opts.Names), len(images))
	}
	if opts.Log == nil {
		opts.Log = logrus.StandardLogger()
	}
	if opts.Warn == nil {
		opts.Warn = func(msg string) { opts.Log.Warn(msg) }
	}
	root := &rootDir{dir: hostDir{-1}, ro: opts.ReadOnly, health: &healthBook{}, gate: newGate(), opts: opts}
	health := root.health
	var views []*qcow2.Image
	fail := func(err error) (*rootDir, []*qcow2.Image, error) {
		for _, v := range views {
			v.Close()
		}
		return nil, nil, err
	}
	owner := map[string]string{} // file name → image path
	claim := func(img *qcow2.Image, name string) error {
		if err := checkFileName(name); err != nil {
			return fmt.Errorf("%s: %w", img.Path(), err)
		}
		if other, ok := owner[name]; ok {
			if other == img.Path() {
				return fmt.Errorf("%s: two of its files would both appear as %s (rename a snapshot, or mount with snapshots=off)", img.Path(), name)
			}
			return fmt.Errorf("%s and %s would both appear as %s; rename one of them", other, img.Path(), name)
		}
		owner[name] = img.Path()
		return nil
	}
	add := func(img *qcow2.Image, name string) *imageFile {
		f := newImageFile(img, name, &opts)
		f.health = health.of(img)
		f.gate = root.gate
		root.files = append(root.files, f)
		return f
	}
	stems := make([]string, len(images))
	for i, img := range images {
		stems[i] = stem(img.Path())
		if opts.Names != nil && opts.Names[i] != "" {
			stems[i] = opts.Names[i]
		}
	}
	root.stems = stems
	wholes := make([]*imageFile, len(images))
	for i, img := range images {
		if err := claim(img, stems[i]+".raw"); err != nil {
			return fail(err)
		}
		wholes[i] = add(img, stems[i]+".raw")
	}
	if opts.Partitions {
		for i, img := range images {
			var sib *siblings
			for _, p := range readPartitions(img, opts.Warn) {
				name := partitionName(stems[i], p.Number)
				if err := claim(img, name); err != nil {
					return fail(err)
				}
				f := newWindowFile(img, name, p.Start, p.Size, &opts)
				f.health = health.of(img)
				f.gate = root.gate
				root.files = append(root.files, f)
				if sib == nil {
					sib = &siblings{}
					sib.join(wholes[i])
				}
				sib.join(f)
			}
		}
	}
	if opts.InfoText != nil {
		for i, img := range images {
			name := stems[i] + ".info"
			if err := claim(img, name); err != nil {
				return fail(err)
			}
			inf := &infoFile{name: name, img: img, perm: opts.Perm, health: health.of(img), gate: root.gate}
			// The image as it is now: resume reopens it (live.go).
			inf.text = func() []byte { return opts.InfoText(inf.img) }
			root.infos = append(root.infos, inf)
		}
	}
	if opts.NoSnapshots {
		return root, nil, nil
	}
	for i, img := range images {
		// A table may hold 65535 bad entries: warn about the first few,
		// then count.
		const maxWarnings = 16
		hidden := 0
		for _, sn := range img.Snapshots() {
			hide := func(why string) {
				if hidden++; hidden <= maxWarnings {
					opts.Warn(fmt.Sprintf("%s: snapshot %s (ID %s) not shown: %s", img.Path(), imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), why))
				}
			}
			if sn.Problem != "" {
				hide(sn.Problem)
				continue
			}
			name, shortened, err := SnapshotFile(stems[i], sn.Name)
			if err != nil {
				hide(err.Error())
				continue
			}
			v, err := img.OpenSnapshot(sn.Name)
			if err != nil {
				hide(err.Error())
				continue
			}
			views = append(views, v)
			if err := claim(v, name); err != nil {
				return fail(err)
			}
			root.snaps = append(root.snaps, &snapFile{base: i, id: sn.ID, name: sn.Name, date: snapDate(sn), file: add(v, name)})
			if shortened {
				opts.Log.Infof("%s: snapshot %s (ID %s) appears as %s (its name is too long for a file name)", img.Path(), imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), imgtext.Quote(name))
			}
		}
		if hidden > maxWarnings {
			opts.Warn(fmt.Sprintf("%s: %d more snapshots not shown (qcow2fs info lists them all, with the reasons)", img.Path(), hidden-maxWarnings))
		}
	}
	return root, views, nil
}

// fuseOptions turns our options into go-fuse's.
func fuseOptions(images []*qcow2.Image, opts Options) (*fs.Options, io.Closer) {
	fsName := opts.FsName
	if fsName == "" {
		paths := make([]string, len(images))
		for i, img := range images {
			paths[i] = img.Path()
		}
		fsName = strings.Join(paths, ",")
	}
	// nodev/nosuid: device nodes and setuid bits make no sense on raw disk
	// files. go-fuse turns these into mount flags for a direct mount and
	// passes them on to fusermount3 otherwise.
	mopts := []string{"nodev", "nosuid"}
	flags := uintptr(syscall.MS_NODEV | syscall.MS_NOSUID)
	if opts.ReadOnly {
		// A direct mount passes "ro" to the kernel as a string, which only
		// marks the superblock; the flag makes the mount itself read-only
		// (what /proc/mounts shows and what mount(8) checks).
		mopts = append(mopts, "ro", "noexec")
		flags |= syscall.MS_RDONLY | syscall.MS_NOEXEC
	}
	allowOther := opts.AllowOther || opts.AllowRoot
	// With allow_other the files' owners and modes are the access policy,
	// so the kernel must enforce them. allow_root lets in only root and
	// the mounter, who opened the images themselves, and needs no check.
	if opts.DefaultPermissions || opts.AllowOther {
		mopts = append(mopts, "default_permissions")
	}
	// go-fuse's own diagnostics (and, with Debug, its request trace) go
	// to our log rather than to a stderr that a daemon no longer has.
	level := logrus.WarnLevel
	if opts.Debug {
		level = logrus.InfoLevel
	}
	pipe := opts.Log.WriterLevel(level)
	goLog := log.New(pipe, "go-fuse: ", 0)
	caps := uint64(fuse.CAP_DIRECT_IO_ALLOW_MMAP)
	if opts.writeback() {
		// Buffered writes stay in the page cache until the kernel writes
		// them back (or fsync, close, Suspend make it): see
		// Options.WritebackCache.
		caps |= fuse.CAP_WRITEBACK_CACHE
	}
	entry, neg, attr := entryTimeout, negativeTimeout, attrTimeout
	return &fs.Options{
		MountOptions: fuse.MountOptions{
			Name:         "qcow2fs",
			FsName:       fsName,
			AllowOther:   allowOther,
			Options:      mopts,
			MaxWrite:     maxWrite,
			MaxReadAhead: maxReadAhead,
			// As root, mount(2) directly rather than through fusermount3
			// (go-fuse falls back to fusermount3 when that fails).
			DirectMount:      os.Geteuid() == 0,
			DirectMountFlags: flags,
			Debug:            opts.Debug,
			Logger:           goLog,
			// The files have no extended attributes.
			DisableXAttrs: true,
			// Every read answers with bytes in memory (ReadResultData),
			// never a descriptor to splice from; go-fuse would still write
			// each reply's header into a pipe, find nothing to splice,
			// drain the pipe (splice + FIONREAD ioctl) and writev again.
			// Off, a read is answered with one writev
			// (integration's TestClassicReadSyscalls counts them).
			DisableSplice: true,
			// The kernel must not drop a file's cached pages whenever its
			// mtime moves. The mtime shown is the image file's, which
			// every write (ours, to the image) moves, so with automatic
			// invalidation each attribute refresh threw away the whole
			// page cache of a busy file: a loop device without direct
			// I/O re-read everything through the daemon.
			// The daemon is the only writer of the image while mounted
			// (the image is locked) and invalidates what the kernel cannot
			// know: changes through a sibling file and while suspended.
			ExplicitDataCacheControl: true,
			// Shared mmap of FOPEN_DIRECT_IO files (--direct-io, O_DIRECT
			// opens), which the kernel otherwise refuses with ENODEV.
			// Granted only where the kernel offers it (Linux 6.6+).
			ExtraCapabilities: caps,
			// A panic outside the image handlers (which recover
			// themselves): EIO, logged, still serving.
			PanicHandler: panicHandler(opts.Log),
		},
		EntryTimeout:    &entry,
		NegativeTimeout: &neg,
		AttrTimeout:     &attr,
		Logger:          goLog,
	}, pipe
}
