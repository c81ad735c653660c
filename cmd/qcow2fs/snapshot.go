// qcow2fs snapshot: listing internal snapshots (qemu-img snapshot -l's table,
// or JSON) and the snapshot subcommands that change them.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

const snapshotUsage = `Usage: qcow2fs snapshot list [--output human|json] [-U] IMAGE
       qcow2fs snapshot create NAME IMAGE
       qcow2fs snapshot create --external OVERLAY IMAGE
       qcow2fs snapshot delete NAME|ID [-p] IMAGE
       qcow2fs snapshot apply NAME|ID [-p] IMAGE
  (qemu-img's forms work too: -l IMAGE, -c NAME IMAGE, -d NAME IMAGE, -a NAME IMAGE)

Manages the internal snapshots of IMAGE, compatibly with "qemu-img
snapshot": create records the current state (a new ID, NAME, the date, the
disk size); apply reverts the image to a snapshot, including its disk size;
delete frees what only the snapshot used. A snapshot is found by name, or
failing that by ID. list prints ID, name, VM state size, date, VM clock and
instruction count like "qemu-img snapshot -l" (nothing when there are
none). A mounted image shows its snapshots read-only as NAME@SNAPSHOT.raw.

create and delete work on a mounted image too (live): the mount's daemon
takes or deletes the snapshot between requests (it suspends the mount,
changes the snapshot table and resumes, see qcow2fs suspend), and
NAME@SNAPSHOT.raw appears or disappears at once. --timeout bounds the
wait for the requests in flight (default 10s). What a file system on the
disk shows in the snapshot is consistent only if it was frozen meanwhile
(fsfreeze -f before, fsfreeze -u after). apply needs the image unmounted
(or the mount suspended).

create --external OVERLAY IMAGE takes an external snapshot instead: it
creates OVERLAY, a new qcow2 file (never an existing one) whose backing
file is IMAGE (backing format qcow2; IMAGE's virtual size, cluster size
and L2 entry format; IMAGE's owner and mode), and from then on the writes
go to OVERLAY while IMAGE keeps its content. On a mounted image this is
live: between requests, the daemon switches the mount's file (same name,
e.g. vm.raw) to OVERLAY and holds IMAGE read-only as its backing file (a
shared read lock: sha256sum, qemu-img -U, a backup may read it, no one may
write it). The snapshot files of IMAGE leave the mount meanwhile (they
are IMAGE's, not OVERLAY's). qcow2fs status shows the layer a mount
serves. Merge OVERLAY back with qcow2fs commit OVERLAY (live too).
Unmounting keeps the disk in OVERLAY: mount OVERLAY afterwards (not IMAGE,
which shows the old disk; an fstab line naming IMAGE must change), or
commit before unmounting.
`

// snapshotJSON is one snapshot in list --output json, with the field names
// of qemu-img info --output=json (plus the disk size).
type snapshotJSON struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	VMStateSize uint64  `json:"vm-state-size"`
	DateSec     uint32  `json:"date-sec"`
	DateNsec    uint32  `json:"date-nsec"`
	VMClockSec  uint64  `json:"vm-clock-sec"`
	VMClockNsec uint64  `json:"vm-clock-nsec"`
	ICount      *uint64 `json:"icount,omitempty"`
	DiskSize    int64   `json:"disk-size"`
}

