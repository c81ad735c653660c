// Running commands for the bench: errors carrying the command line and the
// tail of its output, and nothing new started after an interrupt.

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// interrupted is set once a signal arrived: no new measurement starts
// then, so the main flow stops instead of racing the cleanup.
var interrupted atomic.Bool

var errInterrupted = errors.New("interrupted")

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run runs a command to completion and returns its stdout. On failure the
// error carries the command line and the tail of its stderr (or stdout).
// After an interrupt it refuses to start anything.
func (b *bench) run(name string, args ...string) (string, error) {
	if interrupted.Load() {
		return "", errInterrupted
	}
	return b.runAlways(name, args...)
}

// runAlways is run for cleanup steps, which must work after an interrupt too.
func (b *bench) runAlways(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	b.clean.addChild(cmd)
	err := cmd.Wait()
	b.clean.removeChild(cmd)
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, tail(msg, 1500))
	}
	return stdout.String(), nil
}

// tail keeps the last n bytes of s: the end of a tool's output says why it failed.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// background is a long-running child (a FUSE server) with its output in a
// log file.
type background struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

func startBackground(logPath, name string, args ...string) (*background, error) {
	if interrupted.Load() {
		return nil, errInterrupted
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &background{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *background) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// log returns the end of what the process wrote.
func (p *background) log() string {
	b, _ := os.ReadFile(p.logPath)
	return tail(strings.TrimSpace(string(b)), 1500)
}

// stop sends SIGTERM and waits for the process to exit, killing it if it
// takes longer than patience.
func (p *background) stop(patience time.Duration) error {
	if p.exited() {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(patience):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p.cmd.Path, patience)
	}
}
