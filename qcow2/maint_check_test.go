// Tests of check and repair against qemu-img check: clean, hand-corrupted,
// dirty and corrupt-bit images, locking, entry corruptions and random damage.
// This file is long because the hand-corruption helpers (mtFile) and every
// damage case they serve are read side by side.

package qcow2

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// mtFile reads and patches an image file by offset (for hand corruption).
type mtFile struct {
	t    testing.TB
	path string
	h    Header
}

func mtOpenFile(t testing.TB, path string) *mtFile {
	t.Helper()
	b := make([]byte, 512)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, _ := f.ReadAt(b, 0)
	h, err := parseHeader(b[:n])
	if err != nil {
		t.Fatal(err)
	}
	return &mtFile{t: t, path: path, h: h}
}

func (m *mtFile) u64(off int64) uint64 {
	b := make([]byte, 8)
	f, err := os.Open(m.path)
	if err != nil {
		m.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, off); err != nil {
		m.t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b)
}

func (m *mtFile) put(off int64, b []byte) {
	f, err := os.OpenFile(m.path, os.O_WRONLY, 0)
	if err != nil {
		m.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mtFile) putU64(off int64, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	m.put(off, b[:])
}

func (m *mtFile) cs() int64 { return 1 << m.h.ClusterBits }

// l2EntryOff returns the file offset of L2 entry j of the L2 table that
// active L1 entry i points to.
func (m *mtFile) l2EntryOff(i, j int64) int64 {
	l2 := int64(m.u64(int64(m.h.L1TableOffset)+i*8) & l1EntryOffsetMask)
	if l2 == 0 {
		m.t.Fatalf("L1 entry %d unallocated", i)
	}
	return l2 + j*8
}

// refcountOff returns the file offset of cluster cl's 16-bit refcount.
func (m *mtFile) refcountOff(cl int64) int64 {
	if m.h.RefcountOrder != 4 {
		m.t.Fatal("test needs 16-bit refcounts")
	}
	per := m.cs() / 2
	blk := int64(m.u64(int64(m.h.RefcountTableOffset)+cl/per*8) & refTableOffsetMask)
	return blk + cl%per*2
}

func (m *mtFile) refcount(cl int64) uint16 {
	return uint16(m.u64(m.refcountOff(cl)) >> 48)
}

func (m *mtFile) setRefcount(cl int64, v uint16) {
	m.put(m.refcountOff(cl), []byte{byte(v >> 8), byte(v)})
}

func mtCopy(t testing.TB, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// compareWithQEMU checks our counts against qemu-img check's.
func compareWithQEMU(t *testing.T, path string, r *CheckResult) mtQemuCheckResult {
	t.Helper()
	q := mtQemuCheck(t, path)
	if r.Corruptions != q.Corruptions || r.Leaks != q.Leaks || r.CheckErrors != q.CheckErrors {
		t.Errorf("Check: corruptions=%d leaks=%d check-errors=%d; qemu-img check: %d %d %d\nour messages: %q",
			r.Corruptions, r.Leaks, r.CheckErrors, q.Corruptions, q.Leaks, q.CheckErrors, r.Messages)
	}
	if r.ImageEndOffset != q.ImageEndOffset || r.TotalClusters != q.TotalClusters || r.AllocatedClusters != q.AllocatedClusters {
		t.Errorf("Check: image-end-offset=%d total=%d allocated=%d; qemu-img check: %d %d %d",
			r.ImageEndOffset, r.TotalClusters, r.AllocatedClusters, q.ImageEndOffset, q.TotalClusters, q.AllocatedClusters)
	}
	return q
}

func TestCheckClean(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name  string
		opts  string
		setup func(t *testing.T, path string)
	}
	writes := func(t *testing.T, path string) {
		mtIO(t, path, "write -P 1 0 200k", "write -P 2 1M 64k", "write -z 2M 64k", "discard 64k 64k")
	}
	cases := []tc{
		{"v3", "", writes},
		{"v2", "compat=0.10", writes},
		{"c512-refbits64", "cluster_size=512,refcount_bits=64", writes},
		{"extl2", "extended_l2=on", writes},
		{"compressed", "cluster_size=4096", func(t *testing.T, p string) {
			mtIO(t, p, "write -c -P 3 0 64k", "write -c -P 4 64k 4k", "write -P 5 1M 4k")
		}},
		{"snapshots", "", func(t *testing.T, p string) {
			writes(t, p)
			runCombined(t, filepath.Dir(p), "qemu-img", "snapshot", "-c", "a", p)
			mtIO(t, p, "write -P 9 0 8k")
			runCombined(t, filepath.Dir(p), "qemu-img", "snapshot", "-c", "b", p)
		}},
		{"bitmaps", "", func(t *testing.T, p string) {
			writes(t, p)
			runCombined(t, filepath.Dir(p), "qemu-img", "bitmap", "--add", p, "bm0")
			mtIO(t, p, "write -P 7 3M 64k")
		}},
		{"datafile", "data_file=img.data", writes},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 4<<20, c.opts)
			c.setup(t, path)
			r, err := Check(path, CheckOptions{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			q := compareWithQEMU(t, path, r)
			if q.Corruptions+q.Leaks != 0 {
				t.Fatalf("qemu-img check not clean: %+v", q)
			}
			// A repair of a clean image changes nothing.
			r, err = Check(path, CheckOptions{Repair: "all"})
			if err != nil || r.Corruptions+r.Leaks+r.CorruptionsFixed+r.LeaksFixed != 0 {
				t.Fatalf("repair of a clean image: %+v, %v", r, err)
			}
			qemuCheckClean(t, path)
		})
	}
}

