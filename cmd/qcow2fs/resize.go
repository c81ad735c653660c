// qcow2fs resize: changing an image's virtual size as qemu-img resize does
// (shrinking only with --shrink).

package main

import (
	"fmt"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const resizeUsage = `Usage: qcow2fs resize [--shrink] [-q] IMAGE [+|-]SIZE

Changes the virtual size of IMAGE, as "qemu-img resize" does: SIZE is the
new size, or with + or - a change of the current one (10G, +512M, -1G;
suffixes K, M, G, T, P, E are powers of 1024). The size must be a multiple
of 512. Growing keeps everything; shrinking needs --shrink and frees every
cluster past the new end (the data there is lost). The partition table and
file systems inside the disk are not touched: grow them afterwards, or
shrink them before.
`

func cmdResize(args []string) error {
	fs := newFlagSet("resize", resizeUsage)
	shrink := fs.Bool("shrink", false, "allow shrinking (data past the new end is lost)")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	// "-1G" is a size, not a flag.
	if err := parseFlags(fs, negativeSizeArgs(args)); err != nil {
		return err
	}
	if err := checkFormatFlag("resize", *format); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("resize: need IMAGE and SIZE (see qcow2fs resize --help)")
	}
	path := fs.Arg(0)
	sign, n, err := units.ParseChange(fs.Arg(1))
	if err != nil {
		return usagef("resize: %v", err)
	}
	size := n
	if sign != 0 {
		// The current size, read without locks: Resize below takes the
		// writer locks and refuses an image in use anyway.
		img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true, ForceShare: true, NoBacking: true})
		if err != nil {
			return maintError(path, err, false)
		}
		cur := img.Size()
		img.Close()
		size = cur + int64(sign)*n
		if sign > 0 && size < cur {
			return fmt.Errorf("%s: size %d + %d is too large", path, cur, n)
		}
		if size < 0 {
			return fmt.Errorf("%s: cannot shrink a %d-byte image by %d bytes", path, cur, n)
		}
	}
	if err := qcow2.Resize(path, size, *shrink); err != nil {
		return maintError(path, err, false)
	}
	if !*quiet {
		fmt.Println("Image resized.")
	}
	return nil
}
