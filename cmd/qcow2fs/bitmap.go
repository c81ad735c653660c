// qcow2fs bitmap: managing an image's persistent dirty bitmaps like
// qemu-img bitmap (add, remove, clear, enable, disable, merge).

package main

import (
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const bitmapUsage = `Usage: qcow2fs bitmap (--add [-g GRANULARITY] | --remove | --clear | --enable | --disable | --merge SOURCE [-b SOURCE_FILE [-F SOURCE_FMT]])... IMAGE BITMAP

Manages the persistent dirty bitmaps of IMAGE like "qemu-img bitmap": the
operations run in the order given, then the bitmaps are stored (new
tables and directory first, the old clusters freed after).

  --add       create BITMAP, empty and enabled (add --disable for a
              disabled one); -g sets its granularity (a power of two,
              at least 512; default the cluster size within 4k..64k)
  --remove    delete BITMAP and free its clusters
  --clear     clear every bit of BITMAP
  --enable    writes set bits of BITMAP (the "auto" flag)
  --disable   writes no longer change BITMAP
  --merge SOURCE
              set in BITMAP every bit set in bitmap SOURCE, of IMAGE or,
              with -b, of the qcow2 image SOURCE_FILE (same disk size)

Writes through a read-write mount keep enabled bitmaps up to date; a
bitmap found "in-use" was not stored after its last change (a crash) and
can only be removed. The image is opened read-write with QEMU's writer
locks: it must not be mounted or open in QEMU.
`

func cmdBitmap(args []string) error {
	fs := newFlagSet("bitmap", bitmapUsage)
	fs.Bool("add", false, "add BITMAP")
	fs.Bool("remove", false, "remove BITMAP")
	fs.Bool("clear", false, "clear BITMAP")
	fs.Bool("enable", false, "enable BITMAP")
	fs.Bool("disable", false, "disable BITMAP")
	merges := fs.StringArray("merge", nil, "merge bitmap `SOURCE` into BITMAP")
	gran := fs.StringP("granularity", "g", "", "granularity of a new bitmap (with --add)")
	srcFile := fs.StringP("source-file", "b", "", "image `FILE` holding the --merge source")
	srcFmt := fs.StringP("source-format", "F", "qcow2", "`FORMAT` of the source file (only qcow2)")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	fs.BoolP("quiet", "q", false, "print nothing on success (accepted for qemu-img compatibility)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("bitmap", *format); err != nil {
		return err
	}
	if *srcFmt != "qcow2" {
		return usagef("bitmap: -F: only qcow2 source files are supported, not %q", *srcFmt)
	}
	// The operations in command-line order (pflag keeps no order).
	var actions []qcow2.BitmapAction
	mi := 0
	for _, a := range args {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") {
			continue
		}
		switch name {
		case "add", "remove", "clear", "enable", "disable":
			actions = append(actions, qcow2.BitmapAction{Kind: name})
		case "merge":
			if mi < len(*merges) {
				actions = append(actions, qcow2.BitmapAction{Kind: "merge", Source: (*merges)[mi], SourceFile: *srcFile})
				mi++
			}
		}
	}
	if len(actions) == 0 {
		return usagef("bitmap: need at least one of --add, --remove, --clear, --enable, --disable, or --merge")
	}
	if fs.Changed("granularity") && !fs.Changed("add") {
		return usagef("bitmap: granularity only supported with --add")
	}
	if fs.Changed("source-file") && len(*merges) == 0 {
		return usagef("bitmap: -b only supported with --merge")
	}
	if fs.NArg() != 2 {
		return usagef("bitmap: need IMAGE and BITMAP (see qcow2fs bitmap --help)")
	}
	var o qcow2.BitmapOptions
	if *gran != "" {
		g, err := units.Parse(*gran)
		if err != nil {
			return usagef("bitmap: -g: %v", err)
		}
		o.Granularity = g
	}
	path := fs.Arg(0)
	if err := qcow2.BitmapUpdate(path, fs.Arg(1), actions, o); err != nil {
		return maintError(path, err, false)
	}
	return nil
}
