// Tests of hangs (a daemon that deadlocks, is stopped or never answers)
// touch a suspect mount only from child processes, never from the test
// process itself: a FUSE request the daemon has read but never answers
// leaves its caller in uninterruptible sleep, which not even SIGKILL ends.
// bounded gives such a command a deadline; when it passes, the FUSE
// connections of the suspect mounts are aborted (fusectl), which fails every
// pending request, so the child dies and the test reports a hang instead of
// hanging.

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"golang.org/x/sys/unix"
)

// bounded runs name with args (in dir when not "") and waits at most d.
// On timeout it aborts the FUSE connections of mounts, kills the command
// and returns Code -1 with an error saying it hung.
func bounded(d time.Duration, mnts []string, dir, name string, args ...string) result {
	return boundedEnv(d, nil, mnts, dir, name, args...)
}

// boundedEnv is bounded with extra environment variables ("K=V").
func boundedEnv(d time.Duration, env []string, mnts []string, dir, name string, args ...string) result {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return result{Code: -1, Err: err}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	hung := false
	select {
	case err = <-done:
	case <-time.After(d):
		hung = true
		for _, m := range mnts {
			abortFuse(m)
		}
		_ = cmd.Process.Kill()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			err = errors.New("still not dead 10s after SIGKILL and aborting the FUSE connections")
		}
	}
	r := result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	var exitErr *exec.ExitError
	switch {
	case hung:
		r.Code = -1
		r.Err = fmt.Errorf("hung: still running after %v (%v)", d, err)
	case err == nil:
	case errors.As(err, &exitErr):
		r.Code = exitErr.ExitCode()
	default:
		r.Code = -1
	}
	return r
}

// mustBounded is bounded for a command that must succeed in time.
func mustBounded(t *testing.T, d time.Duration, mnts []string, dir, name string, args ...string) string {
	t.Helper()
	r := bounded(d, mnts, dir, name, args...)
	if r.Code != 0 {
		t.Fatalf("%s %s: %s", name, strings.Join(args, " "), r)
	}
	return r.Stdout
}

// fuseConn returns the FUSE connection number (the minor device number) of
// every mount at point, top first.
func fuseConns(point string) []string {
	entries, _ := mounts.Read()
	var out []string
	for _, e := range entries {
		if e.Point == point && strings.HasPrefix(e.FSType, "fuse") {
			out = append([]string{strconv.Itoa(int(unix.Minor(e.Dev)))}, out...)
		}
	}
	return out
}

// abortFuse aborts the FUSE connections of the mounts at point: every
// request pending on them fails with ENOTCONN and the mount goes dead
// (a lazy unmount then removes it).
func abortFuse(point string) {
	const ctl = "/sys/fs/fuse/connections"
	for _, conn := range fuseConns(point) {
		abort := filepath.Join(ctl, conn, "abort")
		if _, err := os.Stat(abort); err != nil {
			quietRun("mount", "-t", "fusectl", "fusectl", ctl)
		}
		_ = os.WriteFile(abort, []byte("1"), 0)
	}
}

// cleanupMount takes down whatever is still mounted at mnt after a test,
// without ever hanging: qcow2fs unmount with a deadline, then an abort of
// the connection and a lazy unmount.
func cleanupMount(t *testing.T, mnt string) {
	if _, ok := mounts.Find(mnt); !ok {
		return
	}
	t.Logf("cleanup: %s still mounted, unmounting", mnt)
	bounded(20*time.Second, []string{mnt}, "", qcow2fsBin, "unmount", mnt)
	for i := 0; i < 8; i++ {
		if _, ok := mounts.Find(mnt); !ok {
			return
		}
		abortFuse(mnt)
		quietRun("umount", "-l", mnt)
	}
}
