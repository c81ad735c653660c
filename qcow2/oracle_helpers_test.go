// Helpers for the QEMU-oracle tests: run qemu-img / qemu-io with readable
// failures, build patterned images, and compare what this package reads with
// what QEMU reads, reporting the first differing byte offset.
// This file is long because every oracle test of the package shares these
// helpers, and they are easier to find in one place.

package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// needQEMU stops the test when the QEMU tools are missing: a loud skip on a
// developer's machine, a failure on CI (which installs them).
func needQEMU(t testing.TB) {
	t.Helper()
	testenv.RequireTools(t, "qemu-img", "qemu-io")
}

// runCmd runs name args in dir and returns its stdout; on failure the test
// stops with the command line, exit status and both output streams.
func runCmd(t testing.TB, dir, name string, args ...string) []byte {
	t.Helper()
	out, err := tryCmd(dir, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tryCmd is runCmd returning the failure instead of stopping the test.
func tryCmd(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("command failed (%v) in %s:\n  %s %s\nstdout:\n%s\nstderr:\n%s",
			err, dir, name, quoteArgs(args), stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"\\$") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// runCombined is runCmd returning stdout and stderr together (qemu-io
// reports failures on either), failing the test on a non-zero exit.
func runCombined(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// exitCode runs a command and returns its exit status (-1 if it did not run).
func exitCode(t testing.TB, dir, name string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("%s: %v", name, err)
	return -1, ""
}

// qemuCheckVerdict runs qemu-img check (human output) in the image's
// directory and returns its exit code and everything it printed.
func qemuCheckVerdict(t testing.TB, path string, extra ...string) (int, string) {
	t.Helper()
	return exitCode(t, filepath.Dir(path), "qemu-img", append(append([]string{"check"}, extra...), path)...)
}

// qemuCheckClean runs qemu-img check and fails the test unless it exits 0.
func qemuCheckClean(t testing.TB, path string) {
	t.Helper()
	if out, err := tryCmd(filepath.Dir(path), "qemu-img", "check", path); err != nil {
		t.Fatalf("qemu-img check of %s not clean: %v\n%s", path, err, out)
	}
}

// qemuImg runs qemu-img in dir.
func qemuImg(t testing.TB, dir string, args ...string) []byte {
	t.Helper()
	return runCmd(t, dir, "qemu-img", args...)
}

// createImage runs `qemu-img create -f qcow2 [-o opts] [extra...] name size`
// in dir and returns the image's path.
func createImage(t testing.TB, dir, name string, size int64, opts string, extra ...string) string {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, extra...)
	args = append(args, name, strconv.FormatInt(size, 10))
	qemuImg(t, dir, args...)
	return filepath.Join(dir, name)
}

// ioOp is one qemu-io command.
type ioOp struct {
	kind byte // 'w' write a pattern, 'c' compressed write, 'z' write zeroes, 'd' discard
	pat  byte // pattern byte for 'w'/'c'
	off  int64
	n    int64
}

func write(pat byte, off, n int64) ioOp { return ioOp{kind: 'w', pat: pat, off: off, n: n} }
func zero(off, n int64) ioOp            { return ioOp{kind: 'z', off: off, n: n} }
func discard(off, n int64) ioOp         { return ioOp{kind: 'd', off: off, n: n} }

func (o ioOp) String() string {
	switch o.kind {
	case 'w':
		return fmt.Sprintf("write -P %#x %d %d", o.pat, o.off, o.n)
	case 'c':
		return fmt.Sprintf("write -c -P %#x %d %d", o.pat, o.off, o.n)
	case 'z':
		return fmt.Sprintf("write -z %d %d", o.off, o.n)
	case 'd':
		return fmt.Sprintf("discard %d %d", o.off, o.n)
	}
	panic("bad ioOp kind " + string(o.kind))
}

// qemuIO applies ops to the image with one qemu-io run (format fmt), with
// extra raw commands appended (e.g. "flush", "abort").
func qemuIO(t testing.TB, path, format string, ops []ioOp, extra ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, o := range ops {
		args = append(args, "-c", o.String())
	}
	for _, c := range extra {
		args = append(args, "-c", c)
	}
	args = append(args, filepath.Base(path))
	runCmd(t, filepath.Dir(path), "qemu-io", args...)
}

// makeRawFile writes a raw file of size bytes holding pattern runs: every
// 64 KiB stretch gets its own byte value, so misplaced reads show.
func makeRawFile(t testing.TB, path string, size int64, seed byte) string {
	t.Helper()
	buf := make([]byte, size)
	for i := range buf {
		// Mostly runs (compressible), with a varying byte every 509 bytes.
		buf[i] = seed + byte(i>>16)
		if i%509 == 0 {
			buf[i] = byte(i / 509)
		}
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// snapshotOracle gives QEMU's view of an internal snapshot in two ways:
// `qemu-img convert -l` (which keeps the image's current virtual size) and
// the content after `qemu-img snapshot -a` on a copy of the image (which
// takes the snapshot's own disk size). The copy lives next to the image so
// relative backing names still resolve; it is removed afterwards.
func snapshotOracle(t testing.TB, img, outDir, snapshot string) (convertL, applied string) {
	t.Helper()
	dir := filepath.Dir(img)
	sel := "snapshot.name=" + snapshot
	if _, err := strconv.Atoi(snapshot); err == nil {
		sel = "snapshot.id=" + snapshot
	}
	convertL = filepath.Join(outDir, "convert-l@"+snapshot+".raw")
	qemuImg(t, dir, "convert", "-U", "-l", sel, "-O", "raw", img, convertL)

	cp := filepath.Join(dir, ".oracle-copy-"+snapshot+".qcow2")
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(cp)
	qemuImg(t, dir, "snapshot", "-a", snapshot, cp)
	applied = filepath.Join(outDir, "applied@"+snapshot+".raw")
	qemuImg(t, dir, "convert", "-O", "raw", cp, applied)
	return convertL, applied
}

// convertToRaw asks QEMU for the disk's bytes: `qemu-img convert -O raw`
// into a file under outDir.
func convertToRaw(t testing.TB, img, outDir string) string {
	t.Helper()
	out := filepath.Join(outDir, "oracle.raw")
	qemuImg(t, filepath.Dir(img), "convert", "-U", "-O", "raw", img, out)
	return out
}

// findExtension returns the file offset of the first header extension of
// type typ (its 8-byte type/length header), or -1.
func findExtension(t testing.TB, path string, typ uint32) int64 {
	t.Helper()
	h := readHeaderOf(t, path)
	buf := make([]byte, 1<<h.ClusterBits)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	for off := int(h.HeaderLength); off+8 <= len(buf); {
		ty := uint32(buf[off])<<24 | uint32(buf[off+1])<<16 | uint32(buf[off+2])<<8 | uint32(buf[off+3])
		n := int(uint32(buf[off+4])<<24 | uint32(buf[off+5])<<16 | uint32(buf[off+6])<<8 | uint32(buf[off+7]))
		if ty == typ {
			return int64(off)
		}
		if ty == 0 {
			break
		}
		off += 8 + (n+7)&^7
	}
	return -1
}

// firstDiff returns the index of the first differing byte, or -1.
func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// diffMsg describes a mismatch at disk offset off with some context bytes.
func diffMsg(what string, off int64, got, want []byte, i int) string {
	lo := max(0, i-4)
	hiG, hiW := min(len(got), i+12), min(len(want), i+12)
	return fmt.Sprintf("%s: first difference at disk offset %d (%#x): got % x, want % x (from offset %d)",
		what, off+int64(i), off+int64(i), got[lo:hiG], want[lo:hiW], off+int64(lo))
}

// readPass describes one sweep of ReadAt calls over the disk.
type readPass struct {
	name  string
	start int64 // first offset (bytes before it are read as one chunk)
	chunk int64
}

// compareReads reads the whole image in several chunkings and compares each
// chunk with the oracle raw file byte for byte. Large disks get only the
// 1 MiB sweep plus random reads, to keep the run short.
func compareReads(t testing.TB, img *Image, rawPath string) {
	t.Helper()
	raw, err := os.Open(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	st, err := raw.Stat()
	if err != nil {
		t.Fatal(err)
	}
	size := img.Size()
	if st.Size() != size {
		t.Fatalf("virtual size %d, but qemu-img convert produced %d bytes", size, st.Size())
	}
	cs := img.ClusterSize()
	passes := []readPass{{"1MiB", 0, 1 << 20}}
	if size <= 40<<20 {
		passes = append(passes,
			readPass{"4KiB", 0, 4096},
			readPass{"12345@777", 777, 12345},
			readPass{"cluster+1@1", 1, cs + 1},
			readPass{"whole", 0, size},
		)
	}
	for _, p := range passes {
		if !comparePass(t, img, raw, p) {
			return // one report per image is enough
		}
	}
	compareRandom(t, img, raw, 300, cs)
}

func comparePass(t testing.TB, img *Image, raw io.ReaderAt, p readPass) bool {
	t.Helper()
	size := img.Size()
	off := int64(0)
	if p.start > 0 {
		if !compareRange(t, "pass "+p.name, img, raw, 0, min(p.start, size)) {
			return false
		}
		off = p.start
	}
	got := make([]byte, p.chunk)
	want := make([]byte, p.chunk)
	for ; off < size; off += p.chunk {
		n := min(p.chunk, size-off)
		if !compareRangeBuf(t, "pass "+p.name, img, raw, off, got[:n], want[:n]) {
			return false
		}
	}
	return true
}

func compareRange(t testing.TB, what string, img *Image, raw io.ReaderAt, off, n int64) bool {
	t.Helper()
	return compareRangeBuf(t, what, img, raw, off, make([]byte, n), make([]byte, n))
}

// compareRangeBuf reads [off, off+len(got)) from both and compares.
func compareRangeBuf(t testing.TB, what string, img *Image, raw io.ReaderAt, off int64, got, want []byte) bool {
	t.Helper()
	if _, err := raw.ReadAt(want, off); err != nil && err != io.EOF {
		t.Fatalf("read oracle at %d: %v", off, err)
	}
	n, err := img.ReadAt(got, off)
	if err != nil && !(err == io.EOF && off+int64(len(got)) >= img.Size()) {
		t.Errorf("%s: ReadAt(%d bytes at %d): %v", what, len(got), off, err)
		return false
	}
	if n != len(got) {
		t.Errorf("%s: ReadAt(%d bytes at %d) returned %d bytes", what, len(got), off, n)
		return false
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Error(diffMsg(what, off, got, want, i))
		return false
	}
	return true
}

// compareRandom does count reads of random lengths at random offsets (some
// crossing the end of the disk, where ReadAt must be short with io.EOF).
func compareRandom(t testing.TB, img *Image, raw io.ReaderAt, count int, cs int64) {
	t.Helper()
	rng := rand.New(rand.NewSource(int64(img.Size()) ^ cs))
	size := img.Size()
	for i := 0; i < count; i++ {
		n := 1 + rng.Int63n(min(3*cs+4096, 4<<20))
		off := rng.Int63n(size)
		if i%10 == 0 {
			off = max(0, size-n/2) // straddle the end
		}
		got := make([]byte, n)
		want := make([]byte, min(n, size-off))
		if _, err := raw.ReadAt(want, off); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		m, err := img.ReadAt(got, off)
		if off+n > size {
			if m != int(size-off) || err != io.EOF {
				t.Errorf("ReadAt(%d bytes at %d) past the end (size %d) = %d, %v; want %d, io.EOF", n, off, size, m, err, size-off)
				return
			}
		} else if err != nil || m != int(n) {
			t.Errorf("random ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
			return
		}
		if j := firstDiff(got[:m], want); j >= 0 {
			t.Error(diffMsg(fmt.Sprintf("random read %d (%d bytes at %d)", i, n, off), off, got[:m], want, j))
			return
		}
	}
}

// qemuMapEntry is one element of `qemu-img map --output=json`.
type qemuMapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset"`
}

func qemuMap(t testing.TB, img string, extra ...string) []qemuMapEntry {
	t.Helper()
	args := append([]string{"map", "-U", "--output=json"}, extra...)
	out := qemuImg(t, filepath.Dir(img), append(args, img)...)
	var m []qemuMapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("parse qemu-img map output: %v\n%s", err, out)
	}
	return m
}

// span is a run of guest bytes that is either data (with the chain depth
// that provides it) or a hole.
type span struct {
	Start, End int64
	Data       bool
	Depth      int // meaningful for data only
}

// mergeSpans joins neighbours that say the same thing.
func mergeSpans(in []span) []span {
	var out []span
	for _, s := range in {
		if s.End <= s.Start {
			continue
		}
		if !s.Data {
			s.Depth = 0
		}
		if k := len(out) - 1; k >= 0 && out[k].End == s.Start && out[k].Data == s.Data && out[k].Depth == s.Depth {
			out[k].End = s.End
			continue
		}
		out = append(out, s)
	}
	return out
}

// qemuSpans turns QEMU's map into data/hole spans. QEMU's "data" flag is the
// criterion: zero clusters and unallocated space are holes.
func qemuSpans(m []qemuMapEntry) []span {
	var s []span
	for _, e := range m {
		s = append(s, span{Start: e.Start, End: e.Start + e.Length, Data: e.Data, Depth: e.Depth})
	}
	return mergeSpans(s)
}

// ourSpans turns Image.Map extents into the same spans.
func ourSpans(exts []Extent) []span {
	var s []span
	for _, e := range exts {
		s = append(s, span{Start: e.Offset, End: e.Offset + e.Length, Data: e.Kind == ExtentData, Depth: e.Depth})
	}
	return mergeSpans(s)
}

func spansString(s []span) string {
	var b strings.Builder
	for i, x := range s {
		if i == 40 {
			fmt.Fprintf(&b, "  ... (%d more)\n", len(s)-i)
			break
		}
		kind := "hole"
		if x.Data {
			kind = fmt.Sprintf("data depth %d", x.Depth)
		}
		fmt.Fprintf(&b, "  [%d, %d) %s\n", x.Start, x.End, kind)
	}
	return b.String()
}

// compareMap checks Image.Map over the whole disk against qemu-img map:
// the same data/hole boundaries and the same depth for each data run. It
// also checks that the extents tile the disk without gaps.
func compareMap(t testing.TB, img *Image, path string) []span {
	t.Helper()
	exts, err := img.Map(0, img.Size())
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	next := int64(0)
	for _, e := range exts {
		if e.Offset != next || e.Length <= 0 {
			t.Fatalf("Map extents do not tile the disk: extent %+v after offset %d", e, next)
		}
		next += e.Length
	}
	if next != img.Size() {
		t.Fatalf("Map extents end at %d, disk size %d", next, img.Size())
	}
	want := qemuSpans(qemuMap(t, path))
	got := ourSpans(exts)
	if !spansEqual(got, want) {
		t.Errorf("Map differs from qemu-img map:\ngot:\n%swant:\n%s", spansString(got), spansString(want))
	}
	return want
}

func spansEqual(a, b []span) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// expectedSeek computes SEEK_DATA / SEEK_HOLE answers from spans.
func expectedSeek(spans []span, size, off int64, wantData bool) int64 {
	for _, s := range spans {
		if s.End <= off || s.Data != wantData {
			continue
		}
		return max(s.Start, off)
	}
	if wantData {
		return -1
	}
	return size
}

// checkSeeks probes SeekData/SeekHole at every span boundary (and next to
// it) against the answers the spans give.
func checkSeeks(t testing.TB, img *Image, spans []span) {
	t.Helper()
	size := img.Size()
	probes := map[int64]bool{0: true, size - 1: true}
	for _, s := range spans {
		for _, o := range []int64{s.Start - 1, s.Start, s.Start + 1, s.End - 1, (s.Start + s.End) / 2} {
			if o >= 0 && o < size {
				probes[o] = true
			}
		}
	}
	offs := make([]int64, 0, len(probes))
	for o := range probes {
		offs = append(offs, o)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	if len(offs) > 400 {
		offs = offs[:400]
	}
	for _, o := range offs {
		for _, wantData := range []bool{true, false} {
			want := expectedSeek(spans, size, o, wantData)
			var got int64
			var err error
			if wantData {
				got, err = img.SeekData(o)
			} else {
				got, err = img.SeekHole(o)
			}
			if err != nil || got != want {
				name := "SeekHole"
				if wantData {
					name = "SeekData"
				}
				t.Errorf("%s(%d) = %d, %v; want %d", name, o, got, err, want)
				return
			}
		}
	}
}

// qemuInfo is the part of `qemu-img info --output=json` the tests check.
type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	ClusterSize     int64  `json:"cluster-size"`
	DirtyFlag       bool   `json:"dirty-flag"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	Snapshots       []struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		VMStateSize uint64 `json:"vm-state-size"`
		DateSec     int64  `json:"date-sec"`
		ICount      *int64 `json:"icount"`
		ClockSec    int64  `json:"vm-clock-sec"`
	} `json:"snapshots"`
	FormatSpecific struct {
		Data struct {
			Compat          string `json:"compat"`
			LazyRefcounts   bool   `json:"lazy-refcounts"`
			RefcountBits    int    `json:"refcount-bits"`
			CompressionType string `json:"compression-type"`
			ExtendedL2      bool   `json:"extended-l2"`
			DataFile        string `json:"data-file"`
			DataFileRaw     bool   `json:"data-file-raw"`
			Corrupt         bool   `json:"corrupt"`
			Bitmaps         []struct {
				Name string `json:"name"`
			} `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

func qemuImageInfo(t testing.TB, path string) qemuInfo {
	t.Helper()
	out := qemuImg(t, filepath.Dir(path), "info", "-U", "--output=json", path)
	var qi qemuInfo
	if err := json.Unmarshal(out, &qi); err != nil {
		t.Fatalf("parse qemu-img info: %v\n%s", err, out)
	}
	return qi
}

// compareInfo checks Image.Info of the top layer against qemu-img info.
func compareInfo(t testing.TB, img *Image, path string) qemuInfo {
	t.Helper()
	qi := qemuImageInfo(t, path)
	in := img.Info()
	d := qi.FormatSpecific.Data
	version := uint32(3)
	if d.Compat == "0.10" {
		version = 2
	}
	var bitmaps []string
	for _, b := range d.Bitmaps {
		bitmaps = append(bitmaps, b.Name)
	}
	check := func(field string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("Info().%s = %v, qemu-img info says %v", field, got, want)
		}
	}
	check("VirtualSize", in.VirtualSize, qi.VirtualSize)
	check("ClusterSize", in.ClusterSize, qi.ClusterSize)
	check("Version", in.Version, version)
	check("Dirty", in.Dirty, qi.DirtyFlag)
	check("Corrupt", in.Corrupt, d.Corrupt)
	check("LazyRefcounts", in.LazyRefcounts, d.LazyRefcounts)
	check("RefcountBits", in.RefcountBits, d.RefcountBits)
	check("ExtendedL2", in.ExtendedL2, d.ExtendedL2)
	check("DataFile", in.DataFile, d.DataFile)
	check("DataFileRaw", in.DataFileRaw, d.DataFileRaw)
	check("BackingFile", in.BackingFile, qi.BackingFilename)
	check("BackingFormat", in.BackingFormat, qi.BackingFormat)
	check("Bitmaps", in.Bitmaps, bitmaps)
	if d.CompressionType != "" {
		check("CompressionType", in.CompressionType, d.CompressionType)
	}
	if qi.FullBacking != "" {
		// QEMU joins without cleaning ("dir/sub/../base"); compare cleaned.
		check("BackingFullPath", filepath.Clean(in.BackingFullPath), filepath.Clean(qi.FullBacking))
	}
	snaps := img.Snapshots()
	if len(snaps) != len(qi.Snapshots) {
		t.Errorf("Snapshots() has %d entries, qemu-img info %d", len(snaps), len(qi.Snapshots))
	} else {
		for i, s := range qi.Snapshots {
			check("Snapshots["+strconv.Itoa(i)+"]", fmt.Sprint(snaps[i].ID, " ", snaps[i].Name, " ", snaps[i].VMStateSize),
				fmt.Sprint(s.ID, " ", s.Name, " ", s.VMStateSize))
		}
	}
	return qi
}

// be16/be32/be64 encode big-endian integers for patchFile.
func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
func be64(v uint64) []byte { return append(be32(uint32(v>>32)), be32(uint32(v))...) }

// readHeaderOf decodes the header of an image file (for tests that patch it).
func readHeaderOf(t testing.TB, path string) Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 512)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	h, err := parseHeader(buf[:n])
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return h
}
