// Hostile snapshot tables and sizes (QEMU iotests 029, 080, 261): each
// image starts from qemu-img create + qemu-img snapshot -c and has bytes
// patched per docs/interop/qcow2.txt; QEMU's behaviour (qemu-img info,
// check's exit code, convert, snapshot -a) is the oracle.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// Offsets inside a snapshot table entry (docs/interop/qcow2.txt).
const (
	snapL1Offset  = 0
	snapL1Size    = 8
	snapIDLen     = 12
	snapNameLen   = 14
	snapExtraLen  = 36
	snapExtraDisk = snapshotHeaderLen + 8 // disk size, in the extra data
)

// twoSnapshotImage makes a 1 MiB image with snapshots s1 and s2 and a
// different active state, so that every view has its own content.
func twoSnapshotImage(t *testing.T, dir string) string {
	t.Helper()
	p := createImage(t, dir, "disk.qcow2", 1*mib, "")
	qemuIO(t, p, "qcow2", []ioOp{write(0xaa, 0, 64*kib)})
	qemuImg(t, dir, "snapshot", "-c", "s1", "disk.qcow2")
	qemuIO(t, p, "qcow2", []ioOp{write(0xbb, 0, 4*kib), write(0xcc, 512*kib, 4*kib)})
	qemuImg(t, dir, "snapshot", "-c", "s2", "disk.qcow2")
	qemuIO(t, p, "qcow2", []ioOp{write(0xdd, 8*kib, 4*kib)})
	return p
}

