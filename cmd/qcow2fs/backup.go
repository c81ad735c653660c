// qcow2fs backup: a full or bitmap-based incremental backup of an image's
// guest content into a new qcow2 image (qcow2.Backup).

package main

import (
	"github.com/qcow2fs/qcow2fs/qcow2"
)

const backupUsage = `Usage: qcow2fs backup [--bitmap NAME [--full] [--clear]] [-b BACKING] [-p] IMAGE TARGET

Copies the guest content of IMAGE into TARGET, a new qcow2 image (it must
not exist) with IMAGE's cluster size and virtual size.

Full backup (no --bitmap, or --bitmap NAME --full): only allocated data is
read and written; ranges that read as zeros stay unallocated. TARGET has
no backing file.

Incremental backup (--bitmap NAME -b BACKING): only the clusters the
persistent dirty bitmap NAME marks dirty (rounded out to clusters) are
copied; dirty ranges that read as zeros become zero clusters. BACKING, the
previous backup of the chain, becomes TARGET's backing file (format qcow2;
a relative name is relative to TARGET's directory, as qemu-img stores it).
"qemu-img convert -O raw TARGET disk.raw" then restores the disk as it was.

  --bitmap NAME  the persistent bitmap that tracks changes (qcow2fs bitmap
                 --add, or QEMU's); a disabled bitmap is used as it is, one
                 found "in-use" (not stored after a crash) is refused
  --full         with --bitmap: copy everything (start a chain)
  --clear        clear the bitmap once TARGET is complete and synced (its
                 directory too), so a failed backup loses no dirty bits;
                 IMAGE is then held with the writer locks throughout
  -b BACKING     TARGET's backing file (only for an incremental backup)
  -c             write TARGET's data clusters compressed, with IMAGE's
                 compression type (zlib or zstd; TARGET is created with it);
                 clusters that do not compress are written as they are,
                 zero clusters stay zero clusters
  -p             progress bar when stderr is a terminal

A chain starts with "backup --bitmap NAME --full --clear IMAGE full.qcow2"
and continues with "backup --bitmap NAME --clear -b full.qcow2 IMAGE
inc1.qcow2". IMAGE is only read (reader locks, unless --clear): it must not
be mounted read-write or open for writing in QEMU.
`

func cmdBackup(args []string) error {
	fs := newFlagSet("backup", backupUsage)
	bitmap := fs.String("bitmap", "", "persistent bitmap `NAME` of the dirty clusters")
	full := fs.Bool("full", false, "copy everything even with --bitmap")
	clearBitmap := fs.Bool("clear", false, "clear the bitmap once TARGET is durable")
	backing := fs.StringP("backing", "b", "", "`BACKING` file of TARGET (the previous backup)")
	compress := fs.BoolP("compress", "c", false, "write the data clusters compressed")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar when stderr is a terminal")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("backup", *format); err != nil {
		return err
	}
	if fs.Changed("bitmap") && *bitmap == "" {
		return usagef("backup: --bitmap needs a NAME")
	}
	if *full && *bitmap == "" {
		return usagef("backup: --full goes with --bitmap (without it a backup is always full)")
	}
	if *clearBitmap && *bitmap == "" {
		return usagef("backup: --clear needs --bitmap NAME")
	}
	if fs.Changed("backing") && (*bitmap == "" || *full) {
		return usagef("backup: -b is for an incremental backup (--bitmap NAME without --full); a full backup stands alone")
	}
	if *bitmap != "" && !*full && *backing == "" {
		return usagef("backup: an incremental backup (--bitmap) needs -b BACKING, the previous backup (or --full to start a chain)")
	}
	if fs.NArg() != 2 {
		return usagef("backup: need IMAGE and TARGET (see qcow2fs backup --help)")
	}
	path, target := fs.Arg(0), fs.Arg(1)
	p := newProgress(*prog, "backing up")
	err := qcow2.Backup(path, target, qcow2.BackupOptions{
		Bitmap: *bitmap, Full: *full, Clear: *clearBitmap, BackingFile: *backing, Compress: *compress,
		Progress: p.update,
	})
	if err != nil {
		p.abort()
		return maintError(path, err, false)
	}
	p.finish()
	return nil
}
