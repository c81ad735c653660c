// Serving a mount: opening the images, mounting them, serving until
// unmounted (signals ask for an unmount), then flushing and closing; and
// how the outcome is reported, to the terminal or the waiting parent.

package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/internal/access"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// reporter tells whoever started the mount how it went: the terminal in
// the foreground, the waiting parent for a daemon.
type reporter interface {
	warn(msg string)
	ready()
	fail(err error)
}

// serve opens the images, mounts them and serves until unmounted, then
// flushes and closes every image. It returns the exit code.
func serve(cfg *mountConfig, rep reporter) int {
	log := logrus.StandardLogger()
	// Keep the heap near what is live (mostly the L2 cache and in-flight
	// request buffers) rather than letting the GC double it: the daemon
	// sits under loop devices and should stay small. GOMEMLIMIT overrides.
	if os.Getenv("GOMEMLIMIT") == "" {
		cache := cfg.CacheSize
		if cache <= 0 {
			cache = qcow2.DefaultCacheSize
		}
		debug.SetMemoryLimit(cache*int64(max(1, len(cfg.Images))) + 24<<20)
	}

	// A FUSE daemon behind a loop device must not wait on its own writeback
	// in memory reclaim; PR_SET_IO_FLUSHER exempts it (needs
	// CAP_SYS_RESOURCE, so it fails harmlessly for unprivileged users).
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Debugf("prctl(PR_SET_IO_FLUSHER): %v (not permitted here; only matters under a loop device)", err)
	}

	// Signals are caught from here on, before the mount exists: one that
	// arrived between the mount and waitUnmounted used to kill the server
	// by default, leaving the mount behind with nobody to answer it (and a
	// process that dies holding a file of its own mount — go-fuse's poll
	// hack opens one while mounting — hangs in its exit, flushing it).
	// waitUnmounted takes a signal that came early as soon as it runs.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)

	images, names, perm, undo, err := openImages(cfg, rep)
	if err != nil {
		rep.fail(err)
		return exitError
	}
	// The info files name the partition files, which carry the stem the
	// image appears under.
	// (By path: resume reopens the images.)
	// (In tables, which a live external snapshot or commit adds the new
	// layer's path to: extsnap.go.)
	tables := newLiveTables()
	tables.addPerm(images, perm)
	for i, img := range images {
		stem := fusefs.Stem(img.Path())
		if names != nil && names[i] != "" {
			stem = names[i]
		}
		tables.setStem(img.Path(), stem)
	}
	srv, err := fusefs.Mount(cfg.Mountpoint, images, fusefs.Options{
		ReadOnly:           cfg.ReadOnly,
		AllowOther:         cfg.AllowOther,
		AllowRoot:          cfg.AllowRoot,
		DefaultPermissions: cfg.DefaultPermissions,
		DirectIO:           cfg.DirectIO,
		WritebackCache:     cfg.WritebackCache,
		NoSnapshots:        cfg.NoSnapshots,
		Partitions:         cfg.Partitions,
		Perm:               tables.perm,
		Names:              names,
		InfoText:           func(img *qcow2.Image) []byte { return infoText(img, tables.stem(img.Path())) },
		Warn:               rep.warn,
		FsName:             cfg.FsName,
		Debug:              cfg.Debug,
		URing:              cfg.URing,
		Log:                log,
	})
	if err != nil {
		closeImages(images, nil)
		undo()
		rep.fail(err)
		return exitError
	}
	cfg.transport = srv.Transport()
	writeRunState(cfg, false)
	ctl := startControl(cfg, srv, tables, log)
	mode := "read-write"
	switch {
	case cfg.ReadOnly:
		mode = "read-only"
	case cfg.Overlay != "":
		mode = "writes to overlay " + cfg.Overlay
	}
	log.Infof("mounted %s at %s (%s, pid %d, FUSE transport %s)", cfg.FsName, cfg.Mountpoint, mode, os.Getpid(), srv.Transport())
	rep.ready()

	waitUnmounted(srv, sigs, log)
	ctl.stop()

	code := exitOK
	// (None while suspended: they are closed already.)
	if !closeImages(srv.Images(), srv.Failed) {
		code = exitError
	}
	removeRunState(cfg.Mountpoint)
	log.Infof("unmounted %s; images flushed and closed", cfg.Mountpoint)
	for i := range cfg.Mounted {
		if cfg.Mounted[i] != cfg.Images[i] {
			log.Warnf("%s served %s in place of %s (live external snapshot or commit): mount that file to see the disk again", cfg.Mountpoint, cfg.Images[i], cfg.Mounted[i])
		}
	}
	return code
}

