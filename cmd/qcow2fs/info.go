// qcow2fs info: the description of an image chain in qemu-img's terms,
// human or JSON, with the partition table and host files; also the text of
// NAME.info in a mount.

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
	"github.com/qcow2fs/qcow2fs/parttable"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

const infoUsage = `Usage: qcow2fs info [--output human|json] [-U|--force-share] [--no-backing] IMAGE

Describes IMAGE and every layer of its backing chain: format version,
virtual size, cluster size, features, refcount width, compression type,
dirty and corrupt flags, external data file, snapshots and bitmaps, and
the partition table (MBR or GPT) of the virtual disk, with the file each
partition appears as under "qcow2fs mount --partitions". It lists every
file the image makes qcow2fs open (with --no-backing: the files it names
but that are not opened). The image is opened read-only; nothing is
written.
`

func cmdInfo(args []string) error {
	fs := newFlagSet("info", infoUsage)
	output := fs.String("output", "human", "output `FORMAT`: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "inspect an image another process has open for writing (its metadata may be in flux)")
	noBacking := fs.Bool("no-backing", false, "open no file the image names (backing file, data file): for untrusted images")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *output != "human" && *output != "json" {
		return usagef("info: --output must be human or json, not %q", *output)
	}
	if fs.NArg() != 1 {
		return usagef("info: need exactly one IMAGE (see qcow2fs info --help)")
	}
	path := fs.Arg(0)
	var warnings []string
	img, err := qcow2.Open(path, qcow2.OpenOptions{
		ReadOnly:   true,
		ForceShare: *forceShare,
		NoBacking:  *noBacking,
		NoDataFile: *noBacking,
		Warn:       func(msg string) { warnings = append(warnings, msg) },
	})
	if err != nil {
		return maintError(path, err, true)
	}
	defer img.Close()
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", daemon.OneLine(w))
	}
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(describe(img))
	}
	writeInfo(os.Stdout, img, fusefs.Stem(path))
	return nil
}

// infoJSON is what info --output json prints: qemu-img's field names for
// the chain, plus the partition table and the host files.
type infoJSON struct {
	*qcow2.Info
	PartitionTable *parttable.Table `json:"partition-table,omitempty"`
	PartitionError string           `json:"partition-table-error,omitempty"`
	FilesOpened    []string         `json:"files-opened"`
	NotOpened      []string         `json:"files-named-not-opened,omitempty"`
}

func describe(img *qcow2.Image) infoJSON {
	in := img.Info()
	out := infoJSON{Info: in, FilesOpened: img.Files(), NotOpened: namedNotOpened(in)}
	t, err := parttable.Read(img, img.Size())
	switch {
	case err == nil:
		out.PartitionTable = t
	case !errors.Is(err, parttable.ErrNoTable):
		out.PartitionError = err.Error()
	}
	return out
}

// namedNotOpened lists the files an image chain names but that were not
// opened (--no-backing): what a trusting open would have read.
func namedNotOpened(top *qcow2.Info) []string {
	var out []string
	for in := top; in != nil; in = in.Backing {
		if in.BackingFile != "" && in.Backing == nil {
			// Where QEMU (and a mount without --no-backing) would look:
			// relative names resolve against the image's directory.
			p := in.BackingFullPath
			if p == "" {
				p = in.BackingFile
				if !filepath.IsAbs(p) {
					p = filepath.Join(filepath.Dir(in.Filename), p)
				}
			}
			out = append(out, p)
		}
	}
	return out
}

// infoText is the text of NAME.info in a mount: what info prints.
func infoText(img *qcow2.Image, stem string) []byte {
	var b bytes.Buffer
	writeInfo(&b, img, stem)
	return b.Bytes()
}

