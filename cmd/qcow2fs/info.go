package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const infoUsage = `Usage: qcow2fs info [--output human|json] [-U|--force-share] IMAGE

Describes IMAGE and every layer of its backing chain: format version,
virtual size, cluster size, features, refcount width, compression type,
dirty and corrupt flags, external data file, snapshots and bitmaps. It
lists every file the image would make qcow2fs open. The image is opened
read-only; nothing is written.
`

func cmdInfo(args []string) error {
	fs := newFlagSet("info", infoUsage)
	output := fs.String("output", "human", "output `FORMAT`: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "inspect an image another process has open for writing (its metadata may be in flux)")
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
		Warn:       func(msg string) { warnings = append(warnings, msg) },
	})
	if err != nil {
		return openError(path, err)
	}
	defer img.Close()
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", oneLine(w))
	}
	info := img.Info()
	if *output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	printInfo(os.Stdout, info, img.Files())
	return nil
}

// printInfo writes the human form: one block per layer of the chain, top
// first, then the list of host files.
func printInfo(w io.Writer, top *qcow2.Info, files []string) {
	for depth, in := 0, top; in != nil; depth, in = depth+1, in.Backing {
		if depth > 0 {
			fmt.Fprintf(w, "\nbacking layer %d:\n", depth)
		}
		printLayer(w, in)
	}
	fmt.Fprintln(w, "\nfiles opened:")
	for _, f := range files {
		fmt.Fprintf(w, "    %s\n", f)
	}
}

func printLayer(w io.Writer, in *qcow2.Info) {
	kv := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(kv, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("image", "%s", in.Filename)
	row("file format", "%s", in.Format)
	row("virtual size", "%s (%d bytes)", humanSize(in.VirtualSize), in.VirtualSize)
	row("disk size", "%s", humanSize(in.ActualSize))
	if in.Format == "qcow2" {
		compat := "0.10"
		if in.Version >= 3 {
			compat = "1.1"
		}
		row("version", "%d (compat %s)", in.Version, compat)
		row("cluster size", "%s (%d bytes)", humanSize(in.ClusterSize), in.ClusterSize)
		row("refcount bits", "%d", in.RefcountBits)
		row("compression type", "%s", in.CompressionType)
		row("lazy refcounts", "%v", in.LazyRefcounts)
		row("extended l2", "%v", in.ExtendedL2)
		features := "none"
		if len(in.Features) > 0 {
			features = strings.Join(in.Features, ", ")
		}
		row("features", "%s", features)
		row("dirty", "%v", in.Dirty)
		row("corrupt", "%v", in.Corrupt)
		if in.DataFile != "" {
			raw := ""
			if in.DataFileRaw {
				raw = " (data-file-raw)"
			}
			row("data file", "%s%s", in.DataFile, raw)
		}
		if in.BackingFile != "" {
			row("backing file", "%s (actual path: %s)", in.BackingFile, in.BackingFullPath)
			if in.BackingFormat != "" {
				row("backing file format", "%s", in.BackingFormat)
			}
		}
		if len(in.Bitmaps) > 0 {
			row("bitmaps", "%s", strings.Join(in.Bitmaps, ", "))
		}
	}
	kv.Flush()
	if len(in.Snapshots) > 0 {
		fmt.Fprintln(w, "snapshots:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "    ID\tNAME\tDISK SIZE\tVM STATE\tDATE\tVM CLOCK")
		for _, s := range in.Snapshots {
			date := time.Unix(int64(s.DateSec), int64(s.DateNsec)).Format("2006-01-02 15:04:05")
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Name, humanSize(s.DiskSize),
				humanSize(int64(s.VMStateSize)), date, vmClock(s.VMClockNsec))
		}
		tw.Flush()
	}
}

// vmClock formats a guest clock like qemu-img: hhhh:mm:ss.mmm.
func vmClock(ns uint64) string {
	ms := ns / 1e6
	return fmt.Sprintf("%04d:%02d:%02d.%03d", ms/3600000, ms/60000%60, ms/1000%60, ms%1000)
}
