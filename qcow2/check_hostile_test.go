// Hostile metadata that once crashed check or made it allocate without
// bound, and bitmap metadata QEMU refuses. Every image is built by QEMU and
// patched here; qemu-img check is the oracle for the verdict (exit code) and
// for a key phrase that both tools must print.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// checkAllocLimit is what one Check of a small image may allocate in
// total (the same bound as the fuzz targets).
const checkAllocLimit = allocLimit

// hostile locates the structures of a QEMU-made image for patching.
type hostile struct {
	*mtFile
	ext   int64 // file offset of the bitmaps extension's data (-1: none)
	dir   int64 // file offset of the bitmap directory
	table int64 // file offset of the first bitmap's table
}

func (m *mtFile) putU32(off int64, v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	m.put(off, b[:])
}

func newHostile(t *testing.T, path string) *hostile {
	t.Helper()
	h := &hostile{mtFile: mtOpenFile(t, path), ext: -1}
	if e := findExtension(t, path, ExtBitmaps); e >= 0 {
		h.ext = e + 8
		h.dir = int64(h.u64(h.ext + 16))
		h.table = int64(h.u64(h.dir))
	}
	return h
}

// ourCheckVerdict runs Check and returns the exit code qcow2fs check would
// give, everything it would print, and the result (nil on error). A panic
// or an allocation beyond checkAllocLimit fails the test.
func ourCheckVerdict(t *testing.T, path string, o CheckOptions) (code int, out string, res *CheckResult) {
	t.Helper()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Check panicked: %v", r)
			}
		}()
		var err error
		res, err = Check(path, o)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Check error does not name the file: %v", err)
			}
			code, out, res = 1, err.Error(), nil
			return
		}
		code, out = res.ExitCode(), strings.Join(res.Messages, "\n")
	}()
	runtime.ReadMemStats(&ms)
	if n := ms.TotalAlloc - before; n > checkAllocLimit {
		t.Errorf("Check allocated %d MiB for a %d-byte image", n>>20, hostileFileSize(t, path))
	}
	return code, out, res
}

func hostileFileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

type hostileCase struct {
	name  string
	image string // "plain": 64 MiB, 64 KiB clusters, 64 KiB written; "bitmap": see hostileBase
	patch func(h *hostile)
	code  int    // qemu-img check's exit code (asserted, so the case stays what it claims)
	key   string // printed by both tools (case-insensitive)
	// repair: also repair with -r all (ours and QEMU's, on copies); ours
	// must end clean wherever QEMU's does.
	repair bool
}

