package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

const statusUsage = `Usage: qcow2fs status [--output human|json]

Lists the qcow2fs mounts this process can see (/proc/self/mountinfo): the
mount point, the mode (ro, rw, or rw with an overlay), the daemon's pid, its
state, the source and the images. A state of "stale" means the daemon died;
the next mount of that mount point or image cleans it up. The pid is known
for mounts made by this user (run state in /run/qcow2fs, or
$XDG_RUNTIME_DIR/qcow2fs for other users); otherwise it shows as "-".
`

// mountStatus is one line of qcow2fs status.
type mountStatus struct {
	Mountpoint string   `json:"mountpoint"`
	Source     string   `json:"source"`
	Mode       string   `json:"mode"` // "ro" or "rw", as the kernel has it
	Overlay    string   `json:"overlay,omitempty"`
	PID        int      `json:"pid,omitempty"` // 0: unknown
	State      string   `json:"state"`         // serving, stale, not-responding, unknown
	Images     []string `json:"images,omitempty"`
	Partitions bool     `json:"partitions,omitempty"`
	Options    string   `json:"options"` // the mount's options (ro,nosuid,nodev,...)
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
	entries, err := readMountinfo()
	if err != nil {
		return err
	}
	list := []mountStatus{}
	for _, e := range entries {
		if e.FsType == fsType {
			list = append(list, statusOf(e))
		}
	}
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	printStatus(os.Stdout, list)
	return nil
}

// statusOf joins a mountinfo entry with its daemon's run state.
func statusOf(e mountEntry) mountStatus {
	st := mountStatus{Mountpoint: e.MountPoint, Source: e.Source, Mode: "rw", Options: e.Options}
	for _, o := range strings.Split(e.Options, ",") {
		if o == "ro" {
			st.Mode = "ro"
		}
	}
	if rs := readRunState(e.MountPoint); rs != nil {
		st.PID, st.State = rs.PID, "serving"
		st.Images, st.Overlay, st.Partitions = rs.Images, rs.Overlay, rs.Partitions
		return st
	}
	// No live daemon on record: ask the mount itself. A dead daemon's
	// mount answers ENOTCONN at once; a hung one may not answer at all.
	st.State = probeMount(e.MountPoint, 2*time.Second)
	return st
}

// probeMount asks the mount's daemon for statfs (never answered from the
// kernel's caches, unlike stat) without waiting forever on a daemon that
// does not answer.
func probeMount(mp string, timeout time.Duration) string {
	res := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		res <- unix.Statfs(mp, &st)
	}()
	select {
	case err := <-res:
		switch {
		case err == nil:
			return "serving" // by a daemon we have no record of (another user's, or a foreground one)
		case errors.Is(err, syscall.ENOTCONN):
			return "stale"
		default:
			return "unknown"
		}
	case <-time.After(timeout):
		return "not-responding"
	}
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
		pid := "-"
		if st.PID != 0 {
			pid = strconv.Itoa(st.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", st.Mountpoint, mode, pid, st.State, st.Source)
		// A directory source: name the images it brought.
		if len(st.Images) > 1 || len(st.Images) == 1 && st.Images[0] != st.Source {
			for _, img := range st.Images {
				fmt.Fprintf(tw, "\t\t\t\t  image %s\n", img)
			}
		}
	}
	tw.Flush()
}
