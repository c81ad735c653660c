// qcow2fs check: the consistency check and repair of an image, with
// qemu-img check's exit codes and human summary (a panic exits 1, never 2).

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const checkUsage = `Usage: qcow2fs check [-r|--repair leaks|all] [--output human|json] [-U] [-p] [-q] IMAGE

Checks the consistency of IMAGE's metadata as "qemu-img check" does:
reference counts against the references the tables hold (leaked clusters,
refcounts too low), L1/L2 entries outside the file or unaligned,
overlapping metadata, wrong QCOW_OFLAG_COPIED flags. The findings are
printed on stderr, the summary on stdout (--output json: qemu-img's JSON).

--repair leaks frees leaked clusters; --repair all also fixes refcounts that
are too low and COPIED flags, rebuilding the refcount structure if needed.
The image is then checked again.

Exit codes, as qemu-img check's: 0 no problem found, 1 the check could not
run (metadata QEMU refuses to open, such as invalid persistent bitmaps, an
I/O error, or an internal error), 2 corruptions found (after a repair:
left), 3 only leaked clusters found.
`

// checkImage is qcow2.Check (a variable for tests).
var checkImage = qcow2.Check

// runCheck runs the check; a panic (a bug, say on an image nobody
// foresaw) becomes an error, so the command exits 1, "the check could not
// run", and never with the Go runtime's 2, which here means "corruptions
// found".
func runCheck(path string, o qcow2.CheckOptions) (res *qcow2.CheckResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%s: check failed: internal error: %v (please report this bug)", path, r)
		}
	}()
	return checkImage(path, o)
}

func cmdCheck(args []string) error {
	fs := newFlagSet("check", checkUsage)
	repair := fs.StringP("repair", "r", "", "repair `MODE`: leaks or all")
	output := fs.String("output", "human", "output `FORMAT`: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "check an image another process has open for writing (without repair; results may be inconsistent)")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar when stderr is a terminal")
	quiet := fs.BoolP("quiet", "q", false, "print no summary (the exit code tells)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("check", *format); err != nil {
		return err
	}
	switch {
	case *output != "human" && *output != "json":
		return usagef("check: --output must be human or json, not %q", *output)
	case *repair != "" && *repair != "leaks" && *repair != "all":
		return usagef("check: --repair must be leaks or all, not %q", *repair)
	case *repair != "" && *forceShare:
		return usagef("check: -U/--force-share is for a read-only check; it cannot be combined with --repair")
	case fs.NArg() != 1:
		return usagef("check: need exactly one IMAGE (see qcow2fs check --help)")
	}
	path := fs.Arg(0)
	p := newProgress(*prog, "checking")
	res, err := runCheck(path, qcow2.CheckOptions{Repair: *repair, ForceShare: *forceShare, Progress: p.update})
	if err != nil {
		p.abort()
		return maintError(path, err, *repair == "")
	}
	p.finish()
	res.Filename = path // as qemu-img shows it: the name given
	for _, m := range res.Messages {
		fmt.Fprintln(os.Stderr, m)
	}
	if *output == "json" {
		b, err := json.MarshalIndent(res, "", "    ")
		if err != nil {
			return err
		}
		fmt.Println(string(b))
	} else if !*quiet {
		writeCheckHuman(os.Stdout, res)
	}
	if code := res.ExitCode(); code != 0 {
		return &exitCode{code}
	}
	return nil
}

// writeCheckHuman prints the summary the way qemu-img check does, so
// scripts and eyes used to it read it the same.
func writeCheckHuman(w io.Writer, r *qcow2.CheckResult) {
	if r.CorruptionsFixed > 0 || r.LeaksFixed > 0 {
		fmt.Fprintf(w, "The following inconsistencies were found and repaired:\n\n"+
			"    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n",
			r.LeaksFixed, r.CorruptionsFixed)
	}
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		fmt.Fprintln(w, "No errors were found on the image.")
	} else {
		if r.Corruptions > 0 {
			fmt.Fprintf(w, "\n%d errors were found on the image.\n"+
				"Data may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks > 0 {
			fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\n"+
				"This means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors > 0 {
			fmt.Fprintf(w, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		a := float64(r.AllocatedClusters)
		fmt.Fprintf(w, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters, a*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/a, float64(r.CompressedClusters)*100/a)
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
}