func hostileCases() []hostileCase {
	const near63 = 0x7fffffffffff0000 // cluster-aligned, just below 2^63
	return []hostileCase{
		// QEMU iotest 108: refcount table entry 1 far outside the image.
		{name: "refblock-unsigned-overflow", image: "plain", code: 2, key: "refcount block 1 is outside image", repair: true,
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset)+8, 0xffffffffffff0000) }},
		{name: "refblock-signed-overflow", image: "plain", code: 2, key: "refcount block 1 is outside image", repair: true,
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset)+8, 0x7fffffffffff0000) }},
		{name: "refblock-bit63-only", image: "plain", code: 2, key: "refcount block 1 is outside image", repair: true,
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset)+8, 1<<63) }},
		// The first block unreadable: every refcount read fails (QEMU: EIO
		// past its largest request offset, 2^63-2^30).
		{name: "refblock0-bit63", image: "plain", code: 1, key: "refcount block 0 is outside image",
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset), 0xffffffffffff0000) }},
		{name: "refblock0-at-qemu-max-length", image: "plain", code: 1, key: "Can't get refcount for cluster 0",
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset), 0x7fffffffc0000000) }},
		// Past the end but readable: it reads as zeros.
		{name: "refblock0-past-eof", image: "plain", code: 2, key: "ERROR cluster 0 refcount=0 reference=1", repair: true,
			patch: func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset), 0x100000000) }},

		// The bitmaps extension, refused when QEMU opens the image.
		{name: "bitmap-dir-size-max", image: "bitmap", code: 1, key: "exceeds the maximum supported size",
			patch: func(h *hostile) { h.putU64(h.ext+8, 1<<64-1) }},
		{name: "bitmap-count-max", image: "bitmap", code: 1, key: "Image has 4294967295 bitmaps",
			patch: func(h *hostile) { h.putU32(h.ext, 1<<32-1) }},
		{name: "bitmap-count-zero", image: "bitmap", code: 1, key: "found bitmaps extension with zero bitmaps",
			patch: func(h *hostile) { h.putU32(h.ext, 0) }},
		{name: "bitmap-ext-reserved", image: "bitmap", code: 1, key: "Reserved field is not zero",
			patch: func(h *hostile) { h.putU32(h.ext+4, 1) }},
		{name: "bitmap-ext-length", image: "bitmap", code: 1, key: "Invalid extension length",
			patch: func(h *hostile) { h.putU32(h.ext-4, 16) }},
		{name: "bitmap-ext-length-autoclear-clear", image: "bitmap", code: 1, key: "Invalid extension length",
			patch: func(h *hostile) { h.putU32(h.ext-4, 16); h.putU64(88, 0) }},
		{name: "bitmap-dir-unaligned", image: "bitmap", code: 1, key: "invalid bitmap directory offset",
			patch: func(h *hostile) { h.putU64(h.ext+16, uint64(h.dir+8)) }},
		{name: "bitmap-dir-size-zero", image: "bitmap", code: 1, key: "bitmap directory size is zero",
			patch: func(h *hostile) { h.putU64(h.ext+8, 0) }},
		{name: "bitmap-dir-near-2^63", image: "bitmap", code: 1, key: "Failed to read bitmap directory",
			patch: func(h *hostile) { h.putU64(h.ext+16, near63) }},
		{name: "bitmap-dir-past-eof", image: "bitmap", code: 1, key: "doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU64(h.ext+16, 1<<30) }},
		{name: "bitmap-dir-truncated", image: "bitmap", code: 1, key: "Broken bitmap directory",
			patch: func(h *hostile) { h.putU64(h.ext+8, 24) }},
		{name: "bitmap-dir-longer", image: "bitmap", code: 1, key: "Broken bitmap directory",
			patch: func(h *hostile) { h.putU64(h.ext+8, 40) }},
		{name: "bitmap-more-than-counted", image: "bitmap2", code: 1, key: "More bitmaps found than specified",
			patch: func(h *hostile) { h.putU32(h.ext, 1) }},
		{name: "bitmap-fewer-than-counted", image: "bitmap", code: 1, key: "Less bitmaps found than specified",
			patch: func(h *hostile) { h.putU32(h.ext, 2) }},
		{name: "bitmap-extra-data", image: "bitmap", code: 1, key: "Bitmap extra data is not supported",
			patch: func(h *hostile) { h.putU32(h.dir+20, 1<<32-1) }},
		{name: "bitmap-duplicate-name", image: "bitmap2", code: 1, key: "Bitmap already exists: b0",
			patch: func(h *hostile) { h.put(h.dir+32+24, []byte("b0")) }}, // b1's entry follows b0's 32 bytes

		// Directory entries QEMU rejects.
		{name: "bitmap-granularity-63", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.put(h.dir+17, []byte{63}) }},
		{name: "bitmap-granularity-8", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.put(h.dir+17, []byte{8}) }},
		{name: "bitmap-type-2", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.put(h.dir+16, []byte{2}) }},
		{name: "bitmap-reserved-flag", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU32(h.dir+12, 6) }},
		{name: "bitmap-table-size-zero", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU32(h.dir+8, 0) }},
		{name: "bitmap-table-too-small", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU32(h.dir+8, 3) }},
		{name: "bitmap-table-wrong-size", image: "bitmap", code: 1, key: "Could not read bitmap 'b0' from image",
			patch: func(h *hostile) { h.putU32(h.dir+8, 5) }},
		// Was: the bounds check overflowed and check allocated 32 GiB.
		{name: "bitmap-table-near-2^63-huge", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU64(h.dir, near63); h.putU32(h.dir+8, 1<<32-1) }},
		{name: "bitmap-table-unaligned-near-2^63-huge", image: "bitmap", code: 1, key: "Bitmap 'b0' doesn't satisfy the constraints",
			patch: func(h *hostile) { h.putU64(h.dir, 0x7ffffffffffffff8); h.putU32(h.dir+8, 1<<32-1) }},
		{name: "bitmap-table-near-2^63", image: "bitmap", code: 1, key: "bitmap 'b0'",
			patch: func(h *hostile) { h.putU64(h.dir, near63) }},
		{name: "bitmap-table-entry-reserved", image: "bitmap", code: 1, key: "bitmap 'b0'",
			patch: func(h *hostile) { h.putU64(h.table, h.u64(h.table)|0x100) }},

		// Bitmaps marked in use are not loaded when QEMU opens the image;
		// check finds their faults.
		{name: "bitmap-in-use-table-past-eof", image: "bitmap", code: 2, key: "exceeding the end of the file",
			patch: func(h *hostile) { h.putU32(h.dir+12, 3); h.putU64(h.dir, 1<<30) }},
		{name: "bitmap-in-use-table-entry-reserved", image: "bitmap", code: 1, key: "Check failed",
			patch: func(h *hostile) { h.putU32(h.dir+12, 3); h.putU64(h.table, h.u64(h.table)|0x100) }},
		{name: "bitmap-in-use-table-near-2^63", image: "bitmap", code: 1, key: "Check failed",
			patch: func(h *hostile) { h.putU32(h.dir+12, 3); h.putU64(h.dir, near63) }},
		{name: "bitmap-in-use-wrong-table-size", image: "bitmap", code: 3, key: "Leaked cluster",
			patch: func(h *hostile) { h.putU32(h.dir+12, 3); h.putU32(h.dir+8, 1) }},
		{name: "bitmap-data-past-eof", image: "bitmap", code: 2, key: "exceeding the end of the file",
			patch: func(h *hostile) { h.putU64(h.table, 1<<30) }},

		// The autoclear bit clear: QEMU ignores the bitmaps (they leak).
		{name: "bitmap-autoclear-clear-garbage", image: "bitmap", code: 3, key: "Leaked cluster",
			patch: func(h *hostile) { h.putU64(88, 0); h.putU64(h.ext+8, 1<<64-1); h.putU32(h.ext, 1<<32-1) }},
	}
}

