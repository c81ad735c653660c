// Tests of persistent dirty bitmaps against QEMU: kept valid by guest writes,
// BitmapUpdate alike qemu-img bitmap, and bitmaps left in use by a crash
// (QEMU reading the dirty ranges through qemu-storage-daemon and NBD).

package qcow2

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// qemuBitmap is a bitmap as qemu-img info --output=json lists it.
type qemuBitmap struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}

func qemuBitmaps(t testing.TB, path string) []qemuBitmap {
	t.Helper()
	out := qemuImg(t, filepath.Dir(path), "info", "-U", "--output=json", path)
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []qemuBitmap `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("parse qemu-img info: %v\n%s", err, out)
	}
	return info.FormatSpecific.Data.Bitmaps
}

// qemuDirty asks QEMU (qemu-storage-daemon exporting the bitmap over NBD,
// read by qemu-img map) which ranges bitmap name marks dirty.
func qemuDirty(t testing.TB, path, name string) []span {
	t.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		testenv.Lacking(t, "qemu-storage-daemon is not installed (apt-get install qemu-system-common)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=f,filename="+path,
		"--blockdev", "driver=qcow2,node-name=q,file=f",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=e,node-name=q,writable=on,bitmaps.0="+name)
	logf, _ := os.Create(filepath.Join(dir, "qsd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "qsd.log"))
			t.Fatalf("qemu-storage-daemon exited (%v):\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		}
		if i > 200 {
			stop()
			t.Fatal("qemu-storage-daemon did not listen")
		}
	}
	out, err := tryCmd(dir, "qemu-img", "map", "--output=json", "--image-opts",
		"driver=nbd,server.type=unix,server.path="+sock+",export=q,x-dirty-bitmap=qemu:dirty-bitmap:"+name)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	var m []qemuMapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("parse qemu-img map: %v\n%s", err, out)
	}
	var dirty []span
	for _, e := range m {
		if !e.Data { // x-dirty-bitmap: dirty ranges read as "data": false
			dirty = append(dirty, span{Start: e.Start, End: e.Start + e.Length})
		}
	}
	return mergeSpans(dirty)
}

// granuleSpans turns byte ranges into the granules (of size gran) they
// touch, merged.
func granuleSpans(gran int64, ranges ...[2]int64) []span {
	var out []span
	for _, r := range ranges {
		out = append(out, span{Start: r[0] / gran * gran, End: (r[0] + r[1] + gran - 1) / gran * gran})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start < out[j].Start })
	var m []span
	for _, s := range out {
		if n := len(m); n > 0 && s.Start <= m[n-1].End {
			m[n-1].End = max(m[n-1].End, s.End)
			continue
		}
		m = append(m, s)
	}
	return m
}

func spansText(s []span) string {
	out := ""
	for _, x := range s {
		out += fmt.Sprintf("[%#x,%#x) ", x.Start, x.End)
	}
	return out
}

// TestBitmapsKeptOnWrite: a bitmap QEMU created stays valid after writes
// through Image: no leak, listed, not in use after close, and QEMU sees
// exactly the granules written as dirty (and keeps updating it after).
func TestBitmapsKeptOnWrite(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := createImage(t, dir, "a.qcow2", 64<<20, "")
	qemuImg(t, dir, "bitmap", "--add", p, "b0")
	qemuImg(t, dir, "bitmap", "--add", "-g", "128k", "--disable", p, "off")
	qemuImg(t, dir, "bitmap", "--add", "-g", "4k", p, "fine")
	qemuIO(t, p, "qcow2", []ioOp{write(1, 40<<20, 4096)})

	img, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	for i := range buf {
		buf[i] = 7
	}
	if _, err := img.WriteAt(buf[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(buf, 1<<20+60<<10); err != nil { // crosses a 64k granule
		t.Fatal(err)
	}
	if err := img.WriteZeroes(8<<20, 200<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.Discard(16<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, p)
	bms := qemuBitmaps(t, p)
	want := []qemuBitmap{{"b0", 65536, []string{"auto"}}, {"off", 131072, []string{}}, {"fine", 4096, []string{"auto"}}}
	if fmt.Sprint(bms) != fmt.Sprint(want) {
		t.Fatalf("bitmaps after our writes: %v, want %v", bms, want)
	}
	written := [][2]int64{{40 << 20, 4096}, {0, 4096}, {1<<20 + 60<<10, 8192}, {8 << 20, 200 << 10}, {16 << 20, 1 << 20}}
	for _, c := range []struct {
		name string
		gran int64
	}{{"b0", 64 << 10}, {"fine", 4096}} {
		got := qemuDirty(t, p, c.name)
		if w := granuleSpans(c.gran, written...); spansText(got) != spansText(w) {
			t.Errorf("QEMU's dirty ranges of %s: %s, want %s", c.name, spansText(got), spansText(w))
		}
	}
	for _, name := range []string{"b0", "fine"} {
		if got, q := ourDirty(t, p, name), qemuDirty(t, p, name); spansText(got) != spansText(q) {
			t.Errorf("our dirty ranges of %s: %s, QEMU's %s", name, spansText(got), spansText(q))
		}
	}
	if got := qemuDirty(t, p, "off"); len(got) != 0 {
		t.Errorf("disabled bitmap dirty: %s", spansText(got))
	}
	// QEMU keeps updating it after our close.
	qemuIO(t, p, "qcow2", []ioOp{write(2, 30<<20, 4096)})
	qemuCheckClean(t, p)
	written = append(written, [2]int64{30 << 20, 4096})
	if got, w := qemuDirty(t, p, "b0"), granuleSpans(64<<10, written...); spansText(got) != spansText(w) {
		t.Errorf("QEMU's dirty ranges after its own write: %s, want %s", spansText(got), spansText(w))
	}
	qemuCheckClean(t, p)
}

// ourDirty is BitmapExtents' dirty ranges (read-only open).
func ourDirty(t testing.TB, path, name string) []span {
	t.Helper()
	img, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	exts, err := img.BitmapExtents(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []span
	pos := int64(0)
	for _, e := range exts {
		if e.Start != pos || e.Length <= 0 {
			t.Fatalf("BitmapExtents of %s not contiguous at %#x: %+v", name, pos, e)
		}
		pos += e.Length
		if e.Dirty {
			out = append(out, span{Start: e.Start, End: e.Start + e.Length})
		}
	}
	if pos != img.Size() {
		t.Fatalf("BitmapExtents of %s cover %#x of %#x", name, pos, img.Size())
	}
	return mergeSpans(out)
}

// TestBitmapUpdateLikeQEMU: the same operations through BitmapUpdate and
// qemu-img bitmap leave bitmaps that qemu-img info lists alike, checks
// clean, and (merge) the same dirty ranges in QEMU's view.
func TestBitmapUpdateLikeQEMU(t *testing.T) {
	needQEMU(t)
	type step struct {
		args []string // qemu-img bitmap options
		acts []BitmapAction
		o    BitmapOptions
		name string
	}
	steps := []step{
		{[]string{"--add"}, []BitmapAction{{Kind: "add"}}, BitmapOptions{}, "a"},
		{[]string{"--add", "-g", "131072", "--disable"}, []BitmapAction{{Kind: "add"}, {Kind: "disable"}}, BitmapOptions{Granularity: 131072}, "b"},
		{[]string{"--add", "-g", "4096"}, []BitmapAction{{Kind: "add"}}, BitmapOptions{Granularity: 4096}, "c"},
		{[]string{"--add", "-g", "512"}, []BitmapAction{{Kind: "add"}}, BitmapOptions{Granularity: 512}, "d"},
		{[]string{"--disable"}, []BitmapAction{{Kind: "disable"}}, BitmapOptions{}, "a"},
		{[]string{"--enable"}, []BitmapAction{{Kind: "enable"}}, BitmapOptions{}, "b"},
		{[]string{"--remove"}, []BitmapAction{{Kind: "remove"}}, BitmapOptions{}, "d"},
		{[]string{"--merge", "c"}, []BitmapAction{{Kind: "merge", Source: "c"}}, BitmapOptions{}, "b"},
		{[]string{"--merge", "c", "--clear"}, []BitmapAction{{Kind: "merge", Source: "c"}, {Kind: "clear"}}, BitmapOptions{}, "a"},
		{[]string{"--merge", "b"}, []BitmapAction{{Kind: "merge", Source: "b"}}, BitmapOptions{}, "a"},
	}
	for _, cs := range []int64{512, 4096, 65536, 2 << 20} {
		t.Run(fmt.Sprint(cs), func(t *testing.T) {
			dir := t.TempDir()
			ours := createImage(t, dir, "ours.qcow2", 64<<20, fmt.Sprintf("cluster_size=%d", cs))
			theirs := createImage(t, dir, "theirs.qcow2", 64<<20, fmt.Sprintf("cluster_size=%d", cs))
			for i, st := range steps {
				if i == 4 { // some writes (QEMU's own) before the merges
					ops := []ioOp{write(1, 0, 4096), write(2, 5<<20+3000, 200000), zero(40<<20, 1<<20)}
					qemuIO(t, ours, "qcow2", ops)
					qemuIO(t, theirs, "qcow2", ops)
				}
				if err := BitmapUpdate(ours, st.name, st.acts, st.o); err != nil {
					t.Fatalf("step %d %v: %v", i, st.args, err)
				}
				qemuImg(t, dir, append(append([]string{"bitmap"}, st.args...), theirs, st.name)...)
				qemuCheckClean(t, ours)
				if a, b := qemuBitmaps(t, ours), qemuBitmaps(t, theirs); fmt.Sprint(a) != fmt.Sprint(b) {
					t.Fatalf("after step %d %v: ours %v, QEMU's %v", i, st.args, a, b)
				}
			}
			for _, name := range []string{"a", "b", "c"} {
				if a, b := ourDirty(t, ours, name), qemuDirty(t, theirs, name); spansText(a) != spansText(b) {
					t.Errorf("bitmap %s: ours dirty %s, QEMU's %s", name, spansText(a), spansText(b))
				}
				if a, b := qemuDirty(t, ours, name), qemuDirty(t, theirs, name); spansText(a) != spansText(b) {
					t.Errorf("bitmap %s as QEMU reads it: ours %s, QEMU's %s", name, spansText(a), spansText(b))
				}
			}
			// Errors: QEMU's wording, the file named.
			for _, c := range []struct {
				name string
				acts []BitmapAction
				want string
			}{
				{"a", []BitmapAction{{Kind: "add"}}, "Bitmap already exists: a"},
				{"zz", []BitmapAction{{Kind: "remove"}}, "Dirty bitmap 'zz' not found"},
				{"a", []BitmapAction{{Kind: "merge", Source: "zz"}}, "Dirty bitmap 'zz' not found"},
				{"n", []BitmapAction{{Kind: "add"}}, "Granularity must be power of 2"},
			} {
				o := BitmapOptions{}
				if c.name == "n" {
					o.Granularity = 1000
				}
				err := BitmapUpdate(ours, c.name, c.acts, o)
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), ours) {
					t.Errorf("%v on %s: error %v, want one naming the file and %q", c.acts, c.name, err, c.want)
				}
			}
			// Removing the last bitmaps drops the extension and the bit.
			for _, name := range []string{"a", "b", "c"} {
				if err := BitmapUpdate(ours, name, []BitmapAction{{Kind: "remove"}}, BitmapOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			qemuCheckClean(t, ours)
			if h := readHeaderOf(t, ours); h.AutoclearFeatures&AutoclearBitmaps != 0 {
				t.Error("autoclear bitmaps bit still set with no bitmap left")
			}
			if bms := qemuBitmaps(t, ours); len(bms) != 0 {
				t.Errorf("bitmaps left: %v", bms)
			}
		})
	}
}

// TestBitmapCrashInUse: a writer that never closes (a crash) leaves its
// bitmaps flagged in use; QEMU's check and ours accept that as is (check
// -r all leaves them), they are refused for use and can be removed; a
// read-only open touches nothing.
func TestBitmapCrashInUse(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := createImage(t, dir, "a.qcow2", 64<<20, "")
	qemuImg(t, dir, "bitmap", "--add", p, "b0")
	qemuImg(t, dir, "bitmap", "--add", p, "b1")
	// Read-only opens never touch the bitmaps.
	before := testenv.HashTree(t, dir)
	ro, err := Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.BitmapExtents("b0"); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	testenv.SameHashes(t, before, testenv.HashTree(t, dir))

	img, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	// Flush does not store the bitmaps (as QEMU): still in use.
	crash := filepath.Join(dir, "crash.qcow2")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crash, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	want := []qemuBitmap{{"b0", 65536, []string{"in-use", "auto"}}, {"b1", 65536, []string{"in-use", "auto"}}}
	if got := qemuBitmaps(t, crash); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a crash: %v, want %v", got, want)
	}
	qemuCheckClean(t, crash)
	theirs := filepath.Join(dir, "theirs.qcow2")
	if err := os.WriteFile(theirs, data, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, dir, "check", "-r", "all", theirs)
	res, err := Check(crash, CheckOptions{Repair: "all"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Corruptions+res.Leaks != 0 {
		t.Errorf("our check -r all: %+v", res)
	}
	if a, b := qemuBitmaps(t, crash), qemuBitmaps(t, theirs); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("after check -r all: ours %v, QEMU's %v", a, b)
	}
	if _, err := os.Stat(crash); err != nil {
		t.Fatal(err)
	}
	ro, err = Open(crash, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.BitmapExtents("b0"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("BitmapExtents of an in-use bitmap: %v", err)
	}
	ro.Close()
	// A later writer keeps the in-use bitmaps as they are, and nothing leaks.
	img, err = Open(crash, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 4096), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, crash)
	if got := qemuBitmaps(t, crash); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("in-use bitmaps after another write: %v, want %v", got, want)
	}
	if err := BitmapUpdate(crash, "b0", []BitmapAction{{Kind: "clear"}}, BitmapOptions{}); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Errorf("clear of an in-use bitmap: %v", err)
	}
	for _, n := range []string{"b0", "b1"} {
		if err := BitmapUpdate(crash, n, []BitmapAction{{Kind: "remove"}}, BitmapOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	qemuCheckClean(t, crash)
	if got := qemuBitmaps(t, crash); len(got) != 0 {
		t.Errorf("bitmaps left: %v", got)
	}
}
