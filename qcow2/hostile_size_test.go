// Sizes near the limits: views whose size approaches 2^63, and virtual sizes
// that are not a multiple of 512 (QEMU's oracle: qemu-img info, convert).

package qcow2

import (
	"bytes"
	"io"
	"math"
	"os"
	"strconv"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
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

// A virtual size that is not a multiple of 512 is rounded down, as QEMU
// does (total_sectors = size / 512): qemu-img info, convert and our reads
// agree.
func TestVirtualSizeUnaligned(t *testing.T) {
	needQEMU(t)
	for _, size := range []int64{1*mib + 100, 1*mib - 1, 511, 1} {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			// Not parallel: a read-write open right after a read-only one
			// fails if a sibling's fork (qemu-img) still shares the old
			// descriptor and so its OFD locks (until the child execs).
			dir := t.TempDir()
			p := createImage(t, dir, "disk.qcow2", 1*mib, "")
			qemuIO(t, p, "qcow2", []ioOp{write(0xaa, 0, 4096), write(0xbb, 1*mib-4096, 4096)})
			testenv.PatchFile(t, p, hdrSize, be64(uint64(size)))
			want := size &^ 511
			qi := qemuImageInfo(t, p)
			if qi.VirtualSize != want {
				t.Fatalf("qemu-img info says %d for a header size of %d; expected %d", qi.VirtualSize, size, want)
			}
			img, err := Open(p, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if img.Size() != want || img.Info().VirtualSize != want {
				t.Fatalf("Size() = %d, Info().VirtualSize = %d; want %d", img.Size(), img.Info().VirtualSize, want)
			}
			raw := convertToRaw(t, p, dir)
			if want > 0 {
				compareReads(t, img, raw)
			} else if st, err := os.Stat(raw); err != nil || st.Size() != 0 {
				t.Fatalf("qemu-img convert: %v, %d bytes", err, st.Size())
			}
			// A snapshot taken now records the rounded size, like QEMU's.
			img.Close()
			if err := SnapshotCreate(p, "now"); err != nil {
				t.Fatal(err)
			}
			qemuImg(t, dir, "snapshot", "-c", "qemu", "disk.qcow2")
			img, err = Open(p, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range img.Snapshots() {
				if s.DiskSize != want {
					t.Errorf("snapshot %s records disk size %d, want %d", s.Name, s.DiskSize, want)
				}
			}
			img.Close()
			if code, out := exitCode(t, dir, "qemu-img", "check", p); code != 0 {
				t.Errorf("qemu-img check exit %d:\n%s", code, out)
			}
		})
	}
}