// hostileBase builds the unpatched image of a case.
func hostileBase(t *testing.T, dir, kind string) string {
	t.Helper()
	path := filepath.Join(dir, "img.qcow2")
	switch kind {
	case "plain":
		mtQemuCreate(t, path, 64<<20, "")
		mtIO(t, path, "write -P 1 0 64k")
	case "bitmap", "bitmap2":
		// 4 KiB clusters, granularity 512: a 4-entry bitmap table whose
		// entries 0 and 2 hold data clusters.
		mtQemuCreate(t, path, 64<<20, "cluster_size=4096")
		runCombined(t, dir, "qemu-img", "bitmap", "--add", "-g", "512", path, "b0")
		if kind == "bitmap2" {
			runCombined(t, dir, "qemu-img", "bitmap", "--add", "-g", "4096", path, "b1")
		}
		mtIO(t, path, "write -P 1 0 64k", "write -P 2 32M 64k")
	default:
		t.Fatalf("unknown base image %q", kind)
	}
	return path
}

// TestCheckHostileVsQEMU: hostile metadata; Check never panics or
// allocates without bound, and gives qemu-img check's verdict.
func TestCheckHostileVsQEMU(t *testing.T) {
	needQEMU(t)
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := hostileBase(t, dir, c.image)
			h := newHostile(t, path)
			if c.image != "plain" && h.ext < 0 {
				t.Fatal("test setup: no bitmaps extension")
			}
			c.patch(h)
			qcode, qout := qemuCheckVerdict(t, path)
			if qcode != c.code {
				t.Fatalf("test setup: qemu-img check exits %d, case expects %d\n%s", qcode, c.code, qout)
			}
			code, out, res := ourCheckVerdict(t, path, CheckOptions{})
			if code != qcode {
				t.Errorf("exit code %d, qemu-img check %d\nours: %.3000s\nqemu: %.3000s", code, qcode, out, qout)
			}
			key := strings.ToLower(c.key)
			if !strings.Contains(strings.ToLower(qout), key) {
				t.Fatalf("test setup: qemu-img check does not print %q:\n%s", c.key, qout)
			}
			if !strings.Contains(strings.ToLower(out), key) {
				t.Errorf("we do not print %q:\n%.3000s\nqemu: %.3000s", c.key, out, qout)
			}
			if res != nil && qcode != 1 {
				compareWithQEMU(t, path, res)
			}
			if !c.repair {
				return
			}
			theirs := mtCopy(t, path, filepath.Join(dir, "theirs.qcow2"))
			if qc, qout := qemuCheckVerdict(t, theirs, "-r", "all"); qc != 0 {
				t.Fatalf("test setup: qemu-img check -r all exits %d\n%s", qc, qout)
			}
			code, out, _ = ourCheckVerdict(t, path, CheckOptions{Repair: "all"})
			if code != 0 {
				t.Errorf("repair: exit code %d (QEMU's repair ends clean)\n%.3000s", code, out)
			}
			qemuCheckClean(t, path)
		})
	}
}