// snapshotEntries returns the file offset of every snapshot table entry.
func snapshotEntries(t *testing.T, path string) []int64 {
	t.Helper()
	h := readHeaderOf(t, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []int64
	off := int64(h.SnapshotsOffset)
	for i := uint32(0); i < h.NbSnapshots; i++ {
		var e [snapshotHeaderLen]byte
		if _, err := f.ReadAt(e[:], off); err != nil {
			t.Fatalf("read snapshot entry %d: %v", i, err)
		}
		out = append(out, off)
		be := binary.BigEndian
		body := int64(be.Uint32(e[snapExtraLen:])) + int64(be.Uint16(e[snapIDLen:])) + int64(be.Uint16(e[snapNameLen:]))
		off += (snapshotHeaderLen + body + 7) &^ 7
	}
	return out
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// One bad snapshot table entry: QEMU opens the image and serves the active
// disk (qemu-img check exits 2, or 1 where it cannot read the table);
// we do the same, hide the bad snapshot with its problem, still serve the
// good one, and our check exits as QEMU's does.
func TestSnapshotBadEntry(t *testing.T) {
	needQEMU(t)
	cases := []struct {
		name  string
		field int64
		value func(orig uint64) []byte
		want  string // in the snapshot's problem and OpenSnapshot's error
		// Exit codes of qemu-img check and of our Check (the same: like
		// QEMU's block layer, ours fails reads that end past
		// BDRV_MAX_LENGTH, 2^63 - 1 GiB, so that check cannot complete).
		qemuCode, ourCode int
	}{
		{"l1-offset-unaligned", snapL1Offset, func(o uint64) []byte { return be64(o + 512) }, "not cluster-aligned", 2, 2},
		{"l1-offset-past-eof", snapL1Offset, func(uint64) []byte { return be64(1 << 40) }, "past the end", 2, 2},
		{"l1-offset-below-qemu-max-length", snapL1Offset, func(uint64) []byte { return be64(0x7fffffffbfff0000) }, "past the end", 2, 2},
		{"l1-offset-near-int64-max", snapL1Offset, func(uint64) []byte { return be64(0x7fffffffffff0000) }, "past the end", 1, 1},
		// Negative as int64: both checks fail to count it (QEMU runs out
		// of memory growing its refcount array, ours cannot read there).
		{"l1-offset-top-bit", snapL1Offset, func(uint64) []byte { return be64(0xffffffffffff0000) }, "past the end", 1, 1},
		{"l1-size-over-qemu-limit", snapL1Size, func(uint64) []byte { return be32(32<<20/8 + 1) }, "too large", 2, 2},
		{"l1-size-max", snapL1Size, func(uint64) []byte { return be32(math.MaxUint32) }, "too large", 2, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Not parallel: a read-write open right after a read-only one
			// fails if a sibling's fork (qemu-img) still shares the old
			// descriptor and so its OFD locks (until the child execs).
			dir := t.TempDir()
			p := twoSnapshotImage(t, dir)
			ents := snapshotEntries(t, p)
			orig, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			testenv.PatchFile(t, p, ents[0]+c.field, c.value(binary.BigEndian.Uint64(orig[ents[0]+snapL1Offset:])))

			// QEMU: info works, the active disk converts, check's verdict.
			qemuImg(t, dir, "info", p)
			want := convertToRaw(t, p, dir)
			qcode, qout := exitCode(t, dir, "qemu-img", "check", p)
			if qcode != c.qemuCode {
				t.Fatalf("qemu-img check exit %d, expected %d:\n%s", qcode, c.qemuCode, qout)
			}
			s2L, _ := snapshotOracle(t, p, dir, "s2")

			img, err := Open(p, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			compareReads(t, img, want)
			snaps := img.Snapshots()
			if len(snaps) != 2 || snaps[0].Name != "s1" || snaps[1].Name != "s2" {
				t.Fatalf("Snapshots() = %+v", snaps)
			}
			if !strings.Contains(snaps[0].Problem, c.want) || !strings.Contains(snaps[0].Problem, "L1 table") {
				t.Errorf("s1 problem %q, want it to mention the L1 table and %q", snaps[0].Problem, c.want)
			}
			if snaps[1].Problem != "" {
				t.Errorf("s2 has a problem: %s", snaps[1].Problem)
			}
			if v, err := img.OpenSnapshot("s1"); err == nil {
				v.Close()
				t.Errorf("OpenSnapshot(s1) succeeded")
			} else if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("OpenSnapshot(s1): %v (want the file and %q)", err, c.want)
			}
			v, err := img.OpenSnapshot("s2")
			if err != nil {
				t.Fatalf("OpenSnapshot(s2): %v", err)
			}
			compareReads(t, v, s2L)
			v.Close()
			img.Close()

			res, err := Check(p, CheckOptions{})
			code := 1
			if err == nil {
				code = res.ExitCode()
			}
			if code != c.ourCode {
				t.Errorf("Check exit code %d (%v), want %d (qemu-img check: %d):\n%s\nours: %+v", code, err, c.ourCode, qcode, qout, res)
			}

			// A writable open serves the active disk too; the writes land
			// and QEMU's verdict on the image does not change.
			img, err = Open(p, OpenOptions{})
			if err != nil {
				t.Fatalf("read-write Open: %v", err)
			}
			if _, err := img.WriteAt(bytes.Repeat([]byte{0xee}, 4096), 256*kib); err != nil {
				t.Fatalf("WriteAt: %v", err)
			}
			if err := img.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if code, out := exitCode(t, dir, "qemu-img", "check", p); code != qcode {
				t.Errorf("after our write, qemu-img check exits %d (was %d):\n%s", code, qcode, out)
			}
			after := convertToRaw(t, p, t.TempDir())
			b, _ := os.ReadFile(after)
			if len(b) != int(mib) || b[256*kib] != 0xee || b[8*kib] != 0xdd {
				t.Errorf("after our write QEMU reads %d bytes, %#x at 256K, %#x at 8K", len(b), b[256*kib], b[8*kib])
			}
		})
	}
}

// A dirty image (lazy refcounts) with a bad snapshot entry: the refcount
// rebuild on a writable open skips the entry instead of allocating its
// 32 GiB "L1 table" or failing.
func TestSnapshotBadEntryDirty(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := createImage(t, dir, "disk.qcow2", 1*mib, "lazy_refcounts=on")
	qemuIO(t, p, "qcow2", []ioOp{write(0xaa, 0, 64*kib)})
	qemuImg(t, dir, "snapshot", "-c", "s1", "disk.qcow2")
	ents := snapshotEntries(t, p)
	testenv.PatchFile(t, p, ents[0]+snapL1Size, be32(math.MaxUint32))
	testenv.PatchFile(t, p, hdrIncompat, be64(IncompatDirty))

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	img, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	runtime.ReadMemStats(&ms)
	if n := ms.TotalAlloc - before; n > 64<<20 {
		t.Errorf("opening a 1 MiB dirty image allocated %d MiB", n>>20)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{0xee}, 4096), 128*kib); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	code, out := exitCode(t, dir, "qemu-img", "check", p)
	if code != 2 || !strings.Contains(out, "L1 table is too large") {
		t.Errorf("qemu-img check after the rebuild: exit %d (want 2, the bad entry only):\n%s", code, out)
	}
	raw := convertToRaw(t, p, dir)
	b, _ := os.ReadFile(raw)
	if b[0] != 0xaa || b[128*kib] != 0xee {
		t.Errorf("QEMU reads %#x at 0, %#x at 128K", b[0], b[128*kib])
	}
}

