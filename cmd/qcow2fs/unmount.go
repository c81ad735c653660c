// qcow2fs unmount: fusermount3 -u, then waiting until the daemon has flushed
// and closed the images.

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

const unmountUsage = `Usage: qcow2fs unmount MOUNTPOINT

Unmounts a qcow2fs mount and waits until its daemon has flushed and closed
the images, so the images are consistent and free for other programs when
the command returns. Fails while a file of the mount is in use (open, or
attached to a loop device: see losetup -a).
`

// How long unmount waits: for the kernel to drop the mount, then for the
// daemon to write back its caches and exit.
const (
	mountGoneTimeout  = 10 * time.Second
	daemonExitTimeout = 2 * time.Minute
)

func cmdUnmount(args []string) error {
	fs := newFlagSet("unmount", unmountUsage)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("unmount: need exactly one MOUNTPOINT (see qcow2fs unmount --help)")
	}
	mp, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return err
	}
	entries, err := mounts.Read()
	if err != nil {
		return err
	}
	// A mount point is taken as it is: resolving it would stat the mount,
	// and a dead daemon's mount answers ENOTCONN, a stopped one nothing at
	// all. Only a path that is not a mount point is resolved (a symlink to
	// one, say).
	if _, ok := mounts.Last(entries, mp); !ok {
		if real, err := filepath.EvalSymlinks(mp); err == nil {
			mp = real
		}
	}
	e, ok := mounts.Last(entries, mp)
	if !ok {
		return fmt.Errorf("%s is not mounted", mp)
	}
	if e.FSType != fsType {
		return fmt.Errorf("%s is not a qcow2fs mount (it is %s)", mp, e.FSType)
	}
	daemon := readRunState(mp)
	if daemon != nil && daemon.Suspended {
		// Its waiting requests would never be answered.
		return fmt.Errorf("%s is suspended; resume it first (qcow2fs resume %s)", mp, mp)
	}

	if err := fusermountUnmount(mp, false); err != nil {
		if err2 := syscall.Unmount(mp, 0); err2 != nil {
			if errors.Is(err2, syscall.EBUSY) {
				return fmt.Errorf("unmount %s: busy: a file in it is open, or attached to a loop device (see losetup -a)", mp)
			}
			return fmt.Errorf("unmount %s: %v", mp, err)
		}
	}
	if err := waitFor(mountGoneTimeout, func() bool { m, err := mounts.IsMounted(mp); return err == nil && !m }); err != nil {
		return fmt.Errorf("%s is still mounted after %v", mp, mountGoneTimeout)
	}
	if daemon != nil {
		noteSwitchedLayers(daemon)
		stopped := false
		err := waitFor(daemonExitTimeout, func() bool {
			stopped = daemon.stopped()
			return stopped || !daemon.alive()
		})
		switch {
		case stopped:
			// It cannot flush while stopped, and may stay so for ever:
			// say so now rather than wait.
			return fmt.Errorf("unmounted %s, but its daemon (pid %d) is stopped: it flushes and closes the images once continued (kill -CONT %d)",
				mp, daemon.PID, daemon.PID)
		case err != nil:
			return fmt.Errorf("unmounted %s, but its daemon (pid %d) is still flushing after %v", mp, daemon.PID, daemonExitTimeout)
		}
	}
	return nil
}

// fusermountUnmount runs fusermount3 -u (with -z for a lazy unmount).
func fusermountUnmount(mp string, lazy bool) error {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return err
		}
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append(args, "--", mp)...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return errors.New(msg)
		}
		return err
	}
	return nil
}

func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			return os.ErrDeadlineExceeded
		}
		time.Sleep(delay)
	}
	return nil
}
