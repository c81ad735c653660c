// qcow2fs map: the allocation map of an image in qemu-img map's terms and
// run merging, human or JSON, queried in bounded chunks.

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const mapUsage = `Usage: qcow2fs map [--output human|json] [-U] [--start-offset OFF] [--max-length LEN] IMAGE
       qcow2fs map --bitmap NAME [--output human|json] [-U] IMAGE

Shows how the virtual disk of IMAGE is laid out, as "qemu-img map" does.

human: the runs that hold data, with their guest offset, length, offset in
the host file and that file (which layer of the backing chain, or the
external data file). Compressed runs show "compressed" instead of a host
offset (qemu-img refuses to print such images in this form).

json: every byte of the disk, as qemu-img map --output=json: a list of
{start, length, depth, present, zero, data, compressed, offset} runs, where
depth is the layer of the chain that decides the content (0 = IMAGE),
present says that layer allocates it (false: nothing in the chain does),
zero that it reads as zeros, data that it is stored, compressed that it is
stored compressed, and offset (only for uncompressed data) where it lies
in the host file.

--bitmap NAME: instead, the runs persistent bitmap NAME marks dirty (the
clusters written since it was created or cleared, at its granularity) and
clean, covering the disk; json: a list of {start, length, dirty}. A bitmap
flagged in-use (not stored since a crash) is refused: it is inconsistent.

The image is opened read-only with reader locks; -U inspects an image
another process has open for writing.
`

// mapChunk bounds one block-status query, so huge sparse images are mapped
// piecewise and printed as they go.
const mapChunk = 8 << 30

// mapEntry is one line of the output: an Extent in qemu-img's terms.
type mapEntry struct {
	Start, Length    int64
	Depth            int
	Present, Zero    bool
	Data, Compressed bool
	Offset           int64 // -1: none
}

// entriesOf turns an Extent into qemu-img's terms. sizes[d] is the virtual
// size of layer d of the chain: zeros the library reports at depth d past
// that layer's end are, for qemu-img, not present at depth d-1 (the layer
// whose backing file is too short decides they read as zeros).
func entriesOf(e qcow2.Extent, sizes []int64) []mapEntry {
	if e.Kind == qcow2.ExtentZero && e.Depth >= 1 && e.Depth < len(sizes) && e.Offset+e.Length > sizes[e.Depth] {
		var out []mapEntry
		cut := max(e.Offset, sizes[e.Depth])
		if cut > e.Offset {
			in := e
			in.Length = cut - e.Offset
			out = append(out, entryOf(in))
		}
		past := mapEntry{Start: cut, Length: e.Offset + e.Length - cut, Depth: e.Depth - 1, Zero: true, Offset: -1}
		return append(out, past)
	}
	return []mapEntry{entryOf(e)}
}

func entryOf(e qcow2.Extent) mapEntry {
	m := mapEntry{Start: e.Offset, Length: e.Length, Depth: e.Depth, Offset: -1}
	switch e.Kind {
	case qcow2.ExtentData:
		m.Present, m.Data, m.Compressed = true, true, e.Compressed
		if e.HostOffset >= 0 && !e.Compressed {
			m.Offset = e.HostOffset
		}
	case qcow2.ExtentZero:
		m.Present, m.Zero = true, true
	default:
		m.Zero = true
	}
	return m
}

// extend merges next into m when qemu-img would print them as one run:
// adjacent, alike, and (when mapped) contiguous on the host too.
func (m *mapEntry) extend(next mapEntry) bool {
	if m.Length == 0 || m.Start+m.Length != next.Start || m.Depth != next.Depth ||
		m.Present != next.Present || m.Zero != next.Zero || m.Data != next.Data || m.Compressed != next.Compressed ||
		(m.Offset < 0) != (next.Offset < 0) || m.Offset >= 0 && m.Offset+m.Length != next.Offset {
		return false
	}
	m.Length += next.Length
	return true
}

func (m mapEntry) json() string {
	s := fmt.Sprintf(`{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t, "compressed": %t`,
		m.Start, m.Length, m.Depth, m.Present, m.Zero, m.Data, m.Compressed)
	if m.Offset >= 0 {
		s += fmt.Sprintf(`, "offset": %d`, m.Offset)
	}
	return s + "}"
}

