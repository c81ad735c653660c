// Unit tests of the maintenance commands' parsing and output formats (sizes,
// -o lists, map merging, check and snapshot list text) and an in-process run
// of the commands on a fresh image.

package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/units"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

func TestParseSizeChange(t *testing.T) {
	tests := []struct {
		in   string
		sign int
		n    int64
		bad  bool
	}{
		{in: "10G", sign: 0, n: 10 << 30},
		{in: "+1M", sign: 1, n: 1 << 20},
		{in: "-512", sign: -1, n: 512},
		{in: "+", bad: true},
		{in: "--1M", bad: true},
	}
	for _, tt := range tests {
		sign, n, err := units.ParseChange(tt.in)
		if tt.bad != (err != nil) || !tt.bad && (sign != tt.sign || n != tt.n) {
			t.Errorf("units.ParseChange(%q) = %d, %d, %v", tt.in, sign, n, err)
		}
	}
}

func TestParseKeyValues(t *testing.T) {
	tests := []struct {
		in   []string
		want []keyValue
		bad  bool
	}{
		{in: nil, want: nil},
		{in: []string{"cluster_size=4k"}, want: []keyValue{{"cluster_size", "4k"}}},
		{in: []string{"a=1,b=2", "c=3"}, want: []keyValue{{"a", "1"}, {"b", "2"}, {"c", "3"}}},
		{in: []string{"data_file=x,,y.raw,lazy_refcounts"}, want: []keyValue{{"data_file", "x,y.raw"}, {"lazy_refcounts", "on"}}},
		{in: []string{"a=1,,"}, want: []keyValue{{"a", "1,"}}},
		{in: []string{"a=b=c"}, want: []keyValue{{"a", "b=c"}}},
		{in: []string{",a=1,"}, want: []keyValue{{"a", "1"}}},
		{in: []string{"help"}, want: []keyValue{{"help", ""}}},
		{in: []string{"?"}, want: []keyValue{{"?", ""}}},
		{in: []string{"=1"}, bad: true},
	}
	for _, tt := range tests {
		got, err := parseKeyValues(tt.in)
		if tt.bad != (err != nil) || !tt.bad && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseKeyValues(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestCreateOptions(t *testing.T) {
	tests := []struct {
		in   string
		want qcow2.CreateOptions
		bad  string // part of the error
	}{
		{in: "", want: qcow2.CreateOptions{}},
		{in: "cluster_size=4k,compat=0.10", want: qcow2.CreateOptions{ClusterSize: 4096, Version: 2}},
		{in: "compat=v3,lazy_refcounts=on,extended_l2=on", want: qcow2.CreateOptions{Version: 3, LazyRefcounts: true, ExtendedL2: true}},
		{in: "compat=1.1,refcount_bits=1", want: qcow2.CreateOptions{Version: 3, RefcountBits: 1}},
		{in: "compression_type=zstd,preallocation=full", want: qcow2.CreateOptions{CompressionType: "zstd", Preallocation: "full"}},
		{in: "data_file=d.raw,data_file_raw=yes", want: qcow2.CreateOptions{DataFile: "d.raw", DataFileRaw: true}},
		{in: "backing_file=base.qcow2,backing_fmt=qcow2,size=1G", want: qcow2.CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2", Size: 1 << 30}},
		{in: "lazy_refcounts=off", want: qcow2.CreateOptions{}},
		{in: "compat=2", bad: "compat"},
		{in: "refcount_bits=x", bad: "refcount_bits"},
		{in: "refcount_bits=0", bad: "refcount_bits"},
		{in: "lazy_refcounts=maybe", bad: "lazy_refcounts"},
		{in: "cluster_size=big", bad: "cluster_size"},
		{in: "encryption=on", bad: "encrypt"},
		{in: "bogus=1", bad: "bogus"},
	}
	for _, tt := range tests {
		kvs, err := parseKeyValues([]string{tt.in})
		if err != nil {
			t.Fatal(err)
		}
		got, err := createOptions(kvs)
		switch {
		case tt.bad != "" && (err == nil || !strings.Contains(err.Error(), tt.bad)):
			t.Errorf("createOptions(%q): error %v, want one about %s", tt.in, err, tt.bad)
		case tt.bad == "" && err != nil:
			t.Errorf("createOptions(%q): %v", tt.in, err)
		case tt.bad == "" && !reflect.DeepEqual(got, tt.want):
			t.Errorf("createOptions(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestNegativeSizeArgs(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"img", "10G"}, []string{"img", "10G"}},
		{[]string{"img", "-1G"}, []string{"img", "--", "-1G"}},
		{[]string{"--shrink", "img", "-512"}, []string{"--shrink", "img", "--", "-512"}},
		{[]string{"-q", "img", "+1G"}, []string{"-q", "img", "+1G"}},
		{[]string{"--", "img", "-1G"}, []string{"--", "img", "-1G"}},
	}
	for _, tt := range tests {
		if got := negativeSizeArgs(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("negativeSizeArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMapEntryMerge(t *testing.T) {
	data := func(start, n, host int64) mapEntry {
		return mapEntry{Start: start, Length: n, Present: true, Data: true, Offset: host}
	}
	a := data(0, 4096, 8192)
	if !a.extend(data(4096, 4096, 12288)) || a.Length != 8192 {
		t.Errorf("contiguous data runs not merged: %+v", a)
	}
	if a.extend(data(8192, 4096, 65536)) {
		t.Error("runs not contiguous on the host merged")
	}
	z := mapEntry{Start: 0, Length: 10, Zero: true, Offset: -1}
	if !z.extend(mapEntry{Start: 10, Length: 5, Zero: true, Offset: -1}) || z.Length != 15 {
		t.Errorf("unallocated runs not merged: %+v", z)
	}
	if z.extend(mapEntry{Start: 15, Length: 5, Zero: true, Depth: 1, Offset: -1}) {
		t.Error("runs of different depths merged")
	}
	if got, want := data(0, 512, 1024).json(), `{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "compressed": false, "offset": 1024}`; got != want {
		t.Errorf("json = %s\nwant %s", got, want)
	}
	if got := z.json(); strings.Contains(got, "offset") {
		t.Errorf("unmapped run shows an offset: %s", got)
	}
}

func TestCheckHumanOutput(t *testing.T) {
	var b bytes.Buffer
	writeCheckHuman(&b, &qcow2.CheckResult{Leaks: 2, Corruptions: 1, TotalClusters: 160, AllocatedClusters: 4, FragmentedClusters: 1, ImageEndOffset: 393216})
	want := "\n1 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n" +
		"\n2 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n" +
		"4/160 = 2.50% allocated, 25.00% fragmented, 0.00% compressed clusters\nImage end offset: 393216\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	writeCheckHuman(&b, &qcow2.CheckResult{LeaksFixed: 3, ImageEndOffset: 4096})
	want = "The following inconsistencies were found and repaired:\n\n    3 leaked clusters\n    0 corruptions\n\n" +
		"Double checking the fixed image now...\nNo errors were found on the image.\nImage end offset: 4096\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSnapshotListFormat(t *testing.T) {
	var b bytes.Buffer
	writeSnapshotList(&b, []qcow2.SnapshotInfo{{ID: "1", Name: "s1", VMStateSize: 0, VMClockNsec: 3723004000000, ICount: 0},
		{ID: "12", Name: "a-long-snapshot-name", VMStateSize: 1 << 20, ICount: ^uint64(0)}})
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "Snapshot list:" ||
		lines[1] != "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT" {
		t.Fatalf("unexpected listing:\n%s", b.String())
	}
	// Columns as qemu-img's: ID 9+1, TAG 16+1, VM SIZE 8, DATE 20, CLOCK 13, ICOUNT 11.
	if !strings.HasPrefix(lines[2], "1         s1                    0 B ") || !strings.HasSuffix(lines[2], " 01:02:03.004          0") {
		t.Errorf("row %q", lines[2])
	}
	if !strings.HasSuffix(lines[3], "00:00:00.000           ") || !strings.Contains(lines[3], "a-long-snapshot-name    1 MiB") {
		t.Errorf("row %q", lines[3])
	}
	b.Reset()
	writeSnapshotList(&b, nil)
	if b.Len() != 0 {
		t.Errorf("no snapshots printed %q, want nothing (as qemu-img)", b.String())
	}
}

func TestLayerFiles(t *testing.T) {
	in := &qcow2.Info{Filename: "/d/top.qcow2", BackingFile: "mid.qcow2",
		Backing: &qcow2.Info{Filename: "/d/mid.qcow2", BackingFile: "/abs/base.qcow2", DataFile: "",
			Backing: &qcow2.Info{Filename: "/abs/base.qcow2", DataFile: "base.raw"}}}
	got := layerFiles("top.qcow2", in)
	want := []string{"top.qcow2", "mid.qcow2", "/abs/base.raw"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layerFiles = %q, want %q", got, want)
	}
}

// TestMaintCLI drives the maintenance commands in-process on a fresh image
// (the QEMU comparisons are in the integration suite).
func TestMaintCLI(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "t.qcow2")
	mustRun := func(want int, args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, args...)
		if code != want {
			t.Fatalf("qcow2fs %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out
	}
	mustRun(0, "create", "-q", "-o", "cluster_size=4k", img, "1M")
	mustRun(0, "snapshot", "create", "s1", img)
	if out := mustRun(0, "snapshot", "list", img); !strings.Contains(out, " s1 ") {
		t.Errorf("snapshot list:\n%s", out)
	}
	mustRun(0, "resize", "-q", img, "+1M")
	mustRun(0, "snapshot", "-a", "s1", img)
	out := mustRun(0, "check", "--output", "json", img)
	var res qcow2.CheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Filename != img || res.TotalClusters != 256 {
		t.Errorf("check json: %v %+v\n%s", err, res, out)
	}
	out = mustRun(0, "map", "--output", "json", img)
	var runs []map[string]any
	if err := json.Unmarshal([]byte(out), &runs); err != nil || len(runs) != 1 || runs[0]["length"] != float64(1<<20) {
		t.Errorf("map json: %v\n%s", err, out)
	}
	mustRun(0, "snapshot", "delete", "1", img)

	// Usage errors: exit 2; failures: exit 1.
	mustRun(2, "create", img)
	mustRun(2, "create", "-o", "bogus=1", img, "1M")
	mustRun(2, "create", img, "12Q")
	mustRun(2, "check", "--repair", "some", img)
	mustRun(2, "check", "-r", "all", "-U", img)
	mustRun(2, "resize", img)
	mustRun(2, "snapshot", "frobnicate", img)
	mustRun(2, "snapshot", "-l", "-c", "x", img)
	mustRun(2, "rebase", img)
	mustRun(2, "map", "--output", "xml", img)
	mustRun(1, "resize", img, "-1M")
	mustRun(1, "snapshot", "apply", "nope", img)
	mustRun(1, "check", filepath.Join(dir, "missing.qcow2"))
	for _, cmd := range []string{"create", "check", "snapshot", "resize", "map", "commit", "rebase"} {
		if out := mustRun(0, cmd, "--help"); !strings.Contains(out, "Usage: qcow2fs "+cmd) {
			t.Errorf("%s --help:\n%s", cmd, out)
		}
	}
}

// TestProgressSilentOffTerminal: -p draws nothing when stderr is not a
// terminal (logs and pipes get no control characters), and the callbacks
// are safe to call either way.
func TestProgressSilentOffTerminal(t *testing.T) {
	old := stderrIsTerminal
	defer func() { stderrIsTerminal = old }()
	stderrIsTerminal = func() bool { return false }
	p := newProgress(true, "x")
	if p.w != nil {
		t.Fatal("progress bar created although stderr is not a terminal")
	}
	p.update(1, 2)
	p.finish()
	p.abort()
	stderrIsTerminal = func() bool { return true }
	if p := newProgress(false, "x"); p.w != nil {
		t.Error("progress bar created without -p")
	}
}

// TestProgressLine: on a terminal the line is redrawn in place (\r), at
// most every progressEvery, with a percentage and, after a second, an
// estimate; the end (by the last step, finish or abort) ends the line once.
func TestProgressLine(t *testing.T) {
	var out strings.Builder
	clock := time.Unix(1000, 0)
	p := &progress{w: &out, what: "converting", now: func() time.Time { return clock }}
	p.start = clock
	p.draw(0, 1)
	p.update(10, 100) // within progressEvery of the first draw: not drawn
	clock = clock.Add(2 * time.Second)
	p.update(50, 100)
	p.update(60, 100) // throttled
	clock = clock.Add(2 * time.Second)
	p.update(100, 100)
	p.update(100, 100) // after the end: nothing
	p.finish()
	p.abort()
	lines := strings.Split(out.String(), "\r")[1:]
	if len(lines) != 3 {
		t.Fatalf("%d draws, want 3 (start, 50%%, end): %q", len(lines), out.String())
	}
	for i, want := range []string{"converting   0% [>", "converting  50% [===============>", "converting 100% [==============================] 4s "} {
		if !strings.HasPrefix(lines[i], want) {
			t.Errorf("draw %d = %q, want it to start with %q", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[1], "2s, about 2s left") {
		t.Errorf("50%% after 2s: %q, want the elapsed time and about 2s left", lines[1])
	}
	if strings.Count(out.String(), "\n") != 1 || !strings.HasSuffix(out.String(), "\n") {
		t.Errorf("the line was ended %d times: %q", strings.Count(out.String(), "\n"), out.String())
	}

	out.Reset()
	p = &progress{w: &out, what: "checking", now: time.Now}
	p.start = p.now()
	p.draw(3, 10)
	p.abort()
	p.finish()
	if got := out.String(); !strings.HasPrefix(got, "\rchecking  30%") || !strings.HasSuffix(got, "\n") || strings.Count(got, "100%") != 0 {
		t.Errorf("aborted line: %q, want 30%% then a newline and no completion", got)
	}
}