// TestCheckCorrupted corrupts images by hand and compares what Check finds
// with qemu-img check, then repairs.
func TestCheckCorrupted(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name    string
		snap    bool
		corrupt func(m *mtFile)
		repair  string // "" → "all"
		// reachable: the guest data must read the same after the repair
		// (false when the corruption itself destroys a mapping).
		reachable bool
	}
	const dataCl = 4 // see the layout note below
	cases := []tc{
		{name: "refcount-bumped-leak", reachable: true, corrupt: func(m *mtFile) {
			cl := int64(m.u64(m.l2EntryOff(0, 0))&l2EntryOffsetMask) / m.cs()
			m.setRefcount(cl, m.refcount(cl)+1)
		}},
		{name: "refcount-bumped-leak-repair-leaks", repair: "leaks", reachable: true, corrupt: func(m *mtFile) {
			cl := int64(m.u64(m.l2EntryOff(0, 1))&l2EntryOffsetMask) / m.cs()
			m.setRefcount(cl, m.refcount(cl)+1)
		}},
		{name: "unused-cluster-leaked", repair: "leaks", reachable: true, corrupt: func(m *mtFile) {
			// A cluster past everything, inside the file.
			fi, _ := os.Stat(m.path)
			os.Truncate(m.path, fi.Size()+3*m.cs())
			m.setRefcount(fi.Size()/m.cs()+1, 1)
		}},
		{name: "refcount-zeroed", reachable: true, corrupt: func(m *mtFile) {
			cl := int64(m.u64(m.l2EntryOff(0, 2))&l2EntryOffsetMask) / m.cs()
			m.setRefcount(cl, 0)
		}},
		{name: "refcount-too-low-shared", snap: true, reachable: true, corrupt: func(m *mtFile) {
			cl := int64(m.u64(m.l2EntryOff(0, 0))&l2EntryOffsetMask) / m.cs()
			m.setRefcount(cl, m.refcount(cl)-1)
		}},
		{name: "copied-flag-cleared", reachable: true, corrupt: func(m *mtFile) {
			off := m.l2EntryOff(0, 1)
			m.putU64(off, m.u64(off)&^oflagCopied)
		}},
		{name: "copied-flag-set-on-shared", snap: true, reachable: true, corrupt: func(m *mtFile) {
			off := m.l2EntryOff(0, 3)
			m.putU64(off, m.u64(off)|oflagCopied)
		}},
		{name: "l1-copied-cleared", reachable: true, corrupt: func(m *mtFile) {
			off := int64(m.h.L1TableOffset)
			m.putU64(off, m.u64(off)&^oflagCopied)
		}},
		{name: "l2-entry-past-eof", corrupt: func(m *mtFile) {
			off := m.l2EntryOff(0, 2)
			m.putU64(off, oflagCopied|uint64(64<<20))
		}},
		{name: "l2-entry-unaligned", corrupt: func(m *mtFile) {
			off := m.l2EntryOff(0, 2)
			m.putU64(off, m.u64(off)+512)
		}},
		{name: "l2-entry-overlaps-refcount-block", corrupt: func(m *mtFile) {
			blk := m.u64(int64(m.h.RefcountTableOffset)) & refTableOffsetMask
			m.putU64(m.l2EntryOff(0, 2), oflagCopied|blk)
		}},
		{name: "l2-entry-overlaps-l1", corrupt: func(m *mtFile) {
			m.putU64(m.l2EntryOff(0, 2), oflagCopied|m.h.L1TableOffset)
		}},
		{name: "two-entries-one-cluster", corrupt: func(m *mtFile) {
			m.putU64(m.l2EntryOff(0, 3), m.u64(m.l2EntryOff(0, 2)))
		}},
	}
	_ = dataCl
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			// 64 KiB clusters: header, refcount table, refcount block, L1,
			// L2, then data clusters for guest clusters 0..3.
			path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 4<<20, "")
			mtIO(t, path, "write -P 1 0 64k", "write -P 2 64k 64k", "write -P 3 128k 64k", "write -P 4 192k 64k", "write -P 5 1M 64k")
			if c.snap {
				runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", path)
				mtIO(t, path, "write -P 6 64k 64k") // cluster 1 copied, 0,2,3 shared
			}
			before := mtRaw(t, path)
			c.corrupt(mtOpenFile(t, path))
			r, err := Check(path, CheckOptions{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			q := compareWithQEMU(t, path, r)
			if q.Corruptions+q.Leaks == 0 {
				t.Fatalf("the corruption went unnoticed by qemu-img check too: %+v", q)
			}
			// Repair a copy with QEMU, the original with Check.
			theirs := mtCopy(t, path, filepath.Join(dir, "theirs.qcow2"))
			mode := c.repair
			if mode == "" {
				mode = "all"
			}
			qr := mtQemuCheck(t, theirs, "-r", mode)
			rr, err := Check(path, CheckOptions{Repair: mode})
			if err != nil {
				t.Fatalf("Check repair %s: %v", mode, err)
			}
			t.Logf("ours: %+v (messages %q)\nqemu: %+v", *rr, rr.Messages, qr)
			after := mtQemuCheck(t, path)
			if qr.Corruptions+qr.Leaks == 0 && after.Corruptions+after.Leaks != 0 {
				t.Fatalf("qemu-img check after our repair: %+v (QEMU's own repair got it clean)", after)
			}
			if rr.Corruptions != after.Corruptions || rr.Leaks != after.Leaks {
				t.Errorf("our post-repair counts %d/%d, qemu-img check %d/%d", rr.Corruptions, rr.Leaks, after.Corruptions, after.Leaks)
			}
			if qr.Corruptions+qr.Leaks == 0 && rr.CorruptionsFixed+rr.LeaksFixed == 0 {
				t.Errorf("nothing reported fixed")
			}
			if c.reachable {
				mtSameBytes(t, "content after repair", mtRaw(t, path), before)
			}
			if after.Corruptions+after.Leaks == 0 {
				// The repaired image takes writes (COPIED flags right).
				mtIO(t, path, "write -P 8 0 256k")
				qemuCheckClean(t, path)
			}
		})
	}
}

