// Package daemon turns a command into a background daemon that its caller
// waits for. Go cannot fork, so the parent re-executes its own binary
// (/proc/self/exe) with a configuration in an environment variable. The
// child runs in a new session, in /, with stdio on /dev/null, and reports
// back through a pipe (its fd 3) line by line:
//
//	warning <text>   shown to the user by the parent, as it happens
//	ready            the child is in service; the parent returns nil
//	error <text>     the child failed; the parent returns the error
//
// The parent thus returns only once the daemon is usable, or with the
// daemon's own error message, which is what mount(8), systemd and scripts
// need. Until its verdict the child's stderr goes to the parent too, so a
// crash or the complaint of a program it ran is not lost.
package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// configEnv carries the configuration from parent to child.
const configEnv = "_QCOW2FS_DAEMON_CONFIG"

// IsChild reports whether this process was started by Start.
func IsChild() bool { return os.Getenv(configEnv) != "" }

// Start runs this binary again as a daemon named name (what ps shows),
// hands it config, and waits for its verdict. warn receives the warnings
// the daemon sends before it.
func Start(name string, config []byte, warn func(string)) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		w.Close()
		return err
	}
	defer errR.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{name}
	cmd.Env = append(os.Environ(), configEnv+"="+string(config))
	cmd.Dir = "/"
	// Stdin and Stdout stay nil: /dev/null.
	cmd.Stderr = errW
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// The daemon holds the only write ends now: EOF means it let go.
	w.Close()
	errW.Close()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	stderrText := make(chan string, 1)
	go func() {
		// Read to the end even if it is long (a crash dump), so the daemon
		// never blocks on a full pipe.
		b, _ := io.ReadAll(errR)
		stderrText <- strings.TrimSpace(string(b))
	}()

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kind, text, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "warning":
			warn(text)
		case "ready":
			// The daemon closed its stderr before saying so.
			if msg := <-stderrText; msg != "" {
				warn(Summary(msg))
			}
			cmd.Process.Release()
			return nil
		case "error":
			cmd.Wait()
			return withStderr(errors.New(text), <-stderrText)
		}
	}
	// No verdict: the daemon died (crash, kill) before it could say.
	err = cmd.Wait()
	if err == nil {
		err = errors.New("exit status 0")
	}
	return withStderr(fmt.Errorf("the daemon died before it was ready: %v", err), <-stderrText)
}

// withStderr appends what the daemon (or a program it ran) printed to its
// error.
func withStderr(err error, stderr string) error {
	if stderr == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, Summary(stderr))
}

// OneLine puts text on one line: newlines and runs of blanks become one
// space.
func OneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// Summary puts text on one line of readable length: the head of a crash
// dump says what happened.
func Summary(text string) string {
	msg := OneLine(text)
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return msg
}

// Child is called first thing in the daemon: it returns the configuration
// Start handed over (and removes it from the environment, which is not for
// the programs the daemon runs), names the process name for ps, and
// returns the Reporter that talks to the waiting parent.
func Child(name string) (config []byte, rep *Reporter) {
	config = []byte(os.Getenv(configEnv))
	os.Unsetenv(configEnv)
	// Started as /proc/self/exe, the kernel names us "exe".
	os.WriteFile("/proc/self/comm", []byte(name), 0)
	return config, &Reporter{w: os.NewFile(3, name+"-ready")}
}

// Reporter relays the daemon's start-up to the waiting parent. After the
// verdict (Ready or Fail) the pipe is closed and later messages go nowhere.
type Reporter struct {
	mu sync.Mutex
	w  io.WriteCloser // nil once closed
}

func (p *Reporter) send(kind, text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w == nil {
		return
	}
	if kind != "warning" {
		// From now on stderr is /dev/null: the parent stops reading it
		// once it has the verdict.
		if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
			unix.Dup2(int(null.Fd()), 2)
			null.Close()
		}
	}
	fmt.Fprintf(p.w, "%s %s\n", kind, OneLine(text))
	if kind != "warning" {
		p.w.Close()
		p.w = nil
	}
}

// Warn shows msg to the user who started the daemon (while they wait).
func (p *Reporter) Warn(msg string) { p.send("warning", msg) }

// Ready tells the parent the daemon is in service.
func (p *Reporter) Ready() { p.send("ready", "") }

// Fail tells the parent the daemon failed with err.
func (p *Reporter) Fail(err error) { p.send("error", err.Error()) }
