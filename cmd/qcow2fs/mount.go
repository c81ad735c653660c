// qcow2fs mount and the mount.qcow2fs helper form mount(8) calls: argument
// parsing, the checks done before anything is mounted, and the choice of
// serving in the foreground or in a daemon.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/internal/units"
)

const mountUsage = `Usage: qcow2fs mount [OPTIONS] IMAGE... MOUNTPOINT
       qcow2fs SOURCE MOUNTPOINT [-o OPTIONS]     (fstab / mount.fuse3 form)

Mounts each IMAGE (or every qcow2 image in a directory given instead) at
MOUNTPOINT: vm.qcow2 appears as vm.raw, each internal snapshot as the
read-only vm@NAME.raw, and vm.info holds what "qcow2fs info" says about
the image. Returns once the mount is ready and leaves a daemon serving it
in the background (unless --foreground). Unmount with
"qcow2fs unmount MOUNTPOINT", umount or fusermount3 -u.

Every option is also an -o key, so a whole command line fits in fstab:

  flag                    -o key              meaning
  --ro                    ro                  read-only: no write of any kind to any file of the
                                              image's chain; no write bits; mount ro,nodev,nosuid,noexec
  (default)               rw                  read-write
  --overlay FILE          overlay=FILE        writes go to the qcow2 overlay FILE (created when
                                              missing, with IMAGE's owner and mode) whose backing
                                              file is IMAGE; IMAGE stays read-only
  --no-backing            backing=off         show the top layer alone; open no file the image
                                              names (backing file, data file); an image
                                              with a backing file then needs --ro
  --no-snapshots          snapshots=off       no vm@NAME.raw files
  --partitions            partitions          also vm-p1.raw, vm-p2.raw, ...: one file per MBR/GPT
                                              partition (numbered as Linux numbers them)
  --cache-size SIZE       cache_size=SIZE     metadata cache per image, e.g. 64M (default 32M)
  --direct-io             direct_io           bypass the kernel page cache for the raw files
  --writeback-cache       writeback_cache     keep buffered writes in the kernel's page cache and
                                              send them later, in bulk (much faster buffered
                                              writes, e.g. a loop device without direct I/O);
                                              see "Write-back cache" below
  --uring MODE            uring=MODE          FUSE transport: auto (default: FUSE over io_uring
                                              when the kernel has it switched on and root
                                              mounts, else the classic /dev/fuse loop), on
                                              (io_uring or fail) or off; the environment
                                              variable QCOW2FS_URING sets the default
  --allow-other           allow_other         let every user in, as the files' owners and modes
                                              allow (implies default_permissions; non-root
                                              mounters need user_allow_other in /etc/fuse.conf)
  --allow-root            allow_root          let root in besides you, nobody else
  --default-permissions   default_permissions let the kernel check file modes
  --log FILE              log=FILE            log to FILE instead of syslog
  -d, --debug             debug               log every FUSE request
  -f, --foreground        (none)              stay attached, log to stderr (an fstab mount
                                              must return, so this has no -o key)

The files carry the image file's owner, group and mode, narrowed to what
the whole backing chain grants; an image only gets the backing and data
files its owner could open (see docs/SECURITY.md). An empty option value
is an error.

Write-back cache: by default a buffered write reaches the image before
write(2) returns. With writeback_cache the kernel keeps it in the page
cache and sends it later, many pages at a time; fsync, close, suspend,
snapshot, commit and unmount send it first, so nothing flushed is lost.
The price: a write past the end of the disk fails only at fsync or close
(ENOSPC), the size shown stays grown until the file is forgotten, and a
daemon killed before the write-back loses what was written since the last
fsync, as a power cut would.

Generic mount options (dev, suid, exec and their no* forms, the atime
family, _netdev, nofail, noauto, auto, user, users, owner, group, defaults,
x-systemd.*, x-*, comment=...) are accepted and ignored. Unknown options are
an error naming the option.
`

// cmdMount implements "qcow2fs mount" and the mount.fuse3 form.
func cmdMount(args []string) error {
	cfg, pos, err := parseMountArgs(args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("mount: need at least one IMAGE and a MOUNTPOINT (see qcow2fs mount --help)")
	}
	return mount(cfg, pos[:len(pos)-1], pos[len(pos)-1], false)
}