// TestCheckDirty: an image left dirty (lazy refcounts, qemu-io aborted) has
// stale refcounts; Check reports what qemu-img check reports, and a repair
// fixes them and clears the dirty bit.
func TestCheckDirty(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 4<<20, "lazy_refcounts=on")
	mtIO(t, path, "write -P 1 0 64k")
	cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 2 1M 192k", "-c", "write -P 3 0 4k", "-c", "abort", path)
	_ = cmd.Run() // aborts by design
	if h := mtOpenFile(t, path).h; h.IncompatibleFeatures&IncompatDirty == 0 {
		t.Fatal("qemu-io abort left the image clean; test setup broken")
	}
	want := mtRaw(t, path)
	r, err := Check(path, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q := compareWithQEMU(t, path, r)
	if q.Corruptions+q.Leaks == 0 {
		t.Fatalf("dirty image with stale refcounts found clean by qemu-img: %+v", q)
	}
	r, err = Check(path, CheckOptions{Repair: "all"})
	if err != nil || r.Corruptions+r.Leaks != 0 || r.CorruptionsFixed+r.LeaksFixed == 0 {
		t.Fatalf("repair: %+v %v", r, err)
	}
	if h := mtOpenFile(t, path).h; h.IncompatibleFeatures&IncompatDirty != 0 {
		t.Fatal("dirty bit still set after repair")
	}
	qemuCheckClean(t, path)
	mtSameBytes(t, "content after repair", mtRaw(t, path), want)
}

