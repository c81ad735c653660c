// Daemonizing. Go cannot fork, so the parent re-executes its own binary
// (/proc/self/exe) with the resolved configuration in an environment
// variable. The child runs in a new session, in /, with stdio on /dev/null,
// and reports back through a pipe (its fd 3) line by line:
//
//	warning <text>   shown to the user by the parent, as it happens
//	ready            the mount answers; the parent exits 0
//	error <text>     the mount failed; the parent prints it and exits 1
//
// The parent thus exits only once the mount is usable, or with the
// daemon's own error message, which is what mount(8), systemd and scripts
// need.

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
	lsyslog "github.com/sirupsen/logrus/hooks/syslog"
	"golang.org/x/sys/unix"
)

const daemonEnv = "_QCOW2FS_DAEMON_CONFIG"

func isDaemonChild() bool { return os.Getenv(daemonEnv) != "" }

// startDaemon starts the daemon and waits until it reports.
func startDaemon(cfg *mountConfig) error {
	conf, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	// Until its verdict the daemon's stderr comes here too: what the
	// programs it runs say (fusermount3's reason for failing) and a Go
	// crash, which would otherwise vanish into /dev/null.
	errR, errW, err := os.Pipe()
	if err != nil {
		w.Close()
		return err
	}
	defer errR.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"qcow2fs"} // ps shows "qcow2fs"
	cmd.Env = append(os.Environ(), daemonEnv+"="+string(conf))
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
			fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", text)
		case "ready":
			// The daemon closed its stderr before saying so.
			if msg := <-stderrText; msg != "" {
				fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", summary(msg))
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
	return withStderr(fmt.Errorf("the daemon died before the mount was ready: %v", err), <-stderrText)
}

// withStderr appends what the daemon (or a program it ran) printed to its
// error.
func withStderr(err error, stderr string) error {
	if stderr == "" {
		return err
	}
	return fmt.Errorf("%w (%s)", err, summary(stderr))
}

// summary puts text on one line of readable length: the head of a crash
// dump says what happened.
func summary(text string) string {
	msg := oneLine(text)
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return msg
}

// runDaemonChild is main() of the daemon.
func runDaemonChild() int {
	var cfg mountConfig
	err := json.Unmarshal([]byte(os.Getenv(daemonEnv)), &cfg)
	os.Unsetenv(daemonEnv) // not for the programs we run (fusermount3)
	// Started as /proc/self/exe, the kernel names us "exe"; ps and pgrep
	// should see "qcow2fs".
	os.WriteFile("/proc/self/comm", []byte("qcow2fs"), 0)
	pipe := os.NewFile(3, "qcow2fs-ready")
	rep := &pipeReporter{w: pipe}
	if err != nil {
		rep.fail(fmt.Errorf("daemon: bad configuration: %v", err))
		return exitError
	}
	closeLog, err := setupLogging(&cfg, true)
	if err != nil {
		rep.fail(err)
		return exitError
	}
	defer closeLog()
	return serve(&cfg, rep)
}

// pipeReporter relays the daemon's start-up to the waiting parent. After
// the verdict the pipe is closed and warnings only go to the log.
type pipeReporter struct {
	mu sync.Mutex
	w  io.WriteCloser // nil once closed
}

func (p *pipeReporter) send(kind, text string) {
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
	fmt.Fprintf(p.w, "%s %s\n", kind, oneLine(text))
	if kind != "warning" {
		p.w.Close()
		p.w = nil
	}
}

func (p *pipeReporter) warn(msg string) {
	logrus.Warn(msg)
	p.send("warning", msg)
}

func (p *pipeReporter) ready() { p.send("ready", "") }

func (p *pipeReporter) fail(err error) {
	logrus.Errorf("mount failed: %v", err)
	p.send("error", err.Error())
}

// setupLogging points logrus at the log file if one is configured, else at
// syslog for a daemon (stderr is /dev/null there) and stderr in the
// foreground. The returned function closes the log file.
func setupLogging(cfg *mountConfig, daemon bool) (func(), error) {
	log := logrus.StandardLogger()
	log.SetLevel(logrus.InfoLevel)
	if cfg.Debug {
		log.SetLevel(logrus.DebugLevel)
	}
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open log file: %w", err)
		}
		log.SetOutput(f)
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true})
		return func() { f.Close() }, nil
	}
	if !daemon {
		return func() {}, nil
	}
	log.SetOutput(io.Discard)
	hook, err := lsyslog.NewSyslogHook("", "", syslog.LOG_DAEMON|syslog.LOG_INFO, "qcow2fs")
	if err != nil {
		// No syslog (e.g. a container without /dev/log): nothing to log to.
		return func() {}, nil
	}
	// syslog stamps the time itself.
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	log.AddHook(hook)
	return func() { hook.Writer.Close() }, nil
}
