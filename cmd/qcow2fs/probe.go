// Bounded probes of other mounts. No command may wait on a mount it does
// not own without a bound: a stopped (SIGSTOP) or deadlocked FUSE daemon
// never answers, and a process that asked it sleeps uninterruptibly once
// the daemon has read the request — not even SIGKILL ends it, so a probe
// in a goroutine of this process could keep the process from ever exiting.
// A probe is therefore a child process (this binary again) that statfs()es
// the mount and reports through its exit code; when it does not answer in
// time it is killed and left behind, and the caller reports "not
// responding".

package main

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const probeEnv = "_QCOW2FS_PROBE"

// probeTimeout bounds one probe. statfs is answered at once by a healthy
// daemon (it does not touch the images), even one busy with I/O.
const probeTimeout = 2 * time.Second

// probeResult is what a probe learned about a mount.
type probeResult int

const (
	probeServing  probeResult = iota // the daemon answered
	probeDead                        // ENOTCONN or ECONNABORTED: the daemon is gone
	probeError                       // another error (EACCES, ...)
	probeTimedOut                    // no answer within the bound
)

// Exit codes of the probe child.
const (
	probeExitServing = 0
	probeExitDead    = 3
	probeExitError   = 4
)

func isProbeChild() bool { return os.Getenv(probeEnv) != "" }

// runProbeChild is main() of a probe: statfs the path, say how it went.
// A dead daemon's mount answers ENOTCONN; a request caught while the
// kernel tears the connection down (the daemon has just died, or the
// connection was aborted) fails with ECONNABORTED, which is as final.
// Over io_uring such a request may first fail with ECANCELED, before the
// teardown reaches the connection: that one is asked again.
func runProbeChild() int {
	var st unix.Statfs_t
	err := unix.Statfs(os.Getenv(probeEnv), &st)
	for i := 0; i < 100 && errors.Is(err, syscall.ECANCELED); i++ {
		time.Sleep(5 * time.Millisecond)
		err = unix.Statfs(os.Getenv(probeEnv), &st)
	}
	switch {
	case err == nil:
		return probeExitServing
	case errors.Is(err, syscall.ENOTCONN), errors.Is(err, syscall.ECONNABORTED):
		return probeExitDead
	default:
		return probeExitError
	}
}

// probeMount asks the daemon of the mount at mp to answer a statfs, in a
// child process, waiting at most timeout.
func probeMount(mp string, timeout time.Duration) probeResult {
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"qcow2fs-probe"}
	cmd.Env = append(os.Environ(), probeEnv+"="+mp)
	cmd.Dir = "/"
	// The probe must not hold on to our terminal or pipes if it hangs.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	if err := cmd.Start(); err != nil {
		return probeError
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		switch {
		case err == nil:
			return probeServing
		case errors.As(err, &ee) && ee.ExitCode() == probeExitDead:
			return probeDead
		default:
			return probeError
		}
	case <-time.After(timeout):
		// A stopped daemon's request is still queued and the kill takes
		// it back; a hung daemon's is not, and the probe stays behind,
		// unkillable, until that daemon answers or dies. Not our wait.
		cmd.Process.Kill()
		return probeTimedOut
	}
}

// probeMounts probes several mounts at once; the whole takes at most one
// timeout.
func probeMounts(mps []string, timeout time.Duration) map[string]probeResult {
	out := make(map[string]probeResult, len(mps))
	var todo []string
	for _, mp := range mps {
		if _, dup := out[mp]; !dup {
			out[mp] = probeTimedOut
			todo = append(todo, mp)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, mp := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := probeMount(mp, timeout)
			mu.Lock()
			out[mp] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
