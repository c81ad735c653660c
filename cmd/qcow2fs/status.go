// qcow2fs status: every qcow2fs mount with its state and daemon, as a table
// (names made safe for a terminal) or JSON.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/qcow2fs/qcow2fs/fusefs"
)

const statusUsage = `Usage: qcow2fs status [--output human|json]

Lists the qcow2fs mounts this process can see (/proc/self/mountinfo): the
mount point, the mode (ro, rw, or rw with an overlay), the daemon's pid, its
state, the source and the images (the layer each serves: after a live
external snapshot, the overlay, with the image it was taken of). The state
is "serving" when the daemon answers, "suspended" after qcow2fs suspend (its
requests wait until qcow2fs resume), "stale" when it died (the next mount of
that mount point or image cleans it up), and "not responding" when it is
stopped or does not answer within a few seconds (status never waits longer
on a mount). The pid is
known for mounts made by this user (run state in /run/qcow2fs for root;
for other users $XDG_RUNTIME_DIR/qcow2fs, or /tmp/qcow2fs-UID when it is
unset: a 0700 directory of theirs); otherwise it shows as "-".
Run-state files of daemons that died are removed.
`

// mountStatus is one line of qcow2fs status.
type mountStatus struct {
	Mountpoint string   `json:"mountpoint"`
	Source     string   `json:"source"`
	Mode       string   `json:"mode"` // "ro" or "rw", as the kernel has it
	Overlay    string   `json:"overlay,omitempty"`
	PID        int      `json:"pid,omitempty"` // 0: unknown
	State      string   `json:"state"`         // serving, suspended, stale, not-responding, unknown
	Why        string   `json:"why,omitempty"` // for not-responding: stopped, or no answer in time
	Images     []string `json:"images,omitempty"`
	// Mounted: the images as mounted, when a live external snapshot or
	// commit switched any to another layer; Images are the layers served.
	Mounted    []string `json:"mounted,omitempty"`
	Partitions bool     `json:"partitions,omitempty"`
	Options    string   `json:"options"`             // the mount's options (ro,nosuid,nodev,...)
	Transport  string   `json:"transport,omitempty"` // classic or io_uring
}

func cmdStatus(args []string) error {
	fs := newFlagSet("status", statusUsage)
	output := fs.String("output", "human", "output `FORMAT`: human or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *output != "human" && *output != "json" {
		return usagef("status: --output must be human or json, not %q", *output)
	}
	if fs.NArg() != 0 {
		return usagef("status takes no arguments")
	}
	sweepRunStates()
	entries, err := qcow2fsMounts()
	if err != nil {
		return err
	}
	list := []mountStatus{}
	for _, h := range assessMounts(entries, true) {
		list = append(list, statusOf(h))
	}
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	printStatus(os.Stdout, list)
	return nil
}

// statusOf joins a mount's entry, state and daemon's run state.
func statusOf(h mountHealth) mountStatus {
	e := h.Entry
	st := mountStatus{Mountpoint: e.Point, Source: e.Source, Mode: "rw", Options: e.Options, State: h.State, Why: h.Why}
	for _, o := range strings.Split(e.Options, ",") {
		if o == "ro" {
			st.Mode = "ro"
		}
	}
	if rs := h.RS; rs != nil && h.State != stateStale {
		if rs.Suspended && h.State == stateServing {
			st.State = stateSuspended
		}
		st.PID = rs.PID
		st.Images, st.Overlay, st.Partitions = rs.Images, rs.Overlay, rs.Partitions
		if len(rs.Mounted) == len(rs.Images) {
			st.Mounted = rs.Mounted
		}
		st.Transport = rs.Transport
	}
	return st
}

func printStatus(w io.Writer, list []mountStatus) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no qcow2fs mounts")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MOUNTPOINT\tMODE\tPID\tSTATE\tSOURCE")
	for _, st := range list {
		mode := st.Mode
		if st.Overlay != "" {
			mode += " (overlay " + st.Overlay + ")"
		}
		if st.Partitions {
			mode += " +partitions"
		}
		if st.Transport == fusefs.TransportURing {
			mode += " +io_uring"
		}
		pid := "-"
		if st.PID != 0 {
			pid = strconv.Itoa(st.PID)
		}
		state := strings.ReplaceAll(st.State, "-", " ")
		if st.Why != "" {
			state += " (" + st.Why + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", displayName(st.Mountpoint), displayName(mode), pid, state, displayName(st.Source))
		// A directory source: name the images it brought.
		if len(st.Images) > 1 || len(st.Images) == 1 && st.Images[0] != st.Source {
			for i, img := range st.Images {
				if st.Mounted != nil && st.Mounted[i] != img {
					// A live external snapshot (or commit) switched it.
					fmt.Fprintf(tw, "\t\t\t\t  image %s (active layer, in place of %s)\n", displayName(img), displayName(st.Mounted[i]))
					continue
				}
				fmt.Fprintf(tw, "\t\t\t\t  image %s\n", displayName(img))
			}
		}
	}
	tw.Flush()
}

// displayName makes a path safe for one line of a terminal: a name holding
// a newline, a tab or an escape sequence would break the table (or worse,
// drive the terminal). Such names are shown Go-quoted ("a\nb"); every
// other name as it is. JSON output carries the exact names.
func displayName(s string) string {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
