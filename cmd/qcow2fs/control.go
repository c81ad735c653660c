// The control channel: a unix socket next to the daemon's run-state file
// (same name, .sock), through which the CLI asks a mount's daemon to
// suspend, resume, or take or delete an internal snapshot between
// requests. Only root and the mount's owner may use it: the socket is mode
// 0600, owned by the owner, and the daemon checks every caller's
// credentials (SO_PEERCRED) too.
//
// Protocol: one connection per request; the CLI writes one JSON object on
// a line, the daemon answers with one JSON object on a line and closes.
// Every step has a deadline on both sides: no command waits on a mount
// without a bound.

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// Control operations.
const (
	opSuspend        = "suspend"
	opResume         = "resume"
	opState          = "state"
	opSnapshotCreate = "snapshot-create"
	opSnapshotDelete = "snapshot-delete"
)

// Bounds of the control channel.
const (
	defaultSuspendTimeout = 10 * time.Second
	// controlIOTimeout bounds reading a request and writing an answer.
	controlIOTimeout = 5 * time.Second
	// controlSlack is how long an operation may take beyond its drain
	// timeout: flushing and closing, reopening the images, changing the
	// snapshot table.
	controlSlack = 2 * time.Minute
)

type controlRequest struct {
	Op        string `json:"op"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"` // drain timeout
	Image     string `json:"image,omitempty"`
	Name      string `json:"name,omitempty"`
}