// TestCheckHostileLargeDirectory: the largest bitmap directory QEMU
// accepts, nearly all of it past the end of the file: refused as QEMU
// refuses it, without reading or allocating 64 MiB.
func TestCheckHostileLargeDirectory(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := hostileBase(t, dir, "bitmap")
	h := newHostile(t, path)
	// The largest directory QEMU accepts, almost all of it past the end
	// of the file, and the largest bitmap count.
	h.putU64(h.ext+8, 1024*65535)
	h.putU32(h.ext, 65535)
	qcode, qout := qemuCheckVerdict(t, path)
	code, out, _ := ourCheckVerdict(t, path, CheckOptions{})
	if code != qcode || qcode != 1 {
		t.Fatalf("exit code %d, qemu-img check %d\nours: %s\nqemu: %s", code, qcode, out, qout)
	}
}

// TestBitmapNamesHostile: info's bitmap list comes from the same decoder:
// names of a valid directory, none of one QEMU refuses, never a panic.
func TestBitmapNamesHostile(t *testing.T) {
	needQEMU(t)
	for _, c := range hostileCases() {
		if c.image == "plain" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := hostileBase(t, dir, c.image)
			c.patch(newHostile(t, path))
			img, err := Open(path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			var names []string
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("Info panicked: %v", r)
					}
				}()
				names = img.Info().Bitmaps
			}()
			// QEMU lists bitmaps only where it opens the image and the
			// bitmaps are valid (autoclear bit set).
			cmd := exec.Command("qemu-img", "info", "--output=json", path)
			qout, qerr := cmd.CombinedOutput()
			if qerr != nil && len(names) != 0 {
				t.Errorf("qemu-img info refuses the image (%s) but we list bitmaps %q", bytes.TrimSpace(qout), names)
			}
			if qerr == nil {
				for _, n := range names {
					if !bytes.Contains(qout, []byte(`"name": "`+n+`"`)) {
						t.Errorf("we list bitmap %q, qemu-img info does not:\n%s", n, qout)
					}
				}
			}
		})
	}
}

// TestCheckManyRefcountBlocks: L2 entries that each fall under a different
// refcount block (2 MiB clusters: a block covers 2 TiB), the table naming
// a distinct block for each, past the end of the file. Check reads them as
// zeros like QEMU, without a 2 MiB buffer per lookup, and agrees with
// qemu-img check.
func TestCheckManyRefcountBlocks(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 64<<20, "cluster_size=2M")
	mtIO(t, path, "write -P 1 0 64k")
	m := newHostile(t, path)
	const n = 512
	cs := uint64(m.cs())
	perBlock := cs * 8 / 16 // 16-bit refcounts
	rt := int64(m.h.RefcountTableOffset)
	l2 := m.l2EntryOff(0, 0)
	for j := uint64(1); j <= n; j++ {
		m.putU64(rt+int64(j)*8, (100+j)*cs)                   // block j, far past the end
		m.putU64(l2+int64(j)*8, oflagCopied|j*perBlock*cs+cs) // a cluster it covers
	}
	code, out, res := ourCheckVerdict(t, path, CheckOptions{})
	qcode, qout := qemuCheckVerdict(t, path)
	if code != qcode {
		t.Fatalf("exit code %d, qemu-img check %d\nours: %.2000s\nqemu: %.2000s", code, qcode, out, qout)
	}
	if res != nil {
		compareWithQEMU(t, path, res)
	}
}
