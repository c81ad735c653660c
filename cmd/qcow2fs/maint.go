// Shared pieces of the offline maintenance commands (create, check,
// snapshot, resize, map, commit, rebase, bitmap, backup): size and -o parsing, the progress
// bar, and the explanation of a lock conflict that names the qcow2fs mount
// (or the process) holding the image.

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/qcow2"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

func init() {
	// Registered here rather than in main.go's map so the maintenance
	// commands live in files of their own.
	commands["create"] = cmdCreate
	commands["check"] = cmdCheck
	commands["snapshot"] = cmdSnapshot
	commands["resize"] = cmdResize
	commands["map"] = cmdMap
	commands["commit"] = cmdCommit
	commands["rebase"] = cmdRebase
	commands["bitmap"] = cmdBitmap
	commands["backup"] = cmdBackup
	commands["convert"] = cmdConvert
}

// keyValue is one item of a -o list.
type keyValue struct{ Key, Value string }

// parseKeyValues splits qemu-img style option lists ("a=1,b=2"; a literal
// comma is written ",,") as given to one or more -o flags. A key without
// "=" gets the value "on" (as QEMU treats a bare boolean); "help" and "?"
// are returned as keys with an empty value.
func parseKeyValues(lists []string) ([]keyValue, error) {
	var out []keyValue
	for _, list := range lists {
		var items []string
		var cur strings.Builder
		for i := 0; i < len(list); i++ {
			if list[i] == ',' {
				if i+1 < len(list) && list[i+1] == ',' {
					cur.WriteByte(',')
					i++
					continue
				}
				items = append(items, cur.String())
				cur.Reset()
				continue
			}
			cur.WriteByte(list[i])
		}
		items = append(items, cur.String())
		for _, it := range items {
			if it == "" {
				continue
			}
			k, v, ok := strings.Cut(it, "=")
			k = strings.TrimSpace(k)
			switch {
			case k == "":
				return nil, fmt.Errorf("option %q has no name", it)
			case !ok && (k == "help" || k == "?"):
				v = ""
			case !ok:
				v = "on"
			}
			out = append(out, keyValue{Key: k, Value: v})
		}
	}
	return out, nil
}

// parseBoolValue reads an on/off option value the way QEMU does.
func parseBoolValue(key, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("option %s: want on or off, not %q", key, v)
}

// progress is the -p/--progress bar on stderr. It stays silent (nil bar)
// unless asked for and stderr is a terminal, so logs and pipes get no
// control characters.
type progress struct {
	bar  *progressbar.ProgressBar
	max  int64
	done bool
}

// stderrIsTerminal is a variable so tests can pretend.
var stderrIsTerminal = func() bool { return term.IsTerminal(int(os.Stderr.Fd())) }

func newProgress(enabled bool, what string) *progress {
	p := &progress{}
	if !enabled || !stderrIsTerminal() {
		return p
	}
	p.max = 100
	p.bar = progressbar.NewOptions64(p.max,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }),
	)
	return p
}

// update is the func(done, total) the qcow2 package calls. Totals are in
// whatever unit the operation counts (bytes, clusters, L1 entries) and may
// change as it goes, so the bar shows a percentage.
func (p *progress) update(done, total int64) {
	if p.bar == nil || p.done || total <= 0 {
		return
	}
	if total != p.max {
		p.max = total
		p.bar.ChangeMax64(total)
	}
	_ = p.bar.Set64(min(done, total))
	if done >= total {
		p.done = true
	}
}

// finish completes the bar after a successful run (some operations never
// report their last step).
func (p *progress) finish() {
	if p.bar == nil || p.done {
		return
	}
	p.done = true
	_ = p.bar.Finish()
}

// abort ends the bar's line after a failure so the error starts on a line
// of its own.
func (p *progress) abort() {
	if p.bar == nil || p.done {
		return
	}
	p.done = true
	fmt.Fprintln(os.Stderr)
}

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

// checkFormatFlag accepts -f qcow2 (qemu-img's habit) and nothing else.
func checkFormatFlag(cmd, format string) error {
	if format != "" && format != "qcow2" {
		return usagef("%s: only the qcow2 format is supported, not %q", cmd, format)
	}
	return nil
}

// negativeSizeArgs moves arguments that look like a negative size
// ("-1G", "-512") behind a "--", so the flag parser does not take them for
// short options (resize IMAGE -1G).
func negativeSizeArgs(args []string) []string {
	var flags, sizes []string
	for _, a := range args {
		if len(a) > 1 && a[0] == '-' && (a[1] >= '0' && a[1] <= '9' || a[1] == '.') {
			sizes = append(sizes, a)
			continue
		}
		flags = append(flags, a)
	}
	if len(sizes) == 0 {
		return args
	}
	for _, a := range flags {
		if a == "--" {
			// The caller already ends flags explicitly: keep the order.
			return args
		}
	}
	return append(append(flags, "--"), sizes...)
}
