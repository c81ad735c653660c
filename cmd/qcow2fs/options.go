// The mount configuration (resolved to absolute paths and passed to the
// daemon as JSON) and the -o mount options that fill it, fstab's included.

package main

import (
	"fmt"
	"strings"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/internal/units"
)

// mountConfig is everything a mount needs, resolved to absolute paths so
// the daemon (which runs in /) can use it unchanged. The parent passes it
// to the daemon as JSON.
type mountConfig struct {
	Images             []string `json:"images"`
	Mountpoint         string   `json:"mountpoint"`
	FsName             string   `json:"fsname"`
	ReadOnly           bool     `json:"read_only"`
	Foreground         bool     `json:"foreground"`
	AllowOther         bool     `json:"allow_other"`
	AllowRoot          bool     `json:"allow_root"`
	DefaultPermissions bool     `json:"default_permissions"`
	DirectIO           bool     `json:"direct_io"`
	WritebackCache     bool     `json:"writeback_cache,omitempty"`
	URing              string   `json:"uring,omitempty"`
	NoSnapshots        bool     `json:"no_snapshots"`
	NoBacking          bool     `json:"no_backing"`
	Partitions         bool     `json:"partitions"`
	CacheSize          int64    `json:"cache_size"`
	LogFile            string   `json:"log_file"`
	Debug              bool     `json:"debug"`
	// Overlay is the qcow2 file that takes the writes of a mount of one
	// (evidence) image, which it has as its backing file.
	Overlay string `json:"overlay"`
	// Mounted are the images as mounted, set in the daemon while a live
	// external snapshot or commit has Images serve other layers (extsnap.go).
	Mounted []string `json:"mounted,omitempty"`
	// transport is the one the daemon's mount uses (for the run state).
	transport string
}

// ignoredOptions are the generic mount options mount(8), mount.fuse3 and
// fstab pass along that mean nothing here (the FUSE mount always carries
// nodev,nosuid, and access times of a raw view are the image file's).
var ignoredOptions = map[string]bool{
	"rw": true, "defaults": true,
	"dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true,
	"atime": true, "noatime": true, "relatime": true, "strictatime": true,
	"nodiratime": true, "diratime": true, "lazytime": true, "nolazytime": true,
	"_netdev": true, "nofail": true, "noauto": true, "auto": true,
	"user": true, "nouser": true, "users": true, "owner": true, "group": true,
}

// applyMountOptions applies one -o argument: comma-separated options, as
// in fstab. An unknown option is an error naming it, so a typo in fstab
// does not silently mount something else than asked.
func applyMountOptions(cfg *mountConfig, arg string) error {
	for _, opt := range strings.Split(arg, ",") {
		opt = strings.TrimSpace(opt)
		if opt == "" {
			continue
		}
		key, val, hasVal := strings.Cut(opt, "=")
		switch {
		case ignoredOptions[opt]:
		case strings.HasPrefix(key, "x-") || key == "comment":
			// x-systemd.*, x-gvfs-*, comment=...: for other programs.
		case key == "ro" && !hasVal:
			// Read-only wins over any rw: mount(8) adds rw on its own,
			// and a forensic mount must never turn writable by accident.
			cfg.ReadOnly = true
		case key == "allow_other" && !hasVal:
			cfg.AllowOther = true
		case key == "allow_root" && !hasVal:
			cfg.AllowRoot = true
		case key == "partitions" && !hasVal:
			cfg.Partitions = true
		case key == "overlay" && hasVal:
			if val == "" {
				return fmt.Errorf("mount option %q: empty file name", opt)
			}
			cfg.Overlay = val
		case key == "default_permissions" && !hasVal:
			cfg.DefaultPermissions = true
		case key == "direct_io" && !hasVal:
			cfg.DirectIO = true
		case key == "writeback_cache" && !hasVal:
			cfg.WritebackCache = true
		case key == "uring" && hasVal:
			if err := fusefs.CheckURing(val); err != nil {
				return fmt.Errorf("mount option %q: want auto, on or off", opt)
			}
			cfg.URing = val
		case key == "debug" && !hasVal:
			cfg.Debug = true
		case key == "cache_size" && hasVal:
			n, err := units.Parse(val)
			if err != nil {
				return fmt.Errorf("mount option %q: %w", opt, err)
			}
			cfg.CacheSize = n
		case key == "log" && hasVal:
			if val == "" {
				return fmt.Errorf("mount option %q: empty file name", opt)
			}
			cfg.LogFile = val
		case key == "snapshots" && hasVal:
			on, err := parseOnOff(val)
			if err != nil {
				return fmt.Errorf("mount option %q: %w", opt, err)
			}
			cfg.NoSnapshots = !on
		case key == "backing" && hasVal:
			on, err := parseOnOff(val)
			if err != nil {
				return fmt.Errorf("mount option %q: %w", opt, err)
			}
			cfg.NoBacking = !on
		default:
			return fmt.Errorf("unknown mount option %q", opt)
		}
	}
	return nil
}

// checkMountConfig refuses combinations of options that contradict each
// other, before anything is opened.
func checkMountConfig(cfg *mountConfig, nSources int) error {
	switch {
	case cfg.AllowOther && cfg.AllowRoot:
		return usagef("allow_other and allow_root exclude each other (allow_root: only you and root)")
	case cfg.Overlay != "" && cfg.ReadOnly:
		return usagef("--overlay makes the mount writable (the writes go to the overlay); drop --ro / -o ro")
	case cfg.Overlay != "" && nSources != 1:
		return usagef("--overlay takes exactly one image")
	case cfg.Overlay != "" && cfg.NoBacking:
		return usagef("--overlay and --no-backing exclude each other: the image is the overlay's backing file")
	}
	fo := fusefs.Options{WritebackCache: cfg.WritebackCache, DirectIO: cfg.DirectIO, Partitions: cfg.Partitions}
	if err := fo.Conflict(); err != nil {
		return usagef("%v", err)
	}
	return nil
}

func parseOnOff(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "on", "yes", "true", "1":
		return true, nil
	case "off", "no", "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("want on or off, not %q", s)
}
