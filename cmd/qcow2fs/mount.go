package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const mountUsage = `Usage: qcow2fs mount [OPTIONS] IMAGE... MOUNTPOINT
       qcow2fs SOURCE MOUNTPOINT [-o OPTIONS]     (fstab / mount.fuse3 form)

Mounts each IMAGE (or every qcow2 image in a directory given instead) at
MOUNTPOINT: vm.qcow2 appears as vm.raw, and each internal snapshot as the
read-only vm@NAME.raw. Returns once the mount is ready and leaves a daemon
serving it in the background (unless --foreground). Unmount with
"qcow2fs unmount MOUNTPOINT", umount or fusermount3 -u.

-o takes comma-separated options, as in fstab: ro, rw, allow_other,
default_permissions, direct_io, cache_size=SIZE, log=FILE, snapshots=off,
backing=off, debug. Generic options (dev, suid, exec, the atime family,
_netdev, nofail, noauto, auto, user, users, x-systemd.*, comment=...) are
accepted and ignored.
`

// cmdMount implements "qcow2fs mount" and the mount.fuse3 form.
func cmdMount(args []string) error {
	fs := newFlagSet("mount", mountUsage)
	var cfg mountConfig
	var opts []string
	var cacheSize string
	fs.BoolVar(&cfg.ReadOnly, "ro", false, "mount read-only: no write of any kind reaches the image files")
	fs.BoolVarP(&cfg.Foreground, "foreground", "f", false, "stay in the foreground and log to stderr")
	fs.StringArrayVarP(&opts, "options", "o", nil, "comma-separated mount `OPTIONS` (see above)")
	fs.BoolVar(&cfg.AllowOther, "allow-other", false, "let other users access the files")
	fs.BoolVar(&cfg.DirectIO, "direct-io", false, "bypass the kernel page cache for the raw files")
	fs.BoolVar(&cfg.NoSnapshots, "no-snapshots", false, "do not show internal snapshots as files")
	fs.BoolVar(&cfg.NoBacking, "no-backing", false, "refuse images that name a backing file (for untrusted images)")
	fs.StringVar(&cacheSize, "cache-size", "", "metadata cache `SIZE` per image, e.g. 64M (default 32M)")
	fs.StringVar(&cfg.LogFile, "log", "", "log to `FILE` instead of syslog")
	fs.BoolVarP(&cfg.Debug, "debug", "d", false, "log every FUSE request")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cacheSize != "" {
		n, err := parseSize(cacheSize)
		if err != nil {
			return usagef("--cache-size: %v", err)
		}
		cfg.CacheSize = n
	}
	for _, o := range opts {
		if err := applyMountOptions(&cfg, o); err != nil {
			return &usageError{err.Error()}
		}
	}
	pos := fs.Args()
	if len(pos) < 2 {
		return usagef("mount: need at least one IMAGE and a MOUNTPOINT (see qcow2fs mount --help)")
	}
	return mount(&cfg, pos[:len(pos)-1], pos[len(pos)-1], false)
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
	cfg.Images, cfg.FsName = images, fsName
	if cfg.Mountpoint, err = resolveMountpoint(mountpoint); err != nil {
		return err
	}
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
		return serveForeground(cfg)
	}
	return startDaemon(cfg)
}