// waitUnmounted serves until the mount goes away. SIGINT, SIGTERM and
// SIGQUIT (caught on sigs, since before the mount) ask for an unmount;
// while a file is in use (open, or a loop device attached) the kernel
// refuses, and serving goes on — a lazy unmount would cut off a loop
// device in the middle of its I/O. (Go's own
// answer to SIGQUIT, a goroutine dump and exit, would leave a dead mount
// and the metadata still cached unwritten.)
func waitUnmounted(srv *fusefs.Server, sigs chan os.Signal, log *logrus.Logger) {
	done := make(chan struct{})
	go func() {
		srv.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			// Flushing and closing the images comes next. A signal now
			// (systemd stopping a .mount unit sends SIGTERM to what is
			// left in its cgroup right after umount) must not cut that
			// short and lose the metadata still cached.
			signal.Stop(sigs)
			signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
			return
		case sig := <-sigs:
			if srv.Suspended() {
				// Requests wait in the daemon; they would never be
				// answered once it stopped serving.
				log.Warnf("%v: %s is suspended; resume it first (qcow2fs resume %s); still serving", sig, srv.Mountpoint(), srv.Mountpoint())
				continue
			}
			log.Infof("%v: unmounting %s", sig, srv.Mountpoint())
			if err := srv.Unmount(); err != nil {
				log.Warnf("cannot unmount %s: %v; a file in it is still in use (open, or attached to a loop device: see losetup -a); still serving",
					srv.Mountpoint(), daemon.OneLine(err.Error()))
			}
		}
	}
}

// openImages opens every image of the mount; on failure it closes those
// already open. names gives the file name stem of each image when it is not
// the image's own (an overlay shows the evidence's name); perm narrows the
// permissions their files show to what the files behind them allow (see
// accessGuard); undo removes what opening created (a new overlay) and is
// for a mount that then fails.
func openImages(cfg *mountConfig, rep reporter) (images []*qcow2.Image, names []string, perm fusefs.PermFunc, undo func(), err error) {
	sources := map[string]*access.Sources{} // image path → the files behind it
	perm = func(img *qcow2.Image, uid, gid, mode uint32) uint32 {
		if s := sources[img.Path()]; s != nil {
			return s.Mode(uid, gid, mode)
		}
		return 0
	}
	opts := qcow2.OpenOptions{
		ReadOnly:  cfg.ReadOnly,
		NoBacking: cfg.NoBacking,
		// Untrusted images: no file named inside the image is opened, the
		// external data file no more than the backing file.
		NoDataFile: cfg.NoBacking,
		CacheSize:  cfg.CacheSize,
		Warn:       rep.warn,
	}
	if cfg.Overlay != "" {
		// The evidence is the source: a symbolic link to it counts from
		// the overlay's backing file down.
		guard := newAccessGuard(cfg.Images[0], 1)
		opts.CheckFile = guard.check
		img, cleanup, err := openOverlay(cfg.Overlay, cfg.Images[0], opts)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		sources[img.Path()] = guard.sources
		return []*qcow2.Image{img}, []string{fusefs.Stem(cfg.Images[0])}, perm, cleanup, nil
	}
	for _, path := range cfg.Images {
		guard := newAccessGuard(path, 0)
		opts.CheckFile = guard.check
		img, err := qcow2.Open(path, opts)
		if err != nil {
			closeImages(images, nil)
			return nil, nil, nil, nil, openError(path, err)
		}
		sources[img.Path()] = guard.sources
		images = append(images, img)
	}
	return images, nil, perm, func() {}, nil
}

// openError makes sure the message names the image (the qcow2 package's
// format errors do already).
func openError(path string, err error) error {
	var fe *qcow2.FormatError
	var le *qcow2.LockError
	if errors.As(err, &fe) || errors.As(err, &le) {
		return err
	}
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return fmt.Errorf("open %s: %w", path, pe.Err)
	}
	return err
}

// closeImages flushes and closes images, logging failures; it reports
// whether everything went well. An image a panic put out of service
// (failed) is left alone: flushing or closing it could wait for ever on a
// lock the panic left held, and its metadata may be half-changed. Its file
// is released when the daemon exits, as after a crash.
func closeImages(images []*qcow2.Image, failed func(*qcow2.Image) bool) bool {
	ok := true
	for _, img := range images {
		if failed != nil && failed(img) {
			logrus.Errorf("%s: not flushed or closed: out of service since a panic (see above); released when the daemon exits, like after a crash", img.Path())
			ok = false
			continue
		}
		if err := img.Flush(); err != nil {
			logrus.Errorf("flush %s: %v", img.Path(), err)
			ok = false
		}
		if err := img.Close(); err != nil {
			logrus.Errorf("close %s: %v", img.Path(), err)
			ok = false
		}
	}
	return ok
}

// foregroundReporter logs warnings to stderr (or the log file) and keeps
// a failure to be printed the usual way ("qcow2fs: <message>"). verdict
// runs once the mount is ready or has failed (it releases the mount locks).
type foregroundReporter struct {
	err     error
	verdict func()
}

func (r *foregroundReporter) warn(msg string) { logrus.Warn(msg) }
func (r *foregroundReporter) ready()          { r.verdict() }
func (r *foregroundReporter) fail(err error)  { r.err = err; r.verdict() }

// serveForeground serves in this process, attached to the terminal;
// verdict runs once the mount is ready or has failed.
func serveForeground(cfg *mountConfig, verdict func()) error {
	closeLog, err := setupLogging(cfg, false)
	if err != nil {
		return err
	}
	defer closeLog()
	rep := &foregroundReporter{verdict: verdict}
	if code := serve(cfg, rep); code != exitOK {
		if rep.err != nil {
			return rep.err
		}
		return &exitCode{code}
	}
	return nil
}
