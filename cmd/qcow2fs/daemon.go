// The mount's daemon: qcow2fs mount starts it through internal/daemon
// (re-executed binary, start-up verdict over a pipe) and it logs to a file,
// syslog, or stderr in the foreground.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/syslog"
	"os"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/sirupsen/logrus"
	lsyslog "github.com/sirupsen/logrus/hooks/syslog"
)

// startDaemon starts the mount's daemon and waits until it reports: the
// mount is ready, or its error.
func startDaemon(cfg *mountConfig) error {
	conf, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return daemon.Start("qcow2fs", conf, func(msg string) {
		fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", msg)
	})
}

// runDaemonChild is main() of the daemon.
func runDaemonChild() int {
	conf, pipe := daemon.Child("qcow2fs")
	rep := &pipeReporter{pipe}
	var cfg mountConfig
	if err := json.Unmarshal(conf, &cfg); err != nil {
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

// pipeReporter is the daemon's reporter: what it reports goes to the log
// and to the parent waiting in qcow2fs mount.
type pipeReporter struct{ p *daemon.Reporter }

func (r *pipeReporter) warn(msg string) {
	logrus.Warn(msg)
	r.p.Warn(msg)
}

func (r *pipeReporter) ready() { r.p.Ready() }

func (r *pipeReporter) fail(err error) {
	logrus.Errorf("mount failed: %v", err)
	r.p.Fail(err)
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