// A snapshot's disk size that QEMU cannot apply (negative as int64, past
// its maximum length, not a multiple of 512, or needing an L1 table over
// QEMU's 32 MiB limit) hides the snapshot; sizes QEMU applies work.
func TestSnapshotDiskSize(t *testing.T) {
	needQEMU(t)
	maxSize := uint64(32<<20/8) << (16 + 13) // 64 KiB clusters: 4 Mi L1 entries × 512 MiB
	cases := []struct {
		size   uint64
		usable bool
	}{
		{math.MaxInt64, false},
		{math.MaxUint64, false},
		{1 << 63, false},
		{1000, false},
		{1<<20 + 1, false},
		{1 << 56, false},
		{maxSize + 512, false},
		{maxSize, true},
		{2 * uint64(mib), true},
		{512 * uint64(kib), true},
		{0, true},
	}
	for _, c := range cases {
		t.Run(strconv.FormatUint(c.size, 10), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := twoSnapshotImage(t, dir)
			ents := snapshotEntries(t, p)
			testenv.PatchFile(t, p, ents[0]+snapExtraDisk, be64(c.size))

			cp := filepath.Join(dir, "applied.qcow2")
			copyFile(t, p, cp)
			qcode, qout := exitCode(t, dir, "qemu-img", "snapshot", "-a", "s1", cp)
			if (qcode == 0) != c.usable {
				t.Fatalf("qemu-img snapshot -a: exit %d, want usable=%v:\n%s", qcode, c.usable, qout)
			}
			if code, out := exitCode(t, dir, "qemu-img", "check", p); code != 0 {
				t.Errorf("qemu-img check exit %d:\n%s", code, out)
			}

			img, err := Open(p, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer img.Close()
			compareReads(t, img, convertToRaw(t, p, dir))
			sn := img.Snapshots()[0]
			v, err := img.OpenSnapshot("s1")
			if !c.usable {
				if err == nil {
					v.Close()
					t.Fatalf("OpenSnapshot succeeded for disk size %d (size %d)", c.size, v.Size())
				}
				if sn.Problem == "" || !strings.Contains(sn.Problem, "disk size") || sn.DiskSize < 0 {
					t.Errorf("Snapshots()[0] = %+v: want a disk size problem and no negative size", sn)
				}
				if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "disk size") {
					t.Errorf("OpenSnapshot: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenSnapshot: %v", err)
			}
			defer v.Close()
			if sn.Problem != "" || v.Size() != int64(c.size) || sn.DiskSize != int64(c.size) {
				t.Fatalf("usable snapshot: problem %q, view size %d, DiskSize %d, want %d", sn.Problem, v.Size(), sn.DiskSize, c.size)
			}
			if c.size > 64*uint64(mib) {
				// Too big to convert: the end reads as zeros, without overflow.
				buf := make([]byte, 8192)
				n, err := v.ReadAt(buf, v.Size()-4096)
				if n != 4096 || err != io.EOF || !bytes.Equal(buf[:n], make([]byte, n)) {
					t.Errorf("read at the end: %d, %v", n, err)
				}
				return
			}
			applied := filepath.Join(dir, "applied.raw")
			qemuImg(t, dir, "convert", "-O", "raw", cp, applied)
			if c.size == 0 {
				if st, err := os.Stat(applied); err != nil || st.Size() != 0 {
					t.Fatalf("QEMU's applied snapshot: %v", err)
				}
				return
			}
			compareReads(t, v, applied)
		})
	}
}