func cmdSnapshot(args []string) error {
	fs := newFlagSet("snapshot", snapshotUsage)
	list := fs.BoolP("list", "l", false, "list the snapshots")
	create := fs.StringP("create", "c", "", "create snapshot `NAME`")
	del := fs.StringP("delete", "d", "", "delete snapshot `NAME` (or ID)")
	apply := fs.StringP("apply", "a", "", "apply snapshot `NAME` (or ID)")
	output := fs.String("output", "human", "list output `FORMAT`: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "list the snapshots of an image another process has open for writing")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar (delete, apply) when stderr is a terminal")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	external := fs.Bool("external", false, "create: take an external snapshot, NAME is the new overlay file")
	timeout := fs.Duration("timeout", defaultSuspendTimeout, "create, delete of a mounted image: give up when its requests in flight have not drained after `DURATION`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("snapshot", *format); err != nil {
		return err
	}
	if *output != "human" && *output != "json" {
		return usagef("snapshot: --output must be human or json, not %q", *output)
	}
	// The action: one of the flags, or a leading word.
	var action, name string
	n := 0
	if *list {
		action, n = "list", n+1
	}
	for _, f := range []struct{ act, val, flag string }{{"create", *create, "create"}, {"delete", *del, "delete"}, {"apply", *apply, "apply"}} {
		if fs.Changed(f.flag) {
			action, name, n = f.act, f.val, n+1
		}
	}
	rest := fs.Args()
	if n > 1 {
		return usagef("snapshot: give only one of -l, -c, -d, -a")
	}
	if n == 0 {
		if len(rest) == 0 {
			return usagef("snapshot: need an action: list, create, delete or apply (see qcow2fs snapshot --help)")
		}
		action, rest = rest[0], rest[1:]
		switch action {
		case "list", "ls":
			action = "list"
		case "create", "delete", "apply":
			if len(rest) != 2 {
				return usagef("snapshot %s: need NAME and IMAGE", action)
			}
			name, rest = rest[0], rest[1:]
		default:
			return usagef("snapshot: unknown action %q (list, create, delete or apply)", action)
		}
	}
	if len(rest) != 1 {
		return usagef("snapshot %s: need exactly one IMAGE (see qcow2fs snapshot --help)", action)
	}
	if action != "list" && name == "" {
		return usagef("snapshot %s: the snapshot name must not be empty", action)
	}
	if action != "list" && *forceShare {
		return usagef("snapshot %s: -U/--force-share is only for list", action)
	}
	if *external && action != "create" {
		return usagef("snapshot %s: --external is only for create", action)
	}
	path := rest[0]
	switch action {
	case "list":
		return snapshotList(path, *output == "json", *forceShare)
	case "create":
		if *external {
			return snapshotExternal(name, path, *timeout, *quiet)
		}
		err := qcow2.SnapshotCreate(path, name)
		if isLockError(err) {
			// Mounted: the mount's daemon takes it between requests.
			if handled, lerr := liveSnapshot(opSnapshotCreate, name, path, *timeout); handled {
				return lerr
			}
		}
		if err != nil {
			return maintError(path, err, false)
		}
		return nil
	}
	p := newProgress(*prog, action+" snapshot")
	mo := qcow2.MaintenanceOptions{Progress: p.update}
	var err error
	if action == "delete" {
		err = qcow2.SnapshotDelete(path, name, mo)
		if isLockError(err) {
			if handled, lerr := liveSnapshot(opSnapshotDelete, name, path, *timeout); handled {
				p.abort()
				return lerr
			}
		}
	} else {
		err = qcow2.SnapshotApply(path, name, mo)
	}
	if err != nil {
		p.abort()
		return maintError(path, err, false)
	}
	p.finish()
	return nil
}

func snapshotList(path string, asJSON, forceShare bool) error {
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true, ForceShare: forceShare})
	if err != nil {
		return maintError(path, err, true)
	}
	snaps := img.Snapshots()
	img.Close()
	if asJSON {
		out := make([]snapshotJSON, 0, len(snaps))
		for _, s := range snaps {
			j := snapshotJSON{ID: s.ID, Name: s.Name, VMStateSize: s.VMStateSize, DateSec: s.DateSec, DateNsec: s.DateNsec,
				VMClockSec: s.VMClockNsec / 1e9, VMClockNsec: s.VMClockNsec % 1e9, DiskSize: s.DiskSize}
			if s.ICount != math.MaxUint64 {
				ic := s.ICount
				j.ICount = &ic
			}
			out = append(out, j)
		}
		b, err := json.MarshalIndent(out, "", "    ")
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	}
	writeSnapshotList(os.Stdout, snaps)
	return nil
}

// writeSnapshotList prints the table of qemu-img snapshot -l, column for
// column (dates in local time).
func writeSnapshotList(w io.Writer, snaps []qcow2.SnapshotInfo) {
	if len(snaps) == 0 {
		return
	}
	fmt.Fprintln(w, "Snapshot list:")
	fmt.Fprintf(w, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	for _, s := range snaps {
		date := time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
		secs := s.VMClockNsec / 1e9
		clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, secs/60%60, secs%60, s.VMClockNsec/1e6%1000)
		icount := ""
		if s.ICount != math.MaxUint64 {
			icount = strconv.FormatUint(s.ICount, 10)
		}
		// (Names are escaped and bounded: they come from the image.)
		fmt.Fprintf(w, "%-9s %-16s %8s%20s%13s%11s\n", imgtext.Escape(s.ID), imgtext.Escape(s.Name), units.Format(s.VMStateSize), date, clock, icount)
	}
}
