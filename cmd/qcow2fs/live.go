// qcow2fs suspend and resume: the live operations of a mount, through its
// daemon's control socket (control.go).

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

func init() {
	commands["suspend"] = cmdSuspend
	commands["resume"] = cmdResume
}

const suspendUsage = `Usage: qcow2fs suspend [--timeout DURATION] MOUNTPOINT

Suspends a mount without unmounting it: new requests on its files wait in
the daemon (they do not fail), the requests in flight drain, the images are
flushed and closed, and their locks released. Then qemu-img and the qcow2fs
maintenance commands may use the images; "qcow2fs resume MOUNTPOINT" reopens
them and lets the waiting requests go on. A loop device or a file system on
the mount's files sees its I/O stall meanwhile (freeze the file system first,
fsfreeze -f, when what it shows must be consistent).

--timeout bounds the draining (default 10s): when requests are still in
flight then, the mount is not suspended, the requests go on, and suspend
fails.
`

const resumeUsage = `Usage: qcow2fs resume MOUNTPOINT

Resumes a suspended mount: reopens its images, re-reads their metadata
(snapshot files appear and disappear as the snapshots did meanwhile), then
lets the waiting requests go on. An image that cannot be opened, or whose
virtual size changed, fails the resume: the mount stays suspended rather
than serve wrong data (put it right and resume again, or unmount).
`

func cmdSuspend(args []string) error {
	fs := newFlagSet("suspend", suspendUsage)
	timeout := fs.Duration("timeout", defaultSuspendTimeout, "give up (and resume) when requests are still in flight after `DURATION`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("suspend: need exactly one MOUNTPOINT (see qcow2fs suspend --help)")
	}
	if *timeout <= 0 {
		return usagef("suspend: --timeout must be positive")
	}
	mp, err := qcow2fsMountpoint(fs.Arg(0))
	if err != nil {
		return err
	}
	resp, err := callControl(mp, controlRequest{Op: opSuspend, TimeoutMS: timeout.Milliseconds()}, *timeout+controlSlack)
	if err != nil {
		return err
	}
	if !resp.OK {
		return errors.New(resp.Error)
	}
	return nil
}

func cmdResume(args []string) error {
	fs := newFlagSet("resume", resumeUsage)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("resume: need exactly one MOUNTPOINT (see qcow2fs resume --help)")
	}
	mp, err := qcow2fsMountpoint(fs.Arg(0))
	if err != nil {
		return err
	}
	resp, err := callControl(mp, controlRequest{Op: opResume}, controlSlack)
	if err != nil {
		return err
	}
	for _, w := range resp.Warnings {
		fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", w)
	}
	if !resp.OK {
		return errors.New(resp.Error)
	}
	return nil
}

// qcow2fsMountpoint resolves a mount point argument to a qcow2fs mount
// without touching the mount itself (a suspended one would make a stat of
// its files wait).
func qcow2fsMountpoint(arg string) (string, error) {
	mp, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	entries, err := mounts.Read()
	if err != nil {
		return "", err
	}
	if _, ok := mounts.Last(entries, mp); !ok {
		if real, err := filepath.EvalSymlinks(mp); err == nil {
			mp = real
		}
	}
	e, ok := mounts.Last(entries, mp)
	if !ok {
		return "", fmt.Errorf("%s is not mounted", mp)
	}
	if e.FSType != fsType {
		return "", fmt.Errorf("%s is not a qcow2fs mount (it is %s)", mp, e.FSType)
	}
	return mp, nil
}

// liveSnapshot asks the daemon of the read-write mount that serves path to
// create or delete a snapshot between requests. handled is false when no
// such mount holds the image (the caller then reports its own error).
func liveSnapshot(op, name, path string, timeout time.Duration) (handled bool, err error) {
	abs, aerr := filepath.Abs(path)
	if aerr != nil {
		return false, nil
	}
	for _, u := range findImageUses(abs) {
		if u.Via != "" || u.Overlay || u.ReadOnly || u.PID == 0 {
			continue
		}
		resp, err := callControl(u.Mountpoint, controlRequest{Op: op, Image: abs, Name: name, TimeoutMS: timeout.Milliseconds()}, timeout+controlSlack)
		if err != nil {
			return true, err
		}
		for _, w := range resp.Warnings {
			fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", w)
		}
		if !resp.OK {
			return true, fmt.Errorf("live snapshot via the mount at %s: %s", u.Mountpoint, resp.Error)
		}
		return true, nil
	}
	return false, nil
}

// isLockError reports whether err says another process holds the image.
func isLockError(err error) bool {
	var le *qcow2.LockError
	return errors.As(err, &le)
}

// liveHint is what a maintenance command refused on a mounted image says
// about the live forms.
func liveHint(mountpoint string, readOnly bool) string {
	snap := "qcow2fs snapshot create|delete NAME IMAGE, qcow2fs snapshot create --external OVERLAY IMAGE and qcow2fs commit IMAGE work live; for anything else, "
	if readOnly {
		snap = "" // live snapshots are for read-write mounts
	}
	return fmt.Sprintf("; or, without unmounting: %sqcow2fs suspend %s first, then qcow2fs resume %s",
		snap, quoteArg(mountpoint), quoteArg(mountpoint))
}

func quoteArg(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n'\"\\$`") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