// TestCheckCorruptBit: an image marked corrupt is repaired and the bit
// cleared.
func TestCheckCorruptBit(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 1<<20, "")
	mtIO(t, path, "write -P 1 0 64k")
	m := mtOpenFile(t, path)
	m.putU64(72, m.h.IncompatibleFeatures|IncompatCorrupt)
	if _, err := Open(path, OpenOptions{}); err == nil {
		t.Fatal("read-write open of a corrupt-marked image succeeded")
	}
	r, err := Check(path, CheckOptions{})
	if err != nil || r.Corruptions+r.Leaks != 0 {
		t.Fatalf("Check: %+v %v", r, err)
	}
	if _, err := Check(path, CheckOptions{Repair: "all"}); err != nil {
		t.Fatal(err)
	}
	if h := mtOpenFile(t, path).h; h.IncompatibleFeatures&IncompatCorrupt != 0 {
		t.Fatal("corrupt bit still set after repair")
	}
	qemuCheckClean(t, path)
}

// TestCheckLocking: a plain check takes the reader locks (refused while
// the image is open read-write elsewhere), ForceShare does not; repair
// needs the writer locks.
func TestCheckLocking(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var le *LockError
	if _, err := Check(path, CheckOptions{}); !errors.As(err, &le) {
		t.Errorf("check of an image open read-write: %v, want *LockError", err)
	}
	if _, err := Check(path, CheckOptions{Repair: "leaks"}); !errors.As(err, &le) {
		t.Errorf("repair of an image open read-write: %v, want *LockError", err)
	}
	if r, err := Check(path, CheckOptions{ForceShare: true}); err != nil || r.Corruptions+r.Leaks != 0 {
		t.Errorf("force-share check: %+v %v", r, err)
	}
	if _, err := Check(path, CheckOptions{ForceShare: true, Repair: "all"}); err == nil {
		t.Error("force-share with repair accepted")
	}
	if _, err := Check(path, CheckOptions{Repair: "some"}); err == nil {
		t.Error("unknown repair mode accepted")
	}
}

// TestMaintenanceOnDamagedImages: random damage to the metadata of an image
// with snapshots; every maintenance operation must fail cleanly or succeed,
// never panic or hang.
func TestMaintenanceOnDamagedImages(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	orig := mtQemuCreate(t, filepath.Join(dir, "orig.qcow2"), 2<<20, "cluster_size=4096")
	mtIO(t, orig, "write -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 1M 8k")
	runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", orig)
	mtIO(t, orig, "write -P 4 0 8k")
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	metaEnd := min(int64(len(data)), 16*4096) // header, tables, first L2s
	seed := uint64(12345)
	rnd := func(n int64) int64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int64(seed>>33) % n
	}
	succeeded := map[string]int{}
	for i := 0; i < 60; i++ {
		path := filepath.Join(dir, "damaged.qcow2")
		d := append([]byte(nil), data...)
		for k := 0; k < 1+int(rnd(4)); k++ {
			off := rnd(metaEnd)
			if rnd(3) == 0 {
				off = 48 + rnd(24) // refcount table / snapshot fields of the header
			}
			d[off] ^= byte(1 << rnd(8))
		}
		if err := os.WriteFile(path, d, 0o644); err != nil {
			t.Fatal(err)
		}
		ops := []struct {
			name string
			fn   func() error
		}{
			{"check", func() error { _, err := Check(path, CheckOptions{}); return err }},
			{"repair", func() error { _, err := Check(path, CheckOptions{Repair: "all"}); return err }},
			{"snapshot create", func() error { return SnapshotCreate(path, "new") }},
			{"snapshot apply", func() error { return SnapshotApply(path, "s") }},
			{"snapshot delete", func() error { return SnapshotDelete(path, "s") }},
			{"resize grow", func() error { return Resize(path, 5<<20, false) }},
			{"resize shrink", func() error { return Resize(path, 1<<20, true) }},
		}
		for _, op := range ops {
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("damage round %d, %s: panic: %v", i, op.name, r)
					}
				}()
				if err := op.fn(); err == nil {
					succeeded[op.name]++
				}
			}()
		}
	}
	t.Logf("operations that succeeded on damaged images: %v", succeeded)
}

