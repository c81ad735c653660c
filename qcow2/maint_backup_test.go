// Tests of backup against QEMU: a full and incremental chain restored with
// qemu-img convert, incrementals holding only dirty clusters, and failed
// backups clearing nothing.

package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// imageWrites applies writes through our own writer (so the bitmap is kept
// by qcow2fs as well as by qemu-io).
func imageWrites(t *testing.T, path string, ops []ioOp) {
	t.Helper()
	img, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ops {
		switch o.kind {
		case 'w':
			_, err = img.WriteAt(bytes.Repeat([]byte{o.pat}, int(o.n)), o.off)
		case 'z':
			err = img.WriteZeroes(o.off, o.n)
		case 'd':
			err = img.Discard(o.off, o.n)
		}
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// ownRanges lists what qemu-img map says the image holds itself (depth 0,
// data or zero clusters).
func ownRanges(t *testing.T, path string) []span {
	t.Helper()
	var runs []struct {
		Start, Length, Depth int64
		Present              bool
	}
	if err := json.Unmarshal(qemuImg(t, filepath.Dir(path), "map", "--output=json", path), &runs); err != nil {
		t.Fatal(err)
	}
	var out []span
	for _, r := range runs {
		if r.Depth == 0 && r.Present {
			out = append(out, span{Start: r.Start, End: r.Start + r.Length})
		}
	}
	return mergeSpans(out)
}

// within reports whether every span of a lies inside a span of b.
func within(a, b []span) bool {
	for _, x := range a {
		ok := false
		for _, y := range b {
			ok = ok || x.Start >= y.Start && x.End <= y.End
		}
		if !ok {
			return false
		}
	}
	return true
}

func roundOut(s []span, cs int64) []span {
	var out []span
	for _, x := range s {
		out = append(out, span{Start: x.Start &^ (cs - 1), End: (x.End + cs - 1) &^ (cs - 1)})
	}
	return mergeSpans(out)
}

// TestBackupChain: full → incremental → incremental, QEMU the oracle. Each
// backup, restored with qemu-img convert, equals the disk at the moment it
// was taken; each checks clean; each incremental holds only dirty clusters
// (zero clusters where the dirty range reads as zeros); --clear empties
// the bitmap. Cluster sizes below, equal to and above the granularity.
func TestBackupChain(t *testing.T) {
	needQEMU(t)
	for _, tc := range []struct {
		cluster, gran int64
		compress      bool
		opts          string
	}{
		{65536, 65536, false, ""}, {4096, 65536, false, ""}, {131072, 4096, false, ""},
		{65536, 65536, true, ""}, {4096, 65536, true, ",compression_type=zstd"},
		{131072, 4096, true, ",extended_l2=on"},
	} {
		t.Run(fmt.Sprintf("cluster%d-gran%d-compress%v%s", tc.cluster, tc.gran, tc.compress, tc.opts), func(t *testing.T) {
			dir := t.TempDir()
			const size = 16 << 20
			img := createImage(t, dir, "vm.qcow2", size, "cluster_size="+strconv.FormatInt(tc.cluster, 10)+tc.opts)
			qemuImg(t, dir, "bitmap", "--add", "-g", strconv.FormatInt(tc.gran, 10), img, "b")
			qemuIO(t, img, "qcow2", []ioOp{write(1, 0, 1<<20), zero(2<<20, 1<<20), write(2, 5<<20, 100<<10), write(0, 7<<20, 192<<10)})
			imageWrites(t, img, []ioOp{write(3, 9<<20+512, 3000), write(4, size-4096, 4096)})

			snapshot := func(name string) string {
				raw := filepath.Join(dir, name+".raw")
				qemuImg(t, dir, "convert", "-O", "raw", img, raw)
				return raw
			}
			verify := func(target, raw string) {
				t.Helper()
				qemuCheckClean(t, target)
				if out, err := tryCmd(dir, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", target, raw); err != nil {
					t.Fatalf("%s restores something else: %v\n%s", target, err, out)
				}
			}

			// Full backup, starting the chain: everything copied, bitmap cleared.
			var plain string
			if tc.compress {
				// The same backup uncompressed, to compare sizes.
				plain = filepath.Join(dir, "plain.qcow2")
				if err := Backup(img, plain, BackupOptions{Bitmap: "b", Full: true}); err != nil {
					t.Fatal(err)
				}
			}
			full := filepath.Join(dir, "full.qcow2")
			if err := Backup(img, full, BackupOptions{Bitmap: "b", Full: true, Clear: true, Compress: tc.compress}); err != nil {
				t.Fatal(err)
			}
			raw0 := snapshot("raw0")
			verify(full, raw0)
			if tc.compress {
				verify(plain, raw0)
				fi, err1 := os.Stat(full)
				pi, err2 := os.Stat(plain)
				if err1 != nil || err2 != nil {
					t.Fatal(err1, err2)
				}
				if fi.Size() >= pi.Size() {
					t.Fatalf("compressed backup is %d bytes, uncompressed %d", fi.Size(), pi.Size())
				}
				if n := qemuCompressedCount(t, full); n == 0 {
					t.Fatal("compressed backup has no compressed cluster")
				}
				want := "zlib"
				if strings.Contains(tc.opts, "zstd") {
					want = "zstd"
				}
				if out := string(qemuImg(t, dir, "info", "--output=json", full)); !strings.Contains(out, `"compression-type": "`+want+`"`) {
					t.Fatalf("full backup not %s-compressed:\n%s", want, out)
				}
			}
			if d := ourDirty(t, img, "b"); len(d) != 0 {
				t.Fatalf("bitmap not cleared: %s", spansText(d))
			}
			if out := string(qemuImg(t, dir, "info", full)); strings.Contains(out, "backing file") {
				t.Fatalf("full backup has a backing file:\n%s", out)
			}
			// Zero ranges stay unallocated in a full backup.
			for _, s := range ownRanges(t, full) {
				if s.Start < 3<<20 && s.End > 2<<20 {
					t.Fatalf("full backup allocates the zeroed range: %s", spansText(ownRanges(t, full)))
				}
			}

			incremental := func(name, backing string, qops, ops []ioOp) (string, string) {
				t.Helper()
				qemuIO(t, img, "qcow2", qops)
				imageWrites(t, img, ops)
				dirty := ourDirty(t, img, "b")
				target := filepath.Join(dir, name+".qcow2")
				if err := Backup(img, target, BackupOptions{Bitmap: "b", Clear: true, BackingFile: backing, Compress: tc.compress}); err != nil {
					t.Fatal(err)
				}
				raw := snapshot(name)
				verify(target, raw)
				if tc.compress && qemuCompressedCount(t, target) == 0 {
					t.Fatalf("%s has no compressed cluster", name)
				}
				own := ownRanges(t, target)
				if len(own) == 0 || !within(own, roundOut(dirty, tc.cluster)) {
					t.Fatalf("%s holds %s, dirty was %s", name, spansText(own), spansText(dirty))
				}
				if tc.cluster <= tc.gran && !within(own, dirty) {
					t.Fatalf("%s holds %s, beyond the dirty %s", name, spansText(own), spansText(dirty))
				}
				if out := string(qemuImg(t, dir, "info", "--output=json", target)); !strings.Contains(out, `"backing-filename": "`+backing+`"`) || !strings.Contains(out, `"backing-filename-format": "qcow2"`) {
					t.Fatalf("%s: backing file not %s:\n%s", name, backing, out)
				}
				if d := ourDirty(t, img, "b"); len(d) != 0 {
					t.Fatalf("bitmap not cleared after %s: %s", name, spansText(d))
				}
				return target, raw
			}
			// Overwrites, write-zeroes and discards over data the full backup holds.
			inc1, raw1 := incremental("inc1", "full.qcow2",
				[]ioOp{write(5, 512<<10, 4096), zero(5<<20, 64<<10), discard(0, 64<<10)},
				[]ioOp{write(6, 12<<20, 8192), zero(9<<20, 4096)})
			inc2, raw2 := incremental("inc2", "inc1.qcow2",
				[]ioOp{discard(12<<20, 64<<10), write(7, 3<<20, 64<<10)},
				[]ioOp{zero(512<<10, 128<<10), write(8, 14<<20, 1000), write(0, 5<<20+128<<10, 64<<10)})
			// The older backups still restore their own moment.
			verify(full, raw0)
			verify(inc1, raw1)
			verify(inc2, raw2)
			qemuCheckClean(t, img)
		})
	}
}

// TestBackupFailureKeepsDirtyBits: a backup that fails (here: its backing
// file is missing, or the target exists) clears nothing and leaves no
// target behind.
func TestBackupFailureKeepsDirtyBits(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	img := createImage(t, dir, "vm.qcow2", 4<<20, "")
	qemuImg(t, dir, "bitmap", "--add", img, "b")
	qemuIO(t, img, "qcow2", []ioOp{write(1, 0, 100<<10)})
	before := ourDirty(t, img, "b")
	target := filepath.Join(dir, "inc.qcow2")
	err := Backup(img, target, BackupOptions{Bitmap: "b", Clear: true, BackingFile: "missing.qcow2"})
	if err == nil || !strings.Contains(err.Error(), "missing.qcow2") {
		t.Fatalf("backup on a missing backing file: %v", err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("failed backup left %s behind: %v", target, err)
	}
	if got := ourDirty(t, img, "b"); spansText(got) != spansText(before) {
		t.Fatalf("dirty bits lost: %s, had %s", spansText(got), spansText(before))
	}
	os.WriteFile(target, []byte("keep me"), 0o644)
	err = Backup(img, target, BackupOptions{Bitmap: "b", Full: true, Clear: true})
	if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), target) {
		t.Fatalf("backup onto an existing file: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep me" {
		t.Fatalf("existing target overwritten")
	}
	if got := ourDirty(t, img, "b"); spansText(got) != spansText(before) {
		t.Fatalf("dirty bits lost: %s, had %s", spansText(got), spansText(before))
	}
	// An in-use bitmap (a crash left it unstored) is refused.
	tryCmd(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 2 0 4096", "-c", "abort", img) // dies by SIGABRT
	err = Backup(img, filepath.Join(dir, "x.qcow2"), BackupOptions{Bitmap: "b", Full: true})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("backup with an in-use bitmap: %v", err)
	}
}
