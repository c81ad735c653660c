package qcow2

// Sizes near the limits: views whose size approaches 2^63.

import (
	"bytes"
	"io"
	"math"
	"testing"
)

// A view whose size is near the int64 limit reads and maps its end without
// overflowing the per-L2-table stepping of mapRuns.
func TestMapRunsNearMaxSize(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := goodImage(t, dir, "disk.qcow2", "")
	img, err := Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	// A hand-made view: no snapshot of that size can be opened any more.
	v := &Image{s: img.s, ro: true, size: math.MaxInt64, l1: img.l1, l1Offset: img.l1Offset}
	buf := make([]byte, 3*64*kib)
	for _, off := range []int64{math.MaxInt64 - 4096, math.MaxInt64 - 64*kib - 100, math.MaxInt64 - 1} {
		for i := range buf {
			buf[i] = 0x55
		}
		n, err := v.ReadAt(buf, off)
		if want := int(math.MaxInt64 - off); n != want || err != io.EOF {
			t.Fatalf("ReadAt(%#x) = %d, %v; want %d, EOF", off, n, err, want)
		}
		if !bytes.Equal(buf[:n], make([]byte, n)) {
			t.Errorf("ReadAt(%#x): not zeros", off)
		}
		exts, err := v.Map(off, 1<<40)
		if err != nil || len(exts) != 1 || exts[0].Offset != off || exts[0].Offset+exts[0].Length != math.MaxInt64 {
			t.Errorf("Map(%#x) = %+v, %v", off, exts, err)
		}
	}
	// The start still reads the image's data.
	if _, err := v.ReadAt(buf[:4096], 0); err != nil || buf[0] != 0xaa {
		t.Errorf("ReadAt(0) = %#x, %v", buf[0], err)
	}
}
