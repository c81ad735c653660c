// qcow2fs convert: copying the guest content of a qcow2 image or raw file
// into a new qcow2 image or sparse raw file, as qemu-img convert does.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const convertUsage = `Usage: qcow2fs convert [-f FMT] [-O qcow2|raw] [-c] [-o OPTIONS] [-B BACKING [-F FMT]]
                       [-S SPARSE] [--snapshot NAME] [-m THREADS] [-p] SOURCE TARGET

Copies the guest content of SOURCE (a qcow2 image with its backing chain
and external data file, or a raw file) into TARGET, a new qcow2 image or a
sparse raw file with SOURCE's virtual size, as "qemu-img convert" does. An
existing TARGET is replaced, as qemu-img replaces it, unless it is SOURCE
itself, a file of SOURCE's chain, or an image a qcow2fs mount uses.

Only what SOURCE's block status calls data is read; zero and unallocated
ranges are neither read nor written. Data that reads as zeros is left
unallocated (qcow2: whole clusters) or a hole (raw: runs of SPARSE bytes).

  -f FMT          SOURCE's format: qcow2 or raw (default: probed)
  -O FMT          TARGET's format: qcow2 (default) or raw
  -c              write TARGET's data clusters compressed (zlib, or zstd
                  with -o compression_type=zstd), compressed in parallel
  -o OPTIONS      TARGET's qcow2 options, as for "qcow2fs create" (cluster_size,
                  compat, extended_l2, compression_type, refcount_bits,
                  lazy_refcounts, preallocation, data_file, ...)
  -B BACKING      TARGET's backing file (a relative name is relative to
                  TARGET's directory); only what differs from it is written:
                  equal clusters stay unallocated, clusters that read as
                  zeros over backing data become zero clusters
  -F FMT          BACKING's format: qcow2 or raw (default: probed)
  -S SPARSE       the shortest run of zeros left unwritten, a multiple of
                  512 (default 4k); 0 writes everything (fully allocated)
  --snapshot NAME convert the internal snapshot NAME (or ID) of SOURCE
  -m THREADS      workers that read, compare and compress (default: one
                  per CPU); one writer writes in guest order
  -p              progress bar when stderr is a terminal

SOURCE is only read, with reader locks: it must not be mounted read-write
or open for writing in QEMU.
`

func cmdConvert(args []string) error {
	fs := newFlagSet("convert", convertUsage)
	format := fs.StringP("format", "f", "", "SOURCE `FORMAT`: qcow2 or raw")
	outFormat := fs.StringP("output-format", "O", "qcow2", "TARGET `FORMAT`: qcow2 or raw")
	compress := fs.BoolP("compress", "c", false, "write compressed clusters")
	opts := fs.StringArrayP("options", "o", nil, "TARGET `OPTIONS` (KEY=VALUE,...)")
	backing := fs.StringP("backing", "B", "", "TARGET's `BACKING` file")
	backingFmt := fs.StringP("backing-format", "F", "", "BACKING's `FORMAT`: qcow2 or raw")
	sparse := fs.StringP("sparse-size", "S", "4k", "shortest zero run left unwritten (`SIZE`)")
	snapshot := fs.String("snapshot", "", "convert the internal snapshot `NAME`")
	threads := fs.IntP("threads", "m", runtime.NumCPU(), "worker `THREADS`")
	prog := fs.BoolP("progress", "p", false, "show a progress bar when stderr is a terminal")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"-f", *format}, {"-F", *backingFmt}} {
		if f.v != "" && f.v != "qcow2" && f.v != "raw" {
			return usagef("convert: %s: format must be qcow2 or raw, not %q", f.name, f.v)
		}
	}
	if *outFormat != "qcow2" && *outFormat != "raw" {
		return usagef("convert: -O: format must be qcow2 or raw, not %q", *outFormat)
	}
	kvs, err := parseKeyValues(*opts)
	if err != nil {
		return usagef("convert: %v", err)
	}
	for _, kv := range kvs {
		if kv.Key == "help" || kv.Key == "?" {
			fmt.Print(createOptionHelp)
			return nil
		}
	}
	co, err := createOptions(kvs)
	if err != nil {
		return usagef("convert: %v", err)
	}
	if co.Size != 0 {
		return usagef("convert: -o size: TARGET takes SOURCE's virtual size")
	}
	if co.BackingFile != "" || co.BackingFormat != "" {
		return usagef("convert: give the backing file with -B and -F, not -o")
	}
	if *outFormat == "raw" {
		switch {
		case len(kvs) > 0:
			return usagef("convert: -o options are for a qcow2 TARGET")
		case *compress:
			return usagef("convert: -c needs a qcow2 TARGET (-O qcow2)")
		case *backing != "":
			return usagef("convert: -B needs a qcow2 TARGET (-O qcow2)")
		}
	}
	if fs.Changed("backing-format") && *backing == "" {
		return usagef("convert: -F goes with -B BACKING")
	}
	if *compress && co.DataFile != "" {
		return usagef("convert: -c: compressed clusters cannot live in an external data file")
	}
	sp, err := units.Parse(*sparse)
	if err != nil {
		return usagef("convert: -S: %v", err)
	}
	if sp%512 != 0 {
		return usagef("convert: -S: %d is not a multiple of 512", sp)
	}
	if *threads < 1 || *threads > 1024 {
		return usagef("convert: -m: THREADS must be 1 to 1024, not %d", *threads)
	}
	if *snapshot != "" && *format == "raw" {
		return usagef("convert: --snapshot needs a qcow2 SOURCE")
	}
	if fs.NArg() != 2 {
		return usagef("convert: need SOURCE and TARGET (see qcow2fs convert --help)")
	}
	src, target := fs.Arg(0), fs.Arg(1)
	if abs, err := filepath.Abs(target); err == nil {
		if _, err := os.Stat(abs); err == nil {
			if uses := findImageUses(abs); len(uses) > 0 {
				return fmt.Errorf("%s is used by the qcow2fs mount at %s; unmount it first (qcow2fs unmount %s)", target, uses[0].Mountpoint, uses[0].Mountpoint)
			}
		}
	}
	p := newProgress(*prog, "converting")
	err = qcow2.Convert(src, target, qcow2.ConvertOptions{
		SourceFormat: *format, Snapshot: *snapshot, OutputFormat: *outFormat, Create: co,
		Compress: *compress, BackingFile: *backing, BackingFormat: *backingFmt,
		Sparse: sp, Threads: *threads, Progress: p.update,
	})
	if err != nil {
		p.abort()
		return maintError(src, err, false)
	}
	p.finish()
	return nil
}