// writeInfo writes the human form: one block per layer of the chain, top
// first, the partition table (its files named after stem), then the list
// of host files.
func writeInfo(w io.Writer, img *qcow2.Image, stem string) {
	d := describe(img)
	for depth, in := 0, d.Info; in != nil; depth, in = depth+1, in.Backing {
		if depth > 0 {
			fmt.Fprintf(w, "\nbacking layer %d:\n", depth)
			stem = "" // only the top image's snapshots appear in a mount
		}
		printLayer(w, in, stem)
	}
	fmt.Fprintln(w)
	switch {
	case d.PartitionTable != nil:
		printPartitions(w, d.PartitionTable, stem)
	case d.PartitionError != "":
		fmt.Fprintf(w, "partition table: unusable: %s\n", imgtext.EscapePath(d.PartitionError))
	default:
		fmt.Fprintln(w, "partition table: none")
	}
	fmt.Fprintln(w, "\nfiles opened:")
	for _, f := range d.FilesOpened {
		fmt.Fprintf(w, "    %s\n", imgtext.EscapePath(f))
	}
	if len(d.NotOpened) > 0 {
		fmt.Fprintln(w, "files named in the image but not opened (--no-backing):")
		for _, f := range d.NotOpened {
			fmt.Fprintf(w, "    %s (backing file)\n", imgtext.EscapePath(f))
		}
	}
}

// printPartitions prints the table with byte offsets (what dd and losetup
// --offset take) and the file each partition appears as with --partitions.
func printPartitions(w io.Writer, t *parttable.Table, stem string) {
	fmt.Fprintf(w, "partition table: %s, disk id %s, %d-byte sectors\n", t.Scheme, t.DiskID, t.SectorSize)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    #\tFILE\tSTART (bytes)\tSTART (sectors)\tSIZE\tTYPE\tNAME / FLAGS")
	for _, p := range t.Partitions {
		file := stem + fmt.Sprintf("-p%d.raw", p.Number)
		var flags []string
		if p.Name != "" {
			flags = append(flags, strconv.Quote(p.Name))
		}
		if p.Extended {
			file = "-"
			flags = append(flags, "extended (container of logical partitions)")
		}
		if p.Bootable {
			flags = append(flags, "bootable")
		}
		if p.Truncated {
			flags = append(flags, "truncated at the end of the disk")
		}
		typ := p.Type
		if p.TypeName != "" {
			typ += " " + p.TypeName
		}
		fmt.Fprintf(tw, "    %d\t%s\t%d\t%d\t%s\t%s\t%s\n", p.Number, file, p.Start, p.Start/int64(t.SectorSize),
			units.Format(uint64(p.Size)), typ, strings.Join(flags, ", "))
	}
	tw.Flush()
	for _, warn := range t.Warnings {
		fmt.Fprintf(w, "    warning: %s\n", warn)
	}
}

