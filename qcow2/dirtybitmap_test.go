package qcow2

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
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

// qemuCheckClean runs qemu-img check and fails the test unless it exits 0.
func qemuCheckClean(t testing.TB, path string) {
	t.Helper()
	if out, err := tryCmd(filepath.Dir(path), "qemu-img", "check", path); err != nil {
		t.Fatalf("qemu-img check of %s not clean: %v\n%s", path, err, out)
	}
}

// qemuDirty asks QEMU (qemu-storage-daemon exporting the bitmap over NBD,
// read by qemu-img map) which ranges bitmap name marks dirty.
func qemuDirty(t testing.TB, path, name string) []span {
	t.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		lacking(t, "qemu-storage-daemon is not installed (apt-get install qemu-system-common)")
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
