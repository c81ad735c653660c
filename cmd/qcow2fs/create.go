// qcow2fs create: a new image from qemu-img create's -o options (and their
// "-o help"), printing qemu-img's "Formatting ..." line.

package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const createUsage = `Usage: qcow2fs create [-o OPTIONS] [-b BACKING [-F FMT]] [-p] [-q] IMAGE [SIZE]

Creates a qcow2 image, as "qemu-img create -f qcow2" does. SIZE is a number
of bytes or takes a suffix K, M, G, T, P or E (powers of 1024: 10G, 512M,
1.5T); without SIZE the image takes the size of its backing file. An
existing IMAGE is replaced (unless another process has it open).

Options for -o (comma-separated KEY=VALUE; -o may be repeated; "-o help"
lists them):
  cluster_size=SIZE        512 to 2M, a power of two (default 64K)
  compat=0.10|1.1          image format version (also v2|v3; default 1.1)
  lazy_refcounts=on|off    delay refcount updates (compat 1.1)
  extended_l2=on|off       32 subclusters per cluster (compat 1.1, clusters >= 16K)
  refcount_bits=N          1, 2, 4, 8, 16 (default), 32 or 64
  compression_type=zlib|zstd
  preallocation=off|metadata|falloc|full
  data_file=FILE           keep the guest data in an external file
  data_file_raw=on|off     keep that file a valid raw image
  backing_file=FILE, backing_fmt=qcow2|raw, size=SIZE   (like -b, -F, SIZE)
`

// createOptionHelp is what "-o help" prints.
const createOptionHelp = `Supported options:
  backing_file=<str>       - File name of a base image
  backing_fmt=<str>        - Image format of the base image (qcow2 or raw)
  cluster_size=<size>      - qcow2 cluster size
  compat=<str>             - Compatibility level (v2 [0.10], v3 [1.1])
  compression_type=<str>   - Compression method used for image cluster compression (zlib, zstd)
  data_file=<str>          - File name of an external data file
  data_file_raw=<bool>     - The external data file must stay valid as a raw image
  extended_l2=<bool>       - Extended L2 tables
  lazy_refcounts=<bool>    - Postpone refcount updates
  preallocation=<str>      - Preallocation mode (allowed values: off, metadata, falloc, full)
  refcount_bits=<num>      - Width of a reference count entry in bits
  size=<size>              - Virtual disk size
`

func cmdCreate(args []string) error {
	fs := newFlagSet("create", createUsage)
	opts := fs.StringArrayP("options", "o", nil, "image `OPTIONS` (KEY=VALUE,...)")
	backing := fs.StringP("backing", "b", "", "backing `FILE` (relative names are relative to the image's directory)")
	backingFmt := fs.StringP("backing-format", "F", "", "backing file `FORMAT`: qcow2 or raw (default: probed)")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	prog := fs.BoolP("progress", "p", false, "show a progress bar (preallocation) when stderr is a terminal")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("create", *format); err != nil {
		return err
	}
	kvs, err := parseKeyValues(*opts)
	if err != nil {
		return usagef("create: %v", err)
	}
	for _, kv := range kvs {
		if kv.Key == "help" || kv.Key == "?" {
			fmt.Print(createOptionHelp)
			return nil
		}
	}
	o, err := createOptions(kvs)
	if err != nil {
		return usagef("create: %v", err)
	}
	if fs.Changed("backing") {
		o.BackingFile = *backing
	}
	if fs.Changed("backing-format") {
		o.BackingFormat = *backingFmt
	}
	switch fs.NArg() {
	case 1:
	case 2:
		if o.Size, err = units.Parse(fs.Arg(1)); err != nil {
			return usagef("create: %v", err)
		}
	default:
		return usagef("create: need IMAGE and SIZE (see qcow2fs create --help)")
	}
	if o.Size == 0 && o.BackingFile == "" && fs.NArg() == 1 {
		return usagef("create: need a SIZE, or a backing file to take it from")
	}
	path := fs.Arg(0)
	if !*quiet {
		fmt.Println(formattingLine(path, o))
	}
	p := newProgress(*prog, "preallocating")
	o.Progress = p.update
	if err := qcow2.Create(path, o); err != nil {
		p.abort()
		return maintError(path, err, false)
	}
	p.finish()
	return nil
}