// printLayer prints one layer of the chain. Every string read from the
// image goes through imgtext. stem is what the layer's files are named
// after in a mount ("" for backing layers, whose snapshots do not appear).
func printLayer(w io.Writer, in *qcow2.Info, stem string) {
	kv := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(kv, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("image", "%s", imgtext.EscapePath(in.Filename))
	row("file format", "%s", in.Format)
	row("virtual size", "%s (%d bytes)", units.Format(uint64(in.VirtualSize)), in.VirtualSize)
	row("disk size", "%s", units.Format(uint64(in.ActualSize)))
	if in.Format == "qcow2" {
		compat := "0.10"
		if in.Version >= 3 {
			compat = "1.1"
		}
		row("version", "%d (compat %s)", in.Version, compat)
		row("cluster size", "%s (%d bytes)", units.Format(uint64(in.ClusterSize)), in.ClusterSize)
		row("refcount bits", "%d", in.RefcountBits)
		row("compression type", "%s", in.CompressionType)
		row("lazy refcounts", "%v", in.LazyRefcounts)
		row("extended l2", "%v", in.ExtendedL2)
		features := "none"
		if len(in.Features) > 0 {
			features = strings.Join(escapeAll(in.Features), ", ")
		}
		row("features", "%s", features)
		row("dirty", "%v", in.Dirty)
		row("corrupt", "%v", in.Corrupt)
		if in.DataFile != "" {
			raw := ""
			if in.DataFileRaw {
				raw = " (data-file-raw)"
			}
			row("data file", "%s%s", imgtext.EscapePath(in.DataFile), raw)
		}
		if in.BackingFile != "" && in.BackingFullPath == "" {
			row("backing file", "%s (not opened: --no-backing)", imgtext.EscapePath(in.BackingFile))
		} else if in.BackingFile != "" {
			row("backing file", "%s (actual path: %s)", imgtext.EscapePath(in.BackingFile), imgtext.EscapePath(in.BackingFullPath))
			if in.BackingFormat != "" {
				row("backing file format", "%s", imgtext.Escape(in.BackingFormat))
			}
		}
		if len(in.BitmapDetails) > 0 {
			var list []string
			for _, b := range in.BitmapDetails {
				d := fmt.Sprintf("granularity %d", b.Granularity)
				if len(b.Flags) > 0 {
					d = strings.Join(b.Flags, ", ") + "; " + d
				}
				list = append(list, fmt.Sprintf("%s (%s)", imgtext.Escape(b.Name), d))
			}
			row("bitmaps", "%s", strings.Join(list, ", "))
		} else if len(in.Bitmaps) > 0 {
			row("bitmaps", "%s", strings.Join(escapeAll(in.Bitmaps), ", "))
		}
	}
	kv.Flush()
	printSnapshots(w, in.Snapshots, stem)
}

// printSnapshots prints the snapshot table and, for the top image, the
// file each snapshot appears as in a mount (names too long for a file name
// are shortened there: this is where to look the file up). Snapshots a
// mount does not show are listed with the reason.
func printSnapshots(w io.Writer, snaps []qcow2.SnapshotInfo, stem string) {
	if len(snaps) == 0 {
		return
	}
	fmt.Fprintln(w, "snapshots:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "    ID\tNAME\tDISK SIZE\tVM STATE\tDATE\tVM CLOCK"
	if stem != "" {
		head += "\tFILE"
	}
	fmt.Fprintln(tw, head)
	var notes []string
	for _, s := range snaps {
		date := time.Unix(int64(s.DateSec), int64(s.DateNsec)).Format("2006-01-02 15:04:05")
		line := fmt.Sprintf("    %s\t%s\t%s\t%s\t%s\t%s", imgtext.Escape(s.ID), imgtext.Escape(s.Name), units.Format(uint64(s.DiskSize)),
			units.Format(s.VMStateSize), date, vmClock(s.VMClockNsec))
		id := imgtext.Escape(s.ID)
		if s.Problem != "" {
			notes = append(notes, fmt.Sprintf("snapshot ID %s cannot be used: %s", id, s.Problem))
		}
		if stem != "" {
			file := "-"
			if s.Problem == "" {
				f, shortened, err := fusefs.SnapshotFile(stem, s.Name)
				switch {
				case err != nil:
					notes = append(notes, fmt.Sprintf("snapshot ID %s is not shown in a mount: %s", id, err))
				case shortened:
					file = imgtext.Escape(f)
					notes = append(notes, fmt.Sprintf("snapshot ID %s: its name is too long for a file name, so its file name is shortened", id))
				default:
					file = imgtext.Escape(f)
				}
			}
			line += "\t" + file
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintf(w, "    note: %s\n", n)
	}
}

func escapeAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = imgtext.Escape(s)
	}
	return out
}

// vmClock formats a guest clock like qemu-img: hhhh:mm:ss.mmm.
func vmClock(ns uint64) string {
	ms := ns / 1e6
	return fmt.Sprintf("%04d:%02d:%02d.%03d", ms/3600000, ms/60000%60, ms/1000%60, ms%1000)
}