// TestCheckEntryCorruptions: invalid extended L2 bitmaps and flags on
// compressed entries, classified as qemu-img check does.
func TestCheckEntryCorruptions(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name    string
		opts    string
		writes  []string
		corrupt func(m *mtFile)
	}
	ext := func(m *mtFile, j int64, word, bitmap uint64) {
		off := m.l2EntryOff(0, 0) + j*8 // 16-byte entries: j counts words
		m.putU64(off, word)
		m.putU64(off+8, bitmap)
	}
	cases := []tc{
		{"extl2-alloc-and-zero", "extended_l2=on", []string{"write -P 1 0 64k"}, func(m *mtFile) {
			w := m.u64(m.l2EntryOff(0, 0))
			ext(m, 0, w, 0x1_00000001)
		}},
		{"extl2-unallocated-with-alloc-bits", "extended_l2=on", []string{"write -P 1 0 64k"}, func(m *mtFile) {
			ext(m, 2, 0, 0xff)
		}},
		{"compressed-with-copied", "cluster_size=4096", []string{"write -c -P 1 0 4k"}, func(m *mtFile) {
			off := m.l2EntryOff(0, 0)
			m.putU64(off, m.u64(off)|oflagCopied)
		}},
		{"l1-entry-unaligned", "", []string{"write -P 1 0 4k"}, func(m *mtFile) {
			off := int64(m.h.L1TableOffset)
			m.putU64(off, m.u64(off)+4096)
		}},
		{"refcount-table-reserved-bits", "", []string{"write -P 1 0 4k"}, func(m *mtFile) {
			off := int64(m.h.RefcountTableOffset)
			m.putU64(off, m.u64(off)|1)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := mtQemuCreate(t, filepath.Join(dir, "img.qcow2"), 1<<20, c.opts)
			mtIO(t, path, c.writes...)
			c.corrupt(mtOpenFile(t, path))
			r, err := Check(path, CheckOptions{})
			if err != nil {
				// Our open refuses some damage QEMU's check reports on;
				// then QEMU must see corruption too.
				if q := mtQemuCheck(t, path); q.Corruptions == 0 {
					t.Fatalf("Check: %v; qemu-img check finds no corruption", err)
				}
				return
			}
			q := compareWithQEMU(t, path, r)
			if q.Corruptions == 0 {
				t.Fatalf("qemu-img check sees no corruption: %+v", q)
			}
		})
	}
}