func cmdMap(args []string) error {
	fs := newFlagSet("map", mapUsage)
	output := fs.String("output", "human", "output `FORMAT`: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "map an image another process has open for writing (its metadata may be in flux)")
	format := fs.StringP("format", "f", "qcow2", "image `FORMAT` (only qcow2)")
	startArg := fs.String("start-offset", "0", "first guest `OFFSET` to map")
	lengthArg := fs.String("max-length", "", "map at most `LENGTH` bytes")
	bitmap := fs.String("bitmap", "", "show the dirty runs of persistent bitmap `NAME`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkFormatFlag("map", *format); err != nil {
		return err
	}
	if *output != "human" && *output != "json" {
		return usagef("map: --output must be human or json, not %q", *output)
	}
	if fs.NArg() != 1 {
		return usagef("map: need exactly one IMAGE (see qcow2fs map --help)")
	}
	start, err := units.Parse(*startArg)
	if err != nil {
		return usagef("map: --start-offset: %v", err)
	}
	length := int64(-1)
	if *lengthArg != "" {
		if length, err = units.Parse(*lengthArg); err != nil {
			return usagef("map: --max-length: %v", err)
		}
	}
	path := fs.Arg(0)
	if fs.Changed("bitmap") {
		return mapBitmap(path, *bitmap, *output == "json", *forceShare, start, length)
	}
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true, ForceShare: *forceShare})
	if err != nil {
		return maintError(path, err, true)
	}
	defer img.Close()
	end := img.Size()
	if length >= 0 && start+length < end {
		end = start + length
	}
	info := img.Info()
	var sizes []int64
	for in := info; in != nil; in = in.Backing {
		sizes = append(sizes, in.VirtualSize)
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	var out mapPrinter
	if *output == "json" {
		out = &jsonMapPrinter{w: w}
	} else {
		out = &humanMapPrinter{w: w, files: layerFiles(path, info)}
	}
	var cur mapEntry
	for off := start; off < end; {
		n := min(int64(mapChunk), end-off)
		exts, err := img.Map(off, n)
		if err != nil {
			return fmt.Errorf("%s: map %d+%d: %w", path, off, n, err)
		}
		for _, e := range exts {
			for _, next := range entriesOf(e, sizes) {
				if !cur.extend(next) {
					if err := out.entry(cur); err != nil {
						return err
					}
					cur = next
				}
			}
		}
		off += n
	}
	if err := out.entry(cur); err != nil {
		return err
	}
	return out.end()
}

type mapPrinter interface {
	entry(m mapEntry) error // called with a zero-length entry first: ignore it
	end() error
}

// jsonMapPrinter writes qemu-img's layout: "[{...},\n{...}]".
type jsonMapPrinter struct {
	w     io.Writer
	count int
}

func (p *jsonMapPrinter) entry(m mapEntry) error {
	if m.Length == 0 {
		return nil
	}
	sep := "["
	if p.count > 0 {
		sep = ",\n"
	}
	p.count++
	_, err := io.WriteString(p.w, sep+m.json())
	return err
}

func (p *jsonMapPrinter) end() error {
	if p.count == 0 {
		_, err := io.WriteString(p.w, "[]\n")
		return err
	}
	_, err := io.WriteString(p.w, "]\n")
	return err
}

// humanMapPrinter writes the data runs with the file holding them.
type humanMapPrinter struct {
	w      io.Writer
	files  []string // by depth
	header bool
}

func (p *humanMapPrinter) entry(m mapEntry) error {
	if !p.header {
		p.header = true
		if _, err := fmt.Fprintf(p.w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File"); err != nil {
			return err
		}
	}
	if m.Length == 0 || !m.Data {
		return nil
	}
	file := ""
	if m.Depth < len(p.files) {
		file = p.files[m.Depth]
	}
	mapped := "compressed"
	if m.Offset >= 0 {
		mapped = fmt.Sprintf("%#x", m.Offset)
	}
	_, err := fmt.Fprintf(p.w, "%-16s%-16s%-16s%s\n", hex0(m.Start), hex0(m.Length), mapped, file)
	return err
}

func (p *humanMapPrinter) end() error { return nil }

// hex0 is C's "%#x": "0" for zero, 0x-prefixed otherwise.
func hex0(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// layerFiles names, for each depth of the chain, the file that holds that
// layer's data: the image (named as the user gave it at the top, and as
// QEMU combines backing names below), or its external data file.
func layerFiles(top string, in *qcow2.Info) []string {
	var out []string
	name := top
	for ; in != nil; in = in.Backing {
		if in.DataFile != "" {
			df := in.DataFile
			if !filepath.IsAbs(df) {
				df = filepath.Join(filepath.Dir(name), df)
			}
			out = append(out, df)
		} else {
			out = append(out, name)
		}
		if in.BackingFile == "" {
			break
		}
		if filepath.IsAbs(in.BackingFile) {
			name = in.BackingFile
		} else {
			name = filepath.Join(filepath.Dir(name), in.BackingFile)
		}
	}
	return out
}

// mapBitmap prints the dirty and clean runs of a persistent bitmap within
// [start, start+length) (length < 0: to the end of the disk).
func mapBitmap(path, name string, asJSON, forceShare bool, start, length int64) error {
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true, ForceShare: forceShare, NoBacking: true, NoDataFile: true})
	if err != nil {
		return maintError(path, err, true)
	}
	defer img.Close()
	exts, err := img.BitmapExtents(name)
	if err != nil {
		return err
	}
	end := img.Size()
	if length >= 0 && start+length < end {
		end = start + length
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	if asJSON {
		fmt.Fprint(w, "[")
	} else {
		fmt.Fprintf(w, "%-20s%-20s%s\n", "Offset", "Length", "Dirty")
	}
	first := true
	for _, e := range exts {
		s, t := max(e.Start, start), min(e.Start+e.Length, end)
		if s >= t {
			continue
		}
		if asJSON {
			if !first {
				fmt.Fprint(w, ",\n")
			}
			fmt.Fprintf(w, `{ "start": %d, "length": %d, "dirty": %t}`, s, t-s, e.Dirty)
		} else {
			fmt.Fprintf(w, "%#-20x%#-20x%t\n", s, t-s, e.Dirty)
		}
		first = false
	}
	if asJSON {
		fmt.Fprintln(w, "]")
	}
	return w.Flush()
}
