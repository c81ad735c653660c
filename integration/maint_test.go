// Offline maintenance commands (create, check, snapshot, resize, map,
// commit, rebase) against QEMU as the oracle: what qcow2fs makes, QEMU
// reads right, and what qcow2fs reports, QEMU reports the same.
// This file is long because each command's test needs its own QEMU-output
// parser (info, map, check) next to it.

package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// maintRun runs qcow2fs with args from dir (may be "").
func maintRun(dir string, args ...string) result {
	return execute(dir, qcow2fsBin, args...)
}

// maintOK runs a qcow2fs command that must succeed and returns its stdout.
func maintOK(t *testing.T, args ...string) string {
	t.Helper()
	r := maintRun("", args...)
	if r.Code != 0 {
		t.Fatalf("qcow2fs %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// maintCopy copies a file (images are small here).
func maintCopy(t *testing.T, src, dst string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// maintInfo is `qemu-img info --output=json` as a generic map.
func maintInfo(t *testing.T, img string) map[string]any {
	t.Helper()
	var m map[string]any
	out := run(t, "qemu-img", "info", "-U", "--output=json", img)
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", img, err, out)
	}
	return m
}

// infoSettings picks the settings qemu-img info shows about how an image
// was made (not where its clusters happen to lie).
func infoSettings(m map[string]any) map[string]any {
	out := map[string]any{}
	for _, k := range []string{"virtual-size", "cluster-size", "format", "backing-filename", "backing-filename-format"} {
		out[k] = m[k]
	}
	if fs, ok := m["format-specific"].(map[string]any); ok {
		data, _ := fs["data"].(map[string]any)
		if df, ok := data["data-file"].(string); ok {
			// Absolute, in different directories: the name must match.
			data["data-file"] = filepath.Base(df)
		}
		out["format-specific"] = data
	}
	return out
}

func TestMaintCreate(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	ours, twin := mkdir(t, dir, "ours"), mkdir(t, dir, "qemu")
	base := filepath.Join(dir, "base.qcow2")
	qemuCreate(t, base, "6M", "", "", "")
	qemuIO(t, base, "write -P 0x5a 0 1M")

	cases := []struct {
		name, opts, size string
		backing          bool
	}{
		{name: "default", size: "16M"},
		{name: "v2-4k", opts: "compat=0.10,cluster_size=4k", size: "16M"},
		{name: "lazy-rc1-2M", opts: "lazy_refcounts=on,refcount_bits=1,cluster_size=2M", size: "16M"},
		{name: "xl2-zstd", opts: "extended_l2=on,cluster_size=128k,compression_type=zstd", size: "16M"},
		{name: "rc64-metadata", opts: "refcount_bits=64,preallocation=metadata", size: "16M"},
		{name: "falloc-512", opts: "preallocation=falloc,cluster_size=512", size: "2M"},
		{name: "full", opts: "preallocation=full,compat=v2", size: "3M"},
		// An absolute name: QEMU 7.2 resolves a relative data_file against its
		// working directory, not the image's.
		{name: "datafile-raw", opts: "data_file=DIR/datafile-raw.data,data_file_raw=on", size: "8M"},
		{name: "backing", backing: true},
		{name: "backing-xl2-metadata", opts: "extended_l2=on,preallocation=metadata", backing: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mine, theirs := filepath.Join(ours, c.name+".qcow2"), filepath.Join(twin, c.name+".qcow2")
			args := []string{"create", "-q"}
			if c.opts != "" {
				args = append(args, "-o", strings.ReplaceAll(c.opts, "DIR", ours))
			}
			if c.backing {
				args = append(args, "-b", base, "-F", "qcow2")
			}
			args = append(args, mine)
			if c.size != "" {
				args = append(args, c.size)
			}
			maintOK(t, args...)
			qargs := append([]string{"create", "-q", "-f", "qcow2"}, args[2:]...)
			qargs[len(qargs)-boolInt(c.size != "")-1] = theirs
			for i := range qargs {
				qargs[i] = strings.ReplaceAll(qargs[i], ours, twin)
			}
			runIn(t, twin, "qemu-img", qargs...)

			qemuCheckClean(t, mine)
			if got, want := infoSettings(maintInfo(t, mine)), infoSettings(maintInfo(t, theirs)); !reflect.DeepEqual(got, want) {
				t.Errorf("qemu-img info of the qcow2fs image:\n%v\nof qemu-img's:\n%v", got, want)
			}
			// The same guest view, allocation kinds included.
			if got, want := qemuMapJSON(t, "", mine, true), qemuMapJSON(t, "", theirs, true); !reflect.DeepEqual(got, want) {
				t.Errorf("qemu-img map of the qcow2fs image:\n%v\nof qemu-img's:\n%v", got, want)
			}
			// And it takes writes like any image.
			for _, img := range []string{mine, theirs} {
				qemuIO(t, img, "write -P 0x33 100k 300k", "write -z 1M 64k")
			}
			qemuCheckClean(t, mine)
			if r := execute("", "qemu-img", "compare", mine, theirs); r.Code != 0 {
				t.Errorf("after the same writes, qemu-img compare: %s", r)
			}
		})
	}

	// Sizes with suffixes and fractions; usage errors.
	p := filepath.Join(ours, "frac.qcow2")
	maintOK(t, "create", "-q", p, "1.5M")
	if got := qemuInfo(t, p).VirtualSize; got != 3<<19 {
		t.Errorf("create 1.5M: virtual size %d", got)
	}
	if r := maintRun("", "create", "-o", "compat=0.10,lazy_refcounts=on", filepath.Join(ours, "bad.qcow2"), "1M"); r.Code != 1 || !strings.Contains(r.Stderr, "lazy refcounts") {
		t.Errorf("create with lazy refcounts on v2: want exit 1 naming the problem: %s", r)
	}
	if r := maintRun("", "create", filepath.Join(ours, "nosize.qcow2")); r.Code != 2 {
		t.Errorf("create without size: want exit 2: %s", r)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// mapRun is one entry of qemu-img map --output=json.
type mapRun struct {
	Start      int64  `json:"start"`
	Length     int64  `json:"length"`
	Depth      int    `json:"depth"`
	Present    bool   `json:"present"`
	Zero       bool   `json:"zero"`
	Data       bool   `json:"data"`
	Compressed *bool  `json:"compressed,omitempty"`
	Offset     *int64 `json:"offset,omitempty"`
}

// qemuMapJSON runs qemu-img map (from dir) and normalizes the runs.
func qemuMapJSON(t *testing.T, dir, img string, dropOffsets bool) []mapRun {
	t.Helper()
	return parseMapRuns(t, runIn(t, dir, "qemu-img", "map", "-U", "--output=json", img), dropOffsets)
}

// parseMapRuns decodes map JSON and normalizes it for comparison: host
// offsets are kept only for data (qemu-img also shows them for some zero
// runs, which qcow2's block status does not), or dropped altogether;
// "compressed" is dropped (QEMU 7.2 does not print it); adjacent runs that
// are then alike are merged.
func parseMapRuns(t *testing.T, s string, dropOffsets bool) []mapRun {
	t.Helper()
	var runs []mapRun
	if err := json.Unmarshal([]byte(s), &runs); err != nil {
		t.Fatalf("map json: %v\n%s", err, s)
	}
	var out []mapRun
	for _, r := range runs {
		r.Compressed = nil
		if !r.Data || dropOffsets {
			r.Offset = nil
		}
		if n := len(out); n > 0 {
			l := &out[n-1]
			if l.Start+l.Length == r.Start && l.Depth == r.Depth && l.Present == r.Present && l.Zero == r.Zero && l.Data == r.Data &&
				(l.Offset == nil) == (r.Offset == nil) && (l.Offset == nil || *l.Offset+l.Length == *r.Offset) {
				l.Length += r.Length
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// Header fields and structures the corruption tests patch.
type maintLayout struct {
	cs       int64
	refblock int64 // first refcount block
	l2       int64 // first L2 table
}

func readLayout(t *testing.T, img string) maintLayout {
	t.Helper()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	cs := int64(1) << be.Uint32(b[20:])
	if order := be.Uint32(b[96:]); be.Uint32(b[4:]) >= 3 && order != 4 {
		t.Fatalf("%s: the corruption tests patch 16-bit refcounts, image has order %d", img, order)
	}
	reft := int64(be.Uint64(b[48:]))
	l1 := int64(be.Uint64(b[40:]))
	return maintLayout{cs: cs, refblock: int64(be.Uint64(b[reft:])), l2: int64(be.Uint64(b[l1:]) & 0x00fffffffffffe00)}
}

// l2Entry reads entry i of the first L2 table.
func (l maintLayout) l2Entry(t *testing.T, img string, i int64) uint64 {
	b := make([]byte, 8)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, l.l2+8*i); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b)
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// checkOutcome is what a check reports, for comparing the two tools.
type checkOutcome struct {
	Code        int
	CheckErrors int `json:"check-errors"`
	Corruptions int `json:"corruptions"`
	Leaks       int `json:"leaks"`
}

func parseCheck(t *testing.T, who string, r result) checkOutcome {
	t.Helper()
	var c checkOutcome
	if err := json.Unmarshal([]byte(r.Stdout), &c); err != nil {
		t.Fatalf("%s check --output json: %v\n%s", who, err, r)
	}
	c.Code = r.Code
	return c
}

func TestMaintCheck(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	clean := k.Path("clean")
	qemuCreate(t, clean, "4M", "", "", "")
	qemuIO(t, clean, k.Rand(0, 128<<10), k.Rand(1<<20, 64<<10), k.Rand(3<<20, 4096))
	orig := qemuRawOf(t, clean, filepath.Join(dir, "orig.raw"))
	lay := readLayout(t, clean)
	data0 := int64(lay.l2Entry(t, clean, 0) & 0x00fffffffffffe00)
	data1 := int64(lay.l2Entry(t, clean, 1) & 0x00fffffffffffe00)
	if data0 == 0 || data1 == 0 {
		t.Fatalf("expected data clusters at guest 0 and 64k, L2 entries %#x %#x", lay.l2Entry(t, clean, 0), lay.l2Entry(t, clean, 1))
	}
	st, err := os.Stat(clean)
	if err != nil {
		t.Fatal(err)
	}
	fileEnd := (st.Size() + lay.cs - 1) / lay.cs * lay.cs

	cases := []struct {
		name   string
		break_ func(img string)
		want   int    // qemu-img check's exit code: the classification
		repair string // "" for no repair test
	}{
		{"clean", func(string) {}, 0, "all"},
		{"header-refcount-2", func(img string) { testenv.PatchFile(t, img, lay.refblock, be16(2)) }, 3, "leaks"},
		{"leaked-cluster", func(img string) {
			// A cluster past the old end with a refcount but no user (an
			// allocation a crash interrupted).
			testenv.PatchFile(t, img, fileEnd+lay.cs-1, []byte{0})
			testenv.PatchFile(t, img, lay.refblock+2*(fileEnd/lay.cs), be16(1))
		}, 3, "all"},
		{"used-refcount-0", func(img string) { testenv.PatchFile(t, img, lay.refblock+2*(data0/lay.cs), be16(0)) }, 2, "all"},
		{"copied-flag-clear", func(img string) {
			testenv.PatchFile(t, img, lay.l2, be64(lay.l2Entry(t, img, 0)&^(1<<63)))
		}, 2, "all"},
		{"copied-flag-set-shared", func(img string) {
			// Refcount 2 but COPIED set: a leak and a wrong flag.
			testenv.PatchFile(t, img, lay.refblock+2*(data1/lay.cs), be16(2))
		}, 2, "all"},
		{"l2-unaligned", func(img string) {
			testenv.PatchFile(t, img, lay.l2+8, be64(lay.l2Entry(t, img, 1)+512))
		}, 2, ""},
		{"l2-past-end", func(img string) {
			testenv.PatchFile(t, img, lay.l2+8*2, be64(1<<63|uint64(fileEnd+16*lay.cs)))
		}, 2, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := maintCopy(t, clean, filepath.Join(dir, c.name+".qcow2"))
			c.break_(img)
			q := parseCheck(t, "qemu-img", execute("", "qemu-img", "check", "--output=json", img))
			r := maintRun("", "check", "--output", "json", img)
			o := parseCheck(t, "qcow2fs", r)
			if q.Code != c.want {
				t.Fatalf("the corruption does not give qemu-img check exit %d: %+v", c.want, q)
			}
			if o != q {
				t.Errorf("qcow2fs check %+v, qemu-img check %+v\nqcow2fs stderr:\n%s", o, q, r.Stderr)
			}
			// The human form: qemu-img's summary line and exit code.
			h := maintRun("", "check", img)
			hq := execute("", "qemu-img", "check", img)
			if h.Code != hq.Code || firstLine(h.Stdout) != firstLine(hq.Stdout) {
				t.Errorf("human check: qcow2fs exit %d %q, qemu-img exit %d %q", h.Code, firstLine(h.Stdout), hq.Code, firstLine(hq.Stdout))
			}
			if c.repair == "" {
				return
			}
			twin := maintCopy(t, img, img+".qemu")
			rr := maintRun("", "check", "--repair", c.repair, img)
			qr := execute("", "qemu-img", "check", "-r", c.repair, twin)
			if rr.Code != 0 || qr.Code != 0 {
				t.Errorf("check --repair %s: qcow2fs %s\nqemu-img %s", c.repair, rr, qr)
			}
			if c.want != 0 && !strings.Contains(rr.Stdout, "were found and repaired") {
				t.Errorf("repair output lacks the repaired summary:\n%s", rr.Stdout)
			}
			qemuCheckClean(t, img)
			qemuCompareRaw(t, orig, img)
		})
	}

	// A file that is not an image: the check cannot run (exit 1).
	junk := filepath.Join(dir, "junk.qcow2")
	if err := os.WriteFile(junk, []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := maintRun("", "check", junk); r.Code != 1 || !strings.HasPrefix(r.Stderr, "qcow2fs: ") || strings.Count(r.Stderr, "\n") != 1 {
		t.Errorf("check of a non-image: want exit 1 and one error line: %s", r)
	}
}

func firstLine(s string) string {
	s = strings.TrimLeft(s, "\n")
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func TestMaintSnapshot(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("snap")
	qemuCreate(t, img, "8M", "cluster_size=4k", "", "")
	qemuIO(t, img, k.Scribble(4096, 8<<20)...)
	rawA := qemuRawOf(t, img, filepath.Join(dir, "a.raw"))

	// Made by qcow2fs, read by QEMU.
	maintOK(t, "snapshot", "create", "ours-a", img)
	qemuCheckClean(t, img)
	qemuIO(t, img, k.Rand(0, 100000), Zero(2<<20, 1<<20), Discard(5<<20, 64<<10))
	rawB := qemuRawOf(t, img, filepath.Join(dir, "b.raw"))
	qemuToRaw(t, img, "ours-a", filepath.Join(dir, "a-from-snap.raw"))
	compareFiles(t, filepath.Join(dir, "a-from-snap.raw"), rawA)

	// Made by QEMU, used by qcow2fs.
	run(t, "qemu-img", "snapshot", "-c", "qemu-b", img)
	qemuIO(t, img, k.Rand(4096, 3<<20))
	if got, want := maintOK(t, "snapshot", "-l", img), run(t, "qemu-img", "snapshot", "-l", img); got != want {
		t.Errorf("qcow2fs snapshot -l:\n%s\nqemu-img snapshot -l:\n%s", got, want)
	}
	var list []struct {
		ID, Name string
		DiskSize int64 `json:"disk-size"`
	}
	if err := json.Unmarshal([]byte(maintOK(t, "snapshot", "list", "--output", "json", img)), &list); err != nil ||
		len(list) != 2 || list[0].Name != "ours-a" || list[1].Name != "qemu-b" || list[1].DiskSize != 8<<20 {
		t.Errorf("snapshot list --output json: %v %+v", err, list)
	}
	maintOK(t, "snapshot", "apply", "qemu-b", img)
	qemuCheckClean(t, img)
	qemuCompareRaw(t, rawB, img)
	maintOK(t, "snapshot", "-a", "1", img) // by ID: ours-a
	qemuCheckClean(t, img)
	qemuCompareRaw(t, rawA, img)
	maintOK(t, "snapshot", "-d", "qemu-b", img)
	qemuCheckClean(t, img)
	if out := run(t, "qemu-img", "snapshot", "-l", img); strings.Contains(out, "qemu-b") || !strings.Contains(out, "ours-a") {
		t.Errorf("after deleting qemu-b, qemu-img snapshot -l:\n%s", out)
	}

	// apply restores the snapshot's disk size.
	maintOK(t, "resize", img, "+4M")
	if got := qemuInfo(t, img).VirtualSize; got != 12<<20 {
		t.Fatalf("resize +4M: virtual size %d", got)
	}
	maintOK(t, "snapshot", "apply", "ours-a", img)
	if got := qemuInfo(t, img).VirtualSize; got != 8<<20 {
		t.Errorf("apply: virtual size %d, want the snapshot's 8 MiB", got)
	}
	qemuCompareRaw(t, rawA, img)
	maintOK(t, "snapshot", "delete", "ours-a", img)
	qemuCheckClean(t, img)
	if out := maintOK(t, "snapshot", "list", img); out != "" {
		t.Errorf("no snapshots left, but list prints:\n%s", out)
	}
	qemuCompareRaw(t, rawA, img)

	for _, bad := range [][]string{{"snapshot", "apply", "nope", img}, {"snapshot", "delete", "nope", img}} {
		if r := maintRun("", bad...); r.Code != 1 || !strings.Contains(r.Stderr, "nope") {
			t.Errorf("qcow2fs %v: want exit 1 naming the snapshot: %s", bad, r)
		}
	}
	maintOK(t, "snapshot", "create", "dup", img)
	if r := maintRun("", "snapshot", "create", "dup", img); r.Code != 1 {
		t.Errorf("second snapshot named dup: want exit 1: %s", r)
	}
	qemuCheckClean(t, img)
}

func TestMaintResize(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	// Small clusters so growing to 600M moves the L1 table.
	img := k.Path("rs")
	qemuCreate(t, img, "10M", "cluster_size=512", "", "")
	qemuIO(t, img, k.Rand(0, 1<<20), k.Rand(9<<20, 1<<20-512), Zero(3<<20, 1<<20))
	twin := maintCopy(t, img, filepath.Join(dir, "twin.qcow2"))

	steps := []struct {
		args  []string // after IMAGE
		qemu  []string
		size  int64
		fails bool
	}{
		{args: []string{"+6M"}, qemu: []string{"+6M"}, size: 16 << 20},
		{args: []string{"600M"}, qemu: []string{"600M"}, size: 600 << 20},
		{args: []string{"-1M"}, fails: true}, // no --shrink
		{args: []string{"--shrink", "-590M"}, qemu: []string{"--shrink", "-590M"}, size: 10 << 20},
		{args: []string{"--shrink", "9.5M"}, qemu: []string{"--shrink", "9728K"}, size: 9728 << 10},
		{args: []string{"1000"}, fails: true}, // not a multiple of 512
	}
	for _, s := range steps {
		r := maintRun("", append([]string{"resize", img}, s.args...)...)
		if s.fails {
			if r.Code != 1 {
				t.Errorf("resize %v: want exit 1: %s", s.args, r)
			}
			continue
		}
		if r.Code != 0 || r.Stdout != "Image resized.\n" {
			t.Fatalf("resize %v: %s", s.args, r)
		}
		if len(s.qemu) > 1 {
			// qemu-img takes --shrink before the image.
			run(t, "qemu-img", "resize", "-q", s.qemu[0], twin, s.qemu[1])
		} else {
			run(t, "qemu-img", "resize", "-q", twin, s.qemu[0])
		}
		if got := qemuInfo(t, img).VirtualSize; got != s.size {
			t.Errorf("resize %v: qemu-img info says %d bytes, want %d", s.args, got, s.size)
		}
		qemuCheckClean(t, img)
		if r := execute("", "qemu-img", "compare", img, twin); r.Code != 0 {
			t.Errorf("resize %v: differs from qemu-img resize: %s", s.args, r)
		}
	}
}

func TestMaintMap(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	// A chain: a 1 MiB base with 4k clusters under a 3 MiB top with
	// extended L2, written in every way; the top reads zeros past the end
	// of the shorter base.
	base := k.Path("base")
	qemuCreate(t, base, "1M", "cluster_size=4k", "", "")
	qemuIO(t, base, k.Rand(0, 64<<10), Zero(128<<10, 8<<10), k.Rand(300<<10, 5000))
	top := k.Path("top")
	qemuCreate(t, top, "3M", "cluster_size=64k,extended_l2=on", "base.qcow2", "qcow2")
	qemuIO(t, top, k.Rand(4096, 4096), Zero(1536<<10, 64<<10), Discard(2<<20, 64<<10), k.Rand(2600<<10, 100<<10), Zero(8<<10, 4<<10))
	// A standalone image with compressed (zstd) and zero clusters.
	src := k.Path("src")
	qemuCreate(t, src, "2M", "", "", "")
	// Patterns, not random bytes: only what compresses is stored compressed.
	qemuIO(t, src, "write -P 0x11 0 256k", "write -P 0x22 1M 64k")
	comp := k.Path("comp")
	run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, comp)
	qemuIO(t, comp, Zero(64<<10, 64<<10), k.Rand(1<<20+512, 1024))

	for _, img := range []string{top, base, comp} {
		name := filepath.Base(img)
		got := parseMapRuns(t, maintOK(t, "map", "--output", "json", img), false)
		want := qemuMapJSON(t, "", img, false)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: qcow2fs map --output json:\n%s\nqemu-img map --output=json:\n%s", name, fmtRuns(got), fmtRuns(want))
		}
	}
	// The human form, run where the images are so the names match.
	for _, img := range []string{"top.qcow2", "base.qcow2"} {
		got := maintRunOK(t, k.Dir, "map", img)
		want := runIn(t, k.Dir, "qemu-img", "map", img)
		if got != want {
			t.Errorf("qcow2fs map %s:\n%s\nqemu-img map:\n%s", img, got, want)
		}
	}
	// Compressed runs: qemu-img refuses the human form, qcow2fs says so.
	if out := maintOK(t, "map", comp); !strings.Contains(out, "compressed") {
		t.Errorf("map of a compressed image shows no compressed run:\n%s", out)
	}
}

func maintRunOK(t *testing.T, dir string, args ...string) string {
	t.Helper()
	r := maintRun(dir, args...)
	if r.Code != 0 {
		t.Fatalf("qcow2fs %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

func fmtRuns(runs []mapRun) string {
	var b strings.Builder
	for _, r := range runs {
		off := "-"
		if r.Offset != nil {
			off = fmt.Sprint(*r.Offset)
		}
		fmt.Fprintf(&b, "  %d+%d depth %d present %v zero %v data %v offset %s\n", r.Start, r.Length, r.Depth, r.Present, r.Zero, r.Data, off)
	}
	return b.String()
}

// maintChain makes base <- top (qcow2) in dir with data in both, and
// returns their paths.
func maintChain(t *testing.T, k *imageKit, dir, prefix string) (base, top string) {
	t.Helper()
	base = filepath.Join(dir, prefix+"base.qcow2")
	top = filepath.Join(dir, prefix+"top.qcow2")
	qemuCreate(t, base, "4M", "", "", "")
	qemuIO(t, base, k.Rand(0, 2<<20))
	qemuCreate(t, top, "4M", "cluster_size=4k", prefix+"base.qcow2", "qcow2")
	qemuIO(t, top, k.Rand(100<<10, 50<<10), Zero(1<<20, 64<<10), Discard(1536<<10, 64<<10), k.Rand(3<<20, 8192))
	return base, top
}

func TestMaintCommitRebase(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))

	t.Run("commit", func(t *testing.T) {
		oursDir, twinDir := mkdir(t, dir, "c-ours"), mkdir(t, dir, "c-qemu")
		base, top := maintChain(t, k, oursDir, "")
		tbase, ttop := maintCopy(t, base, filepath.Join(twinDir, "base.qcow2")), maintCopy(t, top, filepath.Join(twinDir, "top.qcow2"))
		want := qemuRawOf(t, top, filepath.Join(dir, "commit-view.raw"))
		if out := maintOK(t, "commit", top); out != "Image committed.\n" {
			t.Errorf("commit printed %q", out)
		}
		run(t, "qemu-img", "commit", "-q", ttop)
		for _, img := range []string{base, top} {
			qemuCheckClean(t, img)
		}
		qemuCompareRaw(t, want, base)
		qemuCompareRaw(t, want, top)
		if r := execute("", "qemu-img", "compare", base, tbase); r.Code != 0 {
			t.Errorf("committed base differs from qemu-img commit's: %s", r)
		}
		// The top is empty again: everything comes from the base.
		for _, run := range qemuMapJSON(t, "", top, true) {
			if run.Depth == 0 && run.Present {
				t.Errorf("after commit the top still holds %d+%d", run.Start, run.Length)
			}
		}
	})

	t.Run("rebase", func(t *testing.T) {
		d := mkdir(t, dir, "r")
		_, top := maintChain(t, k, d, "")
		other := filepath.Join(d, "other.qcow2")
		qemuCreate(t, other, "4M", "", "", "")
		qemuIO(t, other, k.Rand(512<<10, 2<<20))
		want := qemuRawOf(t, top, filepath.Join(dir, "rebase-view.raw"))
		twin := maintCopy(t, top, filepath.Join(d, "twin.qcow2"))

		// Safe rebase onto another image (relative name): same content.
		maintOK(t, "rebase", "-b", "other.qcow2", "-F", "qcow2", top)
		runIn(t, d, "qemu-img", "rebase", "-q", "-b", "other.qcow2", "-F", "qcow2", "twin.qcow2")
		qemuCheckClean(t, top)
		qemuCompareRaw(t, want, top)
		if info := maintInfo(t, top); info["backing-filename"] != "other.qcow2" {
			t.Errorf("rebase: backing file %v", info["backing-filename"])
		}
		if r := execute("", "qemu-img", "compare", top, twin); r.Code != 0 {
			t.Errorf("rebased image differs from qemu-img rebase's: %s", r)
		}

		// Unsafe: only the name changes (to a copy with the same content).
		maintCopy(t, other, filepath.Join(d, "moved.qcow2"))
		maintOK(t, "rebase", "-u", "-b", "moved.qcow2", "-F", "qcow2", top)
		qemuCompareRaw(t, want, top)

		// Onto nothing: standalone, same content.
		maintOK(t, "rebase", "-b", "", top)
		if info := maintInfo(t, top); info["backing-filename"] != nil {
			t.Errorf("rebase -b \"\": still has backing file %v", info["backing-filename"])
		}
		qemuCheckClean(t, top)
		qemuCompareRaw(t, want, top)

		if r := maintRun("", "rebase", top); r.Code != 2 {
			t.Errorf("rebase without -b: want exit 2: %s", r)
		}
	})
}