// writeSnapshotTable replaces the snapshot table of the image at p with
// entries of the given name lengths (ID empty, no extra data, empty L1
// table, names left as holes of zeros) at byte offset at, and returns the
// table's length as QEMU counts it (the last entry unpadded).
func writeBigSnapshotTable(t *testing.T, p string, at int64, nameLens []int) int64 {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := at
	var length int64
	for _, n := range nameLens {
		var e [snapshotHeaderLen]byte
		binary.BigEndian.PutUint16(e[snapNameLen:], uint16(n))
		if _, err := f.WriteAt(e[:], off); err != nil {
			t.Fatal(err)
		}
		length = off - at + snapshotHeaderLen + int64(n)
		off += (snapshotHeaderLen + int64(n) + 7) &^ 7
	}
	if err := f.Truncate(off + 64*kib); err != nil {
		t.Fatal(err)
	}
	var h [12]byte
	binary.BigEndian.PutUint32(h[0:], uint32(len(nameLens)))
	binary.BigEndian.PutUint64(h[4:], uint64(at))
	if _, err := f.WriteAt(h[:], hdrNbSnapshots); err != nil {
		t.Fatal(err)
	}
	return length
}

// The 64 MiB snapshot table limit (QCOW_MAX_SNAPSHOTS_SIZE) counts the last
// entry, as QEMU does: a table of exactly 64 MiB opens, one byte more is
// refused before its entries are read, with a short message.
func TestSnapshotTableSizeLimit(t *testing.T) {
	needQEMU(t)
	// 1023 entries of 65568 bytes (40 + 65528-byte name) and a last one
	// that brings the total to 64 MiB (+extra).
	for _, extra := range []int{0, 1} {
		t.Run(strconv.Itoa(extra), func(t *testing.T) {
			dir := t.TempDir()
			p := createImage(t, dir, "disk.qcow2", 1*mib, "")
			lens := make([]int, 1024)
			for i := range lens {
				lens[i] = 65528
			}
			lens[1023] = 64<<20 - 1023*(snapshotHeaderLen+65528) - snapshotHeaderLen + extra
			if got := writeBigSnapshotTable(t, p, 1*mib, lens); got != 64<<20+int64(extra) {
				t.Fatalf("table of %d bytes", got)
			}
			code, out := exitCode(t, dir, "qemu-img", "info", "--output=json", p)
			if (code == 0) != (extra == 0) {
				t.Fatalf("qemu-img info exit %d for a table of 64 MiB + %d:\n%.500s", code, extra, out)
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			before := ms.TotalAlloc
			img, err := Open(p, OpenOptions{ReadOnly: true})
			runtime.ReadMemStats(&ms)
			alloc := ms.TotalAlloc - before
			if extra == 0 {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if n := len(img.Snapshots()); n != 1024 {
					t.Errorf("%d snapshots", n)
				}
				img.Close()
				if alloc > 96<<20 {
					t.Errorf("Open allocated %d MiB for a 64 MiB table", alloc>>20)
				}
				return
			}
			if err == nil {
				img.Close()
				t.Fatal("Open accepted a table over 64 MiB")
			}
			msg := err.Error()
			if !strings.Contains(msg, p) || !strings.Contains(msg, "snapshot table") || len(msg) > 1024 {
				t.Errorf("error (%d bytes): %.300s", len(msg), msg)
			}
			if alloc > 4<<20 {
				t.Errorf("refusing the table allocated %d MiB", alloc>>20)
			}
		})
	}
}
