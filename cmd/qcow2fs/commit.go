// qcow2fs commit and rebase: offline commit of an image into its backing
// file, and rebase (safe, or -u rewriting only the name) onto another.

package main

import (
	"fmt"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const commitUsage = `Usage: qcow2fs commit [-p] [-q] [--timeout DURATION] IMAGE

Writes the data IMAGE holds itself into its backing file, then empties
IMAGE so that it reads through to the backing file again (as "qemu-img
commit" does). The guest sees the same disk through IMAGE afterwards; the
backing file now holds that content too (and so changes for every other
image built on it). Internal snapshots of IMAGE are kept.

On an image mounted read-write (the overlay of a live external snapshot,
say) commit is live, the active-layer commit: between requests the
mount's daemon suspends the mount (the requests in flight drain, the
images are flushed and closed), merges IMAGE into its backing file (the
backing file is written and flushed before IMAGE is emptied: a crash at
any point leaves a chain that reads the same), then switches the mount's
file (same name) back to the backing file, read-write, and resumes. An
overlay the mount's own live external snapshot created is then removed;
any other is left, empty. The I/O on the mount waits while the data is
copied: the longer the more the overlay holds. --timeout bounds the wait
for the requests in flight (default 10s). A backing file that is raw, or of
another virtual size, is not switched to: the mount goes on with IMAGE,
empty, reading through.

On a suspended mount (qcow2fs suspend) commit runs offline as on an
unmounted image (the suspend released the locks); qcow2fs resume then
reopens IMAGE, empty, which shows the same disk.
`

const rebaseUsage = `Usage: qcow2fs rebase [-u] [-p] -b NEW [-F FMT] IMAGE

Changes the backing file of IMAGE to NEW (-b "" removes it), as "qemu-img
rebase" does. A relative NEW is relative to IMAGE's directory.

Safe mode (default): the guest content stays the same. Wherever IMAGE does
not hold a range itself and the old backing chain's content differs from
NEW's, the old content is first copied into IMAGE. The old backing chain
must still be readable.

Unsafe mode (-u): only the name in the header changes (for a backing file
that was moved or renamed, with the same content).
`

func cmdCommit(args []string) error {
	fs := newFlagSet("commit", commitUsage)
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar when stderr is a terminal")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	timeout := fs.Duration("timeout", defaultSuspendTimeout, "a mounted IMAGE: give up when its requests in flight have not drained after `DURATION`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("commit", *format); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("commit: need exactly one IMAGE (see qcow2fs commit --help)")
	}
	path := fs.Arg(0)
	p := newProgress(*prog, "committing")
	if err := qcow2.Commit(path, qcow2.MaintenanceOptions{Progress: p.update}); err != nil {
		p.abort()
		if isLockError(err) {
			// Mounted: the mount's daemon commits between requests.
			if handled, lerr := liveCommit(path, *timeout, *quiet); handled {
				return lerr
			}
		}
		return maintError(path, err, false)
	}
	p.finish()
	if !*quiet {
		fmt.Println("Image committed.")
	}
	return nil
}

func cmdRebase(args []string) error {
	fs := newFlagSet("rebase", rebaseUsage)
	backing := fs.StringP("backing", "b", "", "new backing `FILE` (\"\" for none)")
	fs.SetAnnotation("backing", allowEmpty, []string{"yes"})
	backingFmt := fs.StringP("backing-format", "F", "", "its `FORMAT`: qcow2 or raw (default: probed)")
	unsafe := fs.BoolP("unsafe", "u", false, "only change the name; copy nothing")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar when stderr is a terminal")
	fs.BoolP("quiet", "q", false, "print nothing on success (accepted for qemu-img compatibility)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("rebase", *format); err != nil {
		return err
	}
	if !fs.Changed("backing") {
		return usagef("rebase: need -b NEW (-b \"\" to remove the backing file)")
	}
	if *backing == "" && *backingFmt != "" {
		return usagef("rebase: -F makes no sense without a backing file")
	}
	if fs.NArg() != 1 {
		return usagef("rebase: need exactly one IMAGE (see qcow2fs rebase --help)")
	}
	path := fs.Arg(0)
	p := newProgress(*prog, "rebasing")
	if err := qcow2.Rebase(path, *backing, *backingFmt, *unsafe, qcow2.MaintenanceOptions{Progress: p.update}); err != nil {
		p.abort()
		return maintError(path, err, false)
	}
	p.finish()
	return nil
}
