// cleaner: undoing what the bench set up (mounts, loop devices, daemons) in
// reverse order, on success, error or signal.

package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// cleaner undoes what the bench set up — mounts, loop devices, daemons —
// in reverse order, whether the run ends normally, with an error or on a
// signal. Every step is registered right after the thing it undoes
// exists, so nothing is left mounted whatever fails next.
type cleaner struct {
	mu    sync.Mutex
	steps []*cleanupStep
	// children are the processes running in the foreground right now (fio,
	// mkfs, ...): an interrupt kills them first, since an open file on a
	// mount makes its unmount fail.
	children map[*exec.Cmd]struct{}
}

type cleanupStep struct {
	what string
	once sync.Once
	fn   func() error
	err  error
}

func newCleaner() *cleaner {
	return &cleaner{children: map[*exec.Cmd]struct{}{}}
}

// push registers fn and returns a function that runs it now (once) and
// reports its error; the run's end runs it if nobody did.
func (c *cleaner) push(what string, fn func() error) func() error {
	s := &cleanupStep{what: what, fn: fn}
	c.mu.Lock()
	c.steps = append(c.steps, s)
	c.mu.Unlock()
	return func() error { return c.runStep(s) }
}

func (c *cleaner) runStep(s *cleanupStep) error {
	s.once.Do(func() {
		s.err = s.fn()
		c.mu.Lock()
		for i, t := range c.steps {
			if t == s {
				c.steps = append(c.steps[:i], c.steps[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
	})
	return s.err
}

// runAll runs every pending step, newest first, and reports failures on
// stderr: at this point there is nobody else to tell.
func (c *cleaner) runAll() {
	for {
		c.mu.Lock()
		if len(c.steps) == 0 {
			c.mu.Unlock()
			return
		}
		s := c.steps[len(c.steps)-1]
		c.mu.Unlock()
		if err := c.runStep(s); err != nil {
			fmt.Fprintf(os.Stderr, "qcow2fs-bench: cleanup: %s: %v\n", s.what, err)
		}
	}
}

func (c *cleaner) addChild(cmd *exec.Cmd) {
	c.mu.Lock()
	c.children[cmd] = struct{}{}
	c.mu.Unlock()
}

func (c *cleaner) removeChild(cmd *exec.Cmd) {
	c.mu.Lock()
	delete(c.children, cmd)
	c.mu.Unlock()
}

// killChildren kills the foreground children and waits (a little) until
// they are reaped, so that their open files no longer hold mounts busy.
func (c *cleaner) killChildren() {
	c.mu.Lock()
	for cmd := range c.children {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	}
	c.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		c.mu.Lock()
		n := len(c.children)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// onSignal cleans up and exits when the run is interrupted.
func (c *cleaner) onSignal() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		interrupted.Store(true)
		logf("interrupted (%v): cleaning up", sig)
		c.killChildren()
		c.runAll()
		os.Exit(130)
	}()
}
