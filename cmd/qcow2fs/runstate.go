// Run state: each daemon leaves a small JSON file naming its pid, so that
// "qcow2fs unmount" can wait until the daemon has flushed and closed the
// images (not only until the kernel dropped the mount), and so that mounts
// can be listed. Best effort: without a writable run directory the daemon
// works the same, and unmount only waits for the mount to go away.

package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/internal/proc"
)

type runState struct {
	PID        int    `json:"pid"`
	StartTime  uint64 `json:"start_time"` // /proc/PID/stat field 22: tells a reused pid apart
	Mountpoint string `json:"mountpoint"`
	Source     string `json:"source"`
	// Images are the files the daemon serves (the active layers): after
	// a live external snapshot, the overlay in the place of the image.
	Images []string `json:"images"`
	// Mounted are the images as mounted, when a live external snapshot or
	// commit switched any of them to another layer (same order as Images).
	Mounted    []string `json:"mounted,omitempty"`
	ReadOnly   bool     `json:"read_only"`
	Overlay    string   `json:"overlay,omitempty"`
	Partitions bool     `json:"partitions,omitempty"`
	LogFile    string   `json:"log_file,omitempty"`
	// Suspended: qcow2fs suspend closed the images; requests wait.
	Suspended bool `json:"suspended,omitempty"`
	// Transport: "classic" (/dev/fuse) or "io_uring".
	Transport string `json:"transport,omitempty"`
}

// runStateDirOverride replaces the run-state directory in unit tests.
var runStateDirOverride string

// runStateDir is where daemons record themselves and mounts take their
// locks: /run/qcow2fs for root, a private directory for other users
// (userRunDir). Callers that read from it check it first (usableRunDir).
func runStateDir() string {
	if runStateDirOverride != "" {
		return runStateDirOverride
	}
	if os.Geteuid() == 0 {
		return "/run/qcow2fs"
	}
	return userRunDir()
}

// usableRunDir returns the run-state directory if it exists and is safe
// to trust, else "" (nothing recorded there is believed).
func usableRunDir() string {
	dir := runStateDir()
	if checkRunDir(dir) != nil {
		return ""
	}
	return dir
}

func runStatePath(mountpoint string) string {
	dir := usableRunDir()
	if dir == "" {
		return ""
	}
	return runStatePathIn(dir, mountpoint)
}

// runStatePathIn is the run-state file of mountpoint in dir.
func runStatePathIn(dir, mountpoint string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	return filepath.Join(dir, hex.EncodeToString(sum[:16])+".json")
}

func writeRunState(cfg *mountConfig, suspended bool) {
	if err := ensureRunDir(runStateDir()); err != nil {
		logrus.Warnf("cannot record run state: %v", err)
		return
	}
	path := runStatePath(cfg.Mountpoint)
	if path == "" {
		return
	}
	st := runState{PID: os.Getpid(), Mountpoint: cfg.Mountpoint, Source: cfg.FsName, Images: cfg.Images, Mounted: cfg.Mounted, ReadOnly: cfg.ReadOnly,
		Overlay: cfg.Overlay, Partitions: cfg.Partitions, LogFile: cfg.LogFile, Suspended: suspended,
		Transport: cfg.transport}
	_, st.StartTime, _ = proc.Stat(st.PID)
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, append(b, '\n'), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		logrus.Debugf("cannot record run state: %v", err)
	}
}

func removeRunState(mountpoint string) {
	if path := runStatePath(mountpoint); path != "" {
		os.Remove(path)
	}
}

// readRunState returns the state of the daemon serving mountpoint, or nil
// if there is none or it is not running any more.
func readRunState(mountpoint string) *runState {
	path := runStatePath(mountpoint)
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var st runState
	if json.Unmarshal(b, &st) != nil || st.Mountpoint != mountpoint || !st.alive() {
		return nil
	}
	return &st
}

// alive reports whether the recorded daemon is still running: not once
// it has exited (proc.Exited), though its reaper (whatever adopted the
// daemon) may take its time.
func (st *runState) alive() bool {
	state, t, err := proc.Stat(st.PID)
	return err == nil && t == st.StartTime && !proc.Exited(st.PID, state)
}

// stopped reports whether the recorded daemon is stopped (SIGSTOP, or a
// debugger): it answers nothing until continued.
func (st *runState) stopped() bool {
	state, t, err := proc.Stat(st.PID)
	return err == nil && t == st.StartTime && (state == "T" || state == "t")
}

// sweepRunStates removes the run-state files of daemons that are gone
// (killed, crashed: they never removed their own), so that they do not
// outlive the next status. Files of live daemons stay, also while they
// flush after an unmount.
func sweepRunStates() {
	dir := usableRunDir()
	if dir == "" {
		return
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for _, f := range files {
		rs := loadRunState(f)
		if rs == nil {
			// Unreadable or half-written: only a writer that died between
			// write and rename leaves a .tmp; a .json is always whole, so
			// one that does not parse is garbage.
			if _, err := os.Stat(f); err == nil {
				os.Remove(f)
			}
			continue
		}
		if !rs.alive() {
			os.Remove(f)
			os.Remove(strings.TrimSuffix(f, ".json") + ".sock")
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, "*.json.tmp"))
	for _, f := range tmps {
		if st, err := os.Stat(f); err == nil && time.Since(st.ModTime()) > time.Minute {
			os.Remove(f)
		}
	}
}