// TestCheckRandomDamageVsQEMU: random bit flips in the tables of an image
// with snapshots and compressed clusters; wherever both run, Check counts
// what qemu-img check counts.
func TestCheckRandomDamageVsQEMU(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	orig := mtQemuCreate(t, filepath.Join(dir, "orig.qcow2"), 2<<20, "cluster_size=4096")
	mtIO(t, orig, "write -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 1M 8k")
	runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", orig)
	mtIO(t, orig, "write -P 4 0 8k", "write -z 1M 4k")
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	h := mtOpenFile(t, orig).h
	// Damage goes into the refcount table and block, the L1 tables and the
	// L2 tables: the first clusters after the header.
	lo, hi := int64(4096), min(int64(len(data)), 12*4096)
	seed := uint64(777)
	rnd := func(n int64) int64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int64(seed>>33) % n
	}
	compared := 0
	for i := 0; i < 40; i++ {
		path := filepath.Join(dir, "damaged.qcow2")
		d := append([]byte(nil), data...)
		for k := 0; k < 1+int(rnd(3)); k++ {
			d[lo+rnd(hi-lo)] ^= byte(1 << rnd(8))
		}
		if err := os.WriteFile(path, d, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Check(path, CheckOptions{})
		if err != nil {
			continue
		}
		q := mtQemuCheck(t, path)
		if r.Corruptions != q.Corruptions || r.Leaks != q.Leaks || r.CheckErrors != q.CheckErrors {
			t.Errorf("round %d: Check %d/%d/%d, qemu-img check %d/%d/%d\nmessages: %.2000q", i,
				r.Corruptions, r.Leaks, r.CheckErrors, q.Corruptions, q.Leaks, q.CheckErrors, r.Messages)
			mtCopy(t, path, filepath.Join(os.TempDir(), "qcow2-check-mismatch.qcow2"))
		}
		compared++
	}
	_ = h
	t.Logf("compared %d damaged images with qemu-img check", compared)
}

// TestCheckRandomRepairVsQEMU: random damage repaired by Check and, on a
// copy, by qemu-img check -r: ours must leave the image no worse than
// QEMU's does, and where both end clean the guest content must agree.
func TestCheckRandomRepairVsQEMU(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	orig := mtQemuCreate(t, filepath.Join(dir, "orig.qcow2"), 2<<20, "cluster_size=4096")
	mtIO(t, orig, "write -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 1M 8k")
	runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", orig)
	mtIO(t, orig, "write -P 4 0 8k", "write -z 1M 4k")
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := int64(4096), min(int64(len(data)), 12*4096)
	seed := uint64(4242)
	rnd := func(n int64) int64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return int64(seed>>33) % n
	}
	stats := map[string]int{}
	for i := 0; i < 30; i++ {
		d := append([]byte(nil), data...)
		for k := 0; k < 1+int(rnd(3)); k++ {
			d[lo+rnd(hi-lo)] ^= byte(1 << rnd(8))
		}
		path := filepath.Join(dir, "ours.qcow2")
		theirs := filepath.Join(dir, "theirs.qcow2")
		for _, p := range []string{path, theirs} {
			if err := os.WriteFile(p, d, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		mode := []string{"leaks", "all"}[rnd(2)]
		out, _ := exec.Command("qemu-img", "check", "--output=json", "-r", mode, theirs).Output()
		if json.Unmarshal(out, new(mtQemuCheckResult)) != nil {
			stats["qemu could not repair"]++
			continue
		}
		rr, err := Check(path, CheckOptions{Repair: mode})
		if err != nil {
			stats["we could not repair"]++
			t.Logf("round %d (%s): %v", i, mode, err)
			continue
		}
		ours, qemu := mtQemuCheck(t, path), mtQemuCheck(t, theirs)
		if ours.Corruptions+ours.Leaks+ours.CheckErrors > qemu.Corruptions+qemu.Leaks+qemu.CheckErrors {
			t.Errorf("round %d (%s): after our repair %+v, after QEMU's %+v\nour messages %.1500q", i, mode, ours, qemu, rr.Messages)
			continue
		}
		if rr.Corruptions != ours.Corruptions || rr.Leaks != ours.Leaks {
			t.Errorf("round %d (%s): we report %d/%d left, qemu-img check finds %d/%d", i, mode, rr.Corruptions, rr.Leaks, ours.Corruptions, ours.Leaks)
		}
		if ours.Corruptions+ours.Leaks == 0 && qemu.Corruptions+qemu.Leaks == 0 {
			mtSameBytes(t, fmt.Sprintf("round %d: content after repair vs QEMU's", i), mtRaw(t, path), mtRaw(t, theirs))
			stats["both clean, same content"]++
		}
	}
	t.Logf("%v", stats)
	if stats["both clean, same content"] < 15 {
		t.Errorf("too few comparable rounds: %v", stats)
	}
}