// parseMountArgs reads mount's flags and -o options; it returns the
// configuration and the positional arguments.
func parseMountArgs(args []string) (*mountConfig, []string, error) {
	fs := newFlagSet("mount", mountUsage)
	var cfg mountConfig
	var opts []string
	var cacheSize string
	fs.BoolVar(&cfg.ReadOnly, "ro", false, "mount read-only: no write of any kind reaches the image files")
	fs.BoolVarP(&cfg.Foreground, "foreground", "f", false, "stay in the foreground and log to stderr")
	fs.StringArrayVarP(&opts, "options", "o", nil, "comma-separated mount `OPTIONS` (see above)")
	fs.StringVar(&cfg.Overlay, "overlay", "", "send writes to the qcow2 overlay `FILE` (created when missing); the image stays read-only")
	fs.BoolVar(&cfg.NoBacking, "no-backing", false, "show the top layer alone and open no file the image names (untrusted images)")
	fs.BoolVar(&cfg.NoSnapshots, "no-snapshots", false, "do not show internal snapshots as files")
	fs.BoolVar(&cfg.Partitions, "partitions", false, "also show each MBR/GPT partition as NAME-pN.raw")
	fs.StringVar(&cacheSize, "cache-size", "", "metadata cache `SIZE` per image, e.g. 64M (default 32M)")
	fs.BoolVar(&cfg.DirectIO, "direct-io", false, "bypass the kernel page cache for the raw files")
	fs.BoolVar(&cfg.WritebackCache, "writeback-cache", false, "keep buffered writes in the kernel's page cache and send them later")
	fs.StringVar(&cfg.URing, "uring", "", "FUSE transport `MODE`: auto, on (FUSE over io_uring or fail) or off (default auto, or $QCOW2FS_URING)")
	fs.BoolVar(&cfg.AllowOther, "allow-other", false, "let other users access the files")
	fs.BoolVar(&cfg.AllowRoot, "allow-root", false, "let root access the files besides you, nobody else")
	fs.BoolVar(&cfg.DefaultPermissions, "default-permissions", false, "let the kernel check file modes against the caller")
	fs.StringVar(&cfg.LogFile, "log", "", "log to `FILE` instead of syslog")
	fs.BoolVarP(&cfg.Debug, "debug", "d", false, "log every FUSE request")
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, err
	}
	if cacheSize != "" {
		n, err := units.Parse(cacheSize)
		if err != nil {
			return nil, nil, usagef("--cache-size: %v", err)
		}
		cfg.CacheSize = n
	}
	for _, o := range opts {
		if err := applyMountOptions(&cfg, o); err != nil {
			return nil, nil, &usageError{err.Error()}
		}
	}
	if err := fusefs.CheckURing(cfg.URing); err != nil {
		return nil, nil, usagef("%v", err)
	}
	return &cfg, fs.Args(), nil
}

// cmdMountHelper is the interface mount(8) uses for /sbin/mount.TYPE
// helpers: "mount.qcow2fs SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]".
// Its -f means "fake" (do everything but mount), not --foreground.
func cmdMountHelper(args []string) error {
	fs := newFlagSet("mount.qcow2fs", "Usage: mount.qcow2fs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]\n")
	var opts []string
	var typ string
	var sloppy, fake, noMtab, verbose bool
	fs.StringArrayVarP(&opts, "options", "o", nil, "comma-separated mount `OPTIONS`")
	fs.StringVarP(&typ, "type", "t", "", "file system `TYPE` (fuse.qcow2fs or qcow2fs)")
	fs.BoolVarP(&sloppy, "sloppy", "s", false, "ignore unknown mount options")
	fs.BoolVarP(&fake, "fake", "f", false, "check everything but do not mount")
	fs.BoolVarP(&noMtab, "no-mtab", "n", false, "ignored (there is no mtab to update)")
	fs.BoolVarP(&verbose, "verbose", "v", false, "ignored")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if typ != "" && typ != "qcow2fs" && typ != fsType && typ != "fuse" {
		return usagef("mount.qcow2fs: unexpected file system type %q", typ)
	}
	var cfg mountConfig
	for _, o := range opts {
		for _, one := range strings.Split(o, ",") {
			if err := applyMountOptions(&cfg, one); err != nil {
				if !sloppy {
					return &usageError{err.Error()}
				}
				fmt.Fprintf(os.Stderr, "qcow2fs: warning: %v (ignored: sloppy mount)\n", err)
			}
		}
	}
	pos := fs.Args()
	if len(pos) != 2 {
		return usagef("mount.qcow2fs: need SOURCE and MOUNTPOINT")
	}
	return mount(&cfg, pos[:1], pos[1], fake)
}

// mount checks everything that can be checked here, then serves the mount
// in this process (--foreground) or in a daemon it waits for.
func mount(cfg *mountConfig, sources []string, mountpoint string, fake bool) error {
	images, fsName, err := resolveSources(sources)
	if err != nil {
		return err
	}
	if err := checkMountConfig(cfg, len(images)); err != nil {
		return err
	}
	if err := checkUserMount(cfg); err != nil {
		return err
	}
	cfg.Images, cfg.FsName = images, fsName
	if cfg.Overlay != "" {
		if cfg.Overlay, err = resolveOverlay(cfg.Overlay, images[0]); err != nil {
			return err
		}
	}
	if cfg.Mountpoint, err = resolveMountpoint(mountpoint); err != nil {
		return err
	}
	// From the check that nothing is mounted until the mount is ready (or
	// has failed), no other mount of this mount point or these images may
	// pass the same check (mountlock.go).
	lockFiles := images
	if cfg.Overlay != "" {
		lockFiles = append([]string{cfg.Overlay}, images...)
	}
	locks, err := lockMount(cfg.Mountpoint, lockFiles)
	if err != nil {
		return err
	}
	defer locks.release()
	if err := checkNotMounted(cfg.Mountpoint, images, fsName); err != nil {
		return err
	}
	if cfg.LogFile != "" {
		if cfg.LogFile, err = filepath.Abs(cfg.LogFile); err != nil {
			return err
		}
	}
	if fake {
		return nil
	}
	if cfg.Foreground {
		return serveForeground(cfg, locks.release)
	}
	return startDaemon(cfg)
}