type controlResponse struct {
	OK        bool     `json:"ok"`
	Error     string   `json:"error,omitempty"`
	Suspended bool     `json:"suspended"`
	Added     []string `json:"added,omitempty"`
	Removed   []string `json:"removed,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	Note      string   `json:"note,omitempty"` // what a layer operation did (extsnap.go)
}

// controlSocketPath is the socket of the daemon serving mountpoint in the
// run-state directory dir.
func controlSocketPath(dir, mountpoint string) string {
	sum := strings.TrimSuffix(filepath.Base(runStatePathIn(dir, mountpoint)), ".json")
	return filepath.Join(dir, sum+".sock")
}

// controller is the daemon's side.
type controller struct {
	cfg  *mountConfig
	srv  *fusefs.Server
	log  *logrus.Logger
	ln   net.Listener
	path string
	// busy serialises the operations; a request waits for it no longer
	// than its own deadline.
	busy chan struct{}
	// tables follow the layers a resume brings in (extsnap.go); created
	// are the overlays live external snapshots of this daemon made.
	tables  *liveTables
	created map[string]bool
}

// startControl listens on the mount's control socket. Best effort, like
// the run state: without a run-state directory there is no socket, and
// the live operations are not available.
func startControl(cfg *mountConfig, srv *fusefs.Server, tables *liveTables, log *logrus.Logger) *controller {
	dir := runStateDir()
	if dir == "" {
		return nil
	}
	path := controlSocketPath(dir, cfg.Mountpoint)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Warnf("no control socket (live suspend, resume and snapshots unavailable): %v", err)
		return nil
	}
	os.Remove(path) // a dead daemon's
	ln, err := net.Listen("unix", path)
	if err != nil {
		log.Warnf("no control socket (live suspend, resume and snapshots unavailable): %v", err)
		return nil
	}
	// Created 0777 &^ umask, never writable (connectable) by others with
	// the usual umask; narrowed at once, and every caller is checked.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		log.Warnf("no control socket: %v", err)
		return nil
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	c := &controller{cfg: cfg, srv: srv, log: log, ln: ln, path: path, busy: make(chan struct{}, 1), tables: tables, created: map[string]bool{}}
	go c.accept()
	return c
}

// stop closes the socket and removes it.
func (c *controller) stop() {
	if c == nil {
		return
	}
	c.ln.Close()
	os.Remove(c.path)
}

func (c *controller) accept() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warnf("control socket: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go c.serveConn(conn)
	}
}

// peerUID returns the uid of the process at the other end.
func peerUID(conn net.Conn) (uint32, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}

func (c *controller) serveConn(conn net.Conn) {
	defer conn.Close()
	answer := func(r controlResponse) {
		conn.SetWriteDeadline(time.Now().Add(controlIOTimeout))
		b, _ := json.Marshal(r)
		conn.Write(append(b, '\n'))
	}
	// The request is read (bounded) before anything is answered, so that
	// a refusal reaches the caller rather than a broken pipe.
	conn.SetReadDeadline(time.Now().Add(controlIOTimeout))
	line, err := bufio.NewReaderSize(conn, 64<<10).ReadBytes('\n')
	if err != nil {
		return
	}
	uid, err := peerUID(conn)
	if err != nil {
		answer(controlResponse{Error: fmt.Sprintf("cannot tell who is asking: %v", err)})
		return
	}
	if uid != 0 && uid != uint32(os.Getuid()) {
		c.log.Warnf("control socket: refused a request from uid %d (only root and the mount's owner, uid %d, may control the mount)", uid, os.Getuid())
		answer(controlResponse{Error: fmt.Sprintf("permission denied: uid %d is neither root nor the owner of the mount (uid %d)", uid, os.Getuid())})
		return
	}
	var req controlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		answer(controlResponse{Error: "bad request: " + err.Error()})
		return
	}
	timeout := defaultSuspendTimeout
	if req.TimeoutMS > 0 {
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	// One operation at a time; a request does not wait for the one before
	// longer than it would wait for draining.
	select {
	case c.busy <- struct{}{}:
	case <-time.After(timeout):
		answer(controlResponse{Error: "another live operation on this mount is still running", Suspended: c.srv.Suspended()})
		return
	}
	resp := c.do(req, timeout)
	<-c.busy
	resp.Suspended = c.srv.Suspended()
	resp.OK = resp.Error == ""
	answer(resp)
}

func (c *controller) do(req controlRequest, timeout time.Duration) controlResponse {
	switch req.Op {
	case opState:
		return controlResponse{}
	case opSuspend:
		if err := c.suspend(timeout); err != nil {
			return controlResponse{Error: err.Error()}
		}
		return controlResponse{}
	case opResume:
		return c.resume()
	case opSnapshotCreate, opSnapshotDelete:
		return c.snapshot(req, timeout)
	case opSnapshotExternal:
		return c.externalSnapshot(req, timeout)
	case opCommit:
		return c.commit(req, timeout)
	}
	return controlResponse{Error: fmt.Sprintf("unknown operation %q", req.Op)}
}

func (c *controller) suspend(timeout time.Duration) error {
	start := time.Now()
	err := c.srv.Suspend(timeout)
	if c.srv.Suspended() {
		writeRunState(c.cfg, true)
		c.log.Infof("suspended %s in %v: images flushed and closed; requests wait until resumed", c.cfg.Mountpoint, time.Since(start).Round(time.Millisecond))
	}
	return err
}

// resume reopens the images as the mount opened them and hands them to
// the file system. On failure the mount stays suspended.
func (c *controller) resume() controlResponse {
	images, _, perm, _, err := openImages(c.cfg, quietReporter{c.log})
	if err != nil {
		c.log.Errorf("resume %s: %v; still suspended", c.cfg.Mountpoint, err)
		return controlResponse{Error: fmt.Sprintf("resume %s: %v; the mount stays suspended", c.cfg.Mountpoint, err)}
	}
	// Before the files are handed the images: a switched layer's path
	// must have its permissions at once.
	c.tables.addPerm(images, perm)
	rep, err := c.srv.Resume(images)
	if err != nil {
		closeImages(images, nil)
		c.log.Errorf("%v", err)
		return controlResponse{Error: err.Error()}
	}
	writeRunState(c.cfg, false)
	for _, w := range rep.Warnings {
		c.log.Warn(w)
	}
	c.log.Infof("resumed %s (snapshot files added %v, removed %v)", c.cfg.Mountpoint, rep.Added, rep.Removed)
	return controlResponse{Added: rep.Added, Removed: rep.Removed, Warnings: rep.Warnings}
}

// snapshot takes or deletes an internal snapshot of one of the mount's
// images between requests: suspend, snapshot, resume.
func (c *controller) snapshot(req controlRequest, timeout time.Duration) controlResponse {
	if c.srv.Suspended() {
		return controlResponse{Error: "the mount is suspended: its images are free, run the command again without the mount's help, or resume first"}
	}
	var path string
	for _, img := range c.srv.Images() {
		if sameFile(img.Path(), req.Image) {
			path = img.Path()
		}
	}
	if path == "" {
		return controlResponse{Error: fmt.Sprintf("%s is not one of the images this mount serves", req.Image)}
	}
	if err := c.suspend(timeout); err != nil {
		return controlResponse{Error: err.Error()}
	}
	var opErr error
	if req.Op == opSnapshotCreate {
		opErr = qcow2.SnapshotCreate(path, req.Name)
	} else {
		opErr = qcow2.SnapshotDelete(path, req.Name)
	}
	resp := c.resume()
	if opErr != nil {
		msg := opErr.Error()
		if resp.Error != "" {
			msg += "; and then: " + resp.Error
		}
		resp.Error = msg
	}
	return resp
}

// quietReporter sends what opening the images reports to the log.
type quietReporter struct{ log *logrus.Logger }

func (q quietReporter) warn(msg string) { q.log.Warn(msg) }
func (q quietReporter) ready()          {}
func (q quietReporter) fail(err error)  { q.log.Error(err) }

// callControl sends req to the daemon serving mountpoint and waits for the
// answer, at most wait.
func callControl(mountpoint string, req controlRequest, wait time.Duration) (*controlResponse, error) {
	var path string
	dirs := []string{runStateDir()}
	if dirs[0] != "/run/qcow2fs" {
		dirs = append(dirs, "/run/qcow2fs") // root's mount, seen by another user
	}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := controlSocketPath(d, mountpoint)
		if _, err := os.Lstat(p); err == nil || errors.Is(err, os.ErrPermission) {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("%s: no control socket for this mount (its daemon predates live operations, has no run-state directory, or is another user's)", mountpoint)
	}
	conn, err := net.DialTimeout("unix", path, controlIOTimeout)
	if err != nil {
		switch {
		case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
			return nil, fmt.Errorf("%s: permission denied: only root and the owner of the mount may control it", mountpoint)
		case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT):
			return nil, fmt.Errorf("%s: its daemon does not answer on its control socket (it is gone)", mountpoint)
		}
		return nil, fmt.Errorf("%s: control socket: %v", mountpoint, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(wait))
	b, _ := json.Marshal(req)
	_, werr := conn.Write(append(b, '\n'))
	// Even when the write failed the daemon may have answered (a refusal).
	line, err := bufio.NewReaderSize(conn, 64<<10).ReadBytes('\n')
	if err != nil && werr != nil {
		return nil, fmt.Errorf("%s: control socket: %v", mountpoint, werr)
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%s: no answer from its daemon within %v (it may still finish the %s)", mountpoint, wait, req.Op)
		}
		return nil, fmt.Errorf("%s: the daemon closed the control connection without answering: %v", mountpoint, err)
	}
	var resp controlResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("%s: bad answer from the daemon: %v", mountpoint, err)
	}
	return &resp, nil
}