// createOptions maps the -o list onto qcow2.CreateOptions.
func createOptions(kvs []keyValue) (qcow2.CreateOptions, error) {
	var o qcow2.CreateOptions
	for _, kv := range kvs {
		var err error
		switch kv.Key {
		case "size":
			o.Size, err = units.Parse(kv.Value)
		case "cluster_size":
			o.ClusterSize, err = units.Parse(kv.Value)
		case "compat":
			switch kv.Value {
			case "0.10", "v2":
				o.Version = 2
			case "1.1", "v3":
				o.Version = 3
			default:
				err = fmt.Errorf("compat must be 0.10 (v2) or 1.1 (v3), not %q", kv.Value)
			}
		case "lazy_refcounts":
			o.LazyRefcounts, err = parseBoolValue(kv.Key, kv.Value)
		case "extended_l2":
			o.ExtendedL2, err = parseBoolValue(kv.Key, kv.Value)
		case "refcount_bits":
			var n uint64
			n, err = strconv.ParseUint(kv.Value, 10, 8)
			o.RefcountBits = int(n)
			if err != nil || n == 0 {
				err = fmt.Errorf("refcount_bits must be 1, 2, 4, 8, 16, 32 or 64, not %q", kv.Value)
			}
		case "compression_type":
			o.CompressionType = kv.Value
		case "preallocation":
			o.Preallocation = kv.Value
		case "data_file":
			o.DataFile = kv.Value
		case "data_file_raw":
			o.DataFileRaw, err = parseBoolValue(kv.Key, kv.Value)
		case "backing_file":
			o.BackingFile = kv.Value
		case "backing_fmt":
			o.BackingFormat = kv.Value
		case "encryption", "encrypt.format", "encrypt.key-secret":
			err = fmt.Errorf("encrypted images are not supported")
		default:
			err = fmt.Errorf("unknown option %q (-o help lists them)", kv.Key)
		}
		if err != nil {
			if !strings.Contains(err.Error(), kv.Key) {
				err = fmt.Errorf("option %s: %w", kv.Key, err)
			}
			return o, err
		}
	}
	return o, nil
}

// formattingLine is qemu-img create's first line, listing the settings
// (defaults filled in) so a log shows what was made.
func formattingLine(path string, o qcow2.CreateOptions) string {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	set := map[string]string{
		"cluster_size":     strconv.FormatInt(orDefault(o.ClusterSize, 65536), 10),
		"compression_type": orDefaultStr(o.CompressionType, "zlib"),
		"extended_l2":      onOff(o.ExtendedL2),
		"lazy_refcounts":   onOff(o.LazyRefcounts),
		"refcount_bits":    strconv.Itoa(int(orDefault(int64(o.RefcountBits), 16))),
		"size":             strconv.FormatInt(o.Size, 10),
	}
	if o.Version == 2 {
		set["compat"] = "0.10"
	}
	if o.Preallocation != "" {
		set["preallocation"] = o.Preallocation
	}
	if o.DataFile != "" {
		set["data_file"] = o.DataFile
		set["data_file_raw"] = onOff(o.DataFileRaw)
	}
	if o.BackingFile != "" {
		set["backing_file"] = o.BackingFile
		if o.BackingFormat != "" {
			set["backing_fmt"] = o.BackingFormat
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=qcow2", path)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, set[k])
	}
	return b.String()
}

func orDefault(v, d int64) int64 {
	if v == 0 {
		return d
	}
	return v
}

func orDefaultStr(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
