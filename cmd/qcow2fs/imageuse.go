// Who uses an image: the qcow2fs mounts that serve it (from run state and
// mountinfo) and the processes that hold it open, so that a maintenance
// command refused by the image lock says who holds it and what to do
// (unmount, or the live form of the command).

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// imageUse is a qcow2fs mount that has an image open, directly or as a
// file of its chain (backing file, external data file, overlay evidence).
type imageUse struct {
	Mountpoint string
	PID        int    // 0 when unknown (no run state)
	ReadOnly   bool   // how the mount holds the image
	Via        string // the mounted image whose chain holds it; "" if it is mounted itself
	Overlay    bool   // the image is the read-only evidence of an overlay mount
}

// findImageUses lists the qcow2fs mounts using the file at target: first
// those that recorded their images in the run-state directory, then (for
// mounts without run state, e.g. another user's) those whose mountinfo
// source names the file or its directory.
func findImageUses(target string) []imageUse {
	tst, err := os.Stat(target)
	if err != nil {
		return nil
	}
	same := func(p string) bool {
		st, err := os.Stat(p)
		return err == nil && os.SameFile(st, tst)
	}
	var uses []imageUse
	seen := map[string]bool{}
	if dir := usableRunDir(); dir != "" {
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, f := range files {
			rs := loadRunState(f)
			if rs == nil || !rs.alive() {
				continue
			}
			if u, ok := useOf(rs, target, same); ok {
				uses = append(uses, u)
				seen[rs.Mountpoint] = true
			}
		}
	}
	entries, _ := mounts.Read()
	for _, e := range entries {
		if e.FSType != fsType || seen[e.Point] {
			continue
		}
		ro := false
		for _, o := range strings.Split(e.Options, ",") {
			ro = ro || o == "ro"
		}
		for _, src := range strings.Split(e.Source, ",") {
			if same(src) || filepath.Dir(target) == src || sameDir(filepath.Dir(target), src) {
				uses = append(uses, imageUse{Mountpoint: e.Point, ReadOnly: ro})
				seen[e.Point] = true
				break
			}
		}
	}
	return uses
}

func sameDir(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && sb.IsDir() && os.SameFile(sa, sb)
}

// loadRunState reads one run-state file (nil if unreadable).
func loadRunState(path string) *runState {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var rs runState
	if json.Unmarshal(b, &rs) != nil || rs.PID <= 0 {
		return nil
	}
	return &rs
}

// useOf says whether the mount described by rs uses target: as one of its
// images, as the evidence or the overlay file of an overlay mount, or as a
// file of a mounted image's chain (found by opening that image without
// locks, read-only).
func useOf(rs *runState, target string, same func(string) bool) (imageUse, bool) {
	u := imageUse{Mountpoint: rs.Mountpoint, PID: rs.PID, ReadOnly: rs.ReadOnly}
	if rs.Overlay != "" {
		if same(rs.Overlay) {
			return u, true
		}
		if len(rs.Images) > 0 && same(rs.Images[0]) {
			u.ReadOnly, u.Overlay = true, true
			return u, true
		}
	}
	for _, img := range rs.Images {
		if same(img) {
			return u, true
		}
	}
	tops := rs.Images
	if rs.Overlay != "" {
		tops = []string{rs.Overlay}
	}
	for _, top := range tops {
		img, err := qcow2.Open(top, qcow2.OpenOptions{ReadOnly: true, ForceShare: true})
		if err != nil {
			continue
		}
		files := img.Files()
		img.Close()
		for _, f := range files {
			if f != top && same(f) {
				// Backing and data files are held read-only by the mount.
				u.Via, u.ReadOnly = top, true
				return u, true
			}
		}
	}
	return imageUse{}, false
}

// maintError turns an error from a qcow2 maintenance function into the
// message the user sees. A lock conflict names what holds the image: the
// qcow2fs mount (mount point, mode, daemon pid, how to unmount) or else the
// processes that have the file open. name is the image as the user gave
// it; readOnly commands (which accept -U) say so.
func maintError(name string, err error, readOnly bool) error {
	var le *qcow2.LockError
	if !errors.As(err, &le) {
		return openError(name, err)
	}
	file := le.File
	shown := name
	if abs, aerr := filepath.Abs(name); aerr != nil || !sameFile(abs, file) {
		shown = file
	}
	hint := ""
	if readOnly {
		hint = ", or inspect it anyway with -U/--force-share"
	}
	if uses := findImageUses(file); len(uses) > 0 {
		u := uses[0]
		mode := "read-write"
		if u.ReadOnly {
			mode = "read-only"
		}
		pid := ""
		if u.PID > 0 {
			pid = fmt.Sprintf(" (daemon pid %d)", u.PID)
		}
		var what string
		switch {
		case u.Overlay:
			what = fmt.Sprintf("%s is the evidence of an overlay mount at %s%s", shown, u.Mountpoint, pid)
		case u.Via != "":
			what = fmt.Sprintf("%s is in the backing chain of %s, mounted at %s%s", shown, u.Via, u.Mountpoint, pid)
		default:
			what = fmt.Sprintf("%s is mounted %s at %s%s", shown, mode, u.Mountpoint, pid)
		}
		live := ""
		if u.Via == "" && !u.Overlay {
			live = liveHint(u.Mountpoint, u.ReadOnly)
		} else if u.Via != "" {
			live = fmt.Sprintf("; or merge %s into it without unmounting: qcow2fs commit %s (live)", u.Via, quoteArg(u.Via))
		}
		return fmt.Errorf("%s; unmount it first (qcow2fs unmount %s)%s%s", what, u.Mountpoint, live, hint)
	}
	msg := fmt.Sprintf("%s is in use by another process: %s", shown, le.What)
	if h := mounts.Holders(file); len(h) > 0 {
		msg += "; held open by " + strings.Join(h, ", ")
	}
	if readOnly {
		msg += " (-U/--force-share inspects it anyway)"
	}
	return errors.New(msg)
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
