// A model test of concurrent O_DIRECT writers through a real read-write
// mount: every sector must hold a value the model allows, through the mount
// and as qemu-img reads it. This file is long because the model, its
// generator and its judge only make sense together.

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestConcurrencyModel checks what concurrent writers leave behind
// through a real read-write mount against a model of what they may leave.
//
// Eight goroutines, each with its own O_DIRECT descriptor on the mounted raw
// file (so the kernel sends their writes to the daemon in parallel:
// FOPEN_PARALLEL_DIRECT_WRITES), issue writes, write-zeroes
// (FALLOC_FL_ZERO_RANGE) and discards (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE) of
// 512-byte sectors into the same four clusters, so they collide all the
// time: single sectors, sub-subcluster and sub-4 KiB pieces, ranges that
// straddle subcluster and cluster boundaries, whole clusters. Six of them
// run duels (cmDuel) aimed at one race: a one-sector write in place in an
// allocated subcluster against a write that merges that subcluster with a
// newly allocated neighbour. Every sector a write puts down carries a tag
// (round, writer, op number, sector number), so the final content of any
// sector names the op that wrote it. Each op takes a number from one global
// counter just before it is issued and another just after it returns: its
// interval [Start, End]. After the writers are done, every sector is
// checked against the model (cmAccepted), through the mount and, after
// unmounting, as qemu-img reads the image; qemu-img check must find the
// image clean. Several rounds run on the same image, each starting from
// what the last one left (QCOW2FS_STRESS=N runs N times as many).
func TestConcurrencyModel(t *testing.T) {
	requireEnv(t)
	t.Run("model-rules", testModelRules)
	for _, k := range cmKinds() {
		t.Run(k.Name, func(t *testing.T) { runConcurrencyModel(t, k) })
	}
}

// cmKind is one image layout of the test.
type cmKind struct {
	Name    string
	Opts    string // qemu-img create -o for the mounted image
	Cluster int64
	Sub     int64 // subcluster size; Cluster without extended L2
	Backing bool  // over a qcow2 backing file holding tagged sectors
}

func cmKinds() []cmKind {
	const k64 = 64 << 10
	return []cmKind{
		{Name: "plain-64k", Opts: "cluster_size=65536", Cluster: k64, Sub: k64},
		{Name: "extl2-64k-backing", Opts: "extended_l2=on,cluster_size=65536", Cluster: k64, Sub: 2048, Backing: true},
		{Name: "extl2-64k", Opts: "extended_l2=on,cluster_size=65536", Cluster: k64, Sub: 2048},
		{Name: "4k-backing", Opts: "cluster_size=4096", Cluster: 4096, Sub: 4096, Backing: true},
	}
}

const (
	cmSector      = 512
	cmImageSize   = 8 << 20
	cmHotClusters = 4 // every op lands in these
	cmFirstHot    = 2 // index of the first hot cluster
	cmRounds      = 10
	// Writers per round: cmDuels duels of three, the rest drawing random ops.
	cmWriters        = 8
	cmDuels          = 2
	cmDuelIterations = 1000
	cmRandomOps      = 1000 // per random writer
	// The daemon's GOMAXPROCS: with the default on a 2-CPU machine the Go
	// scheduler mostly runs the goroutines of concurrent requests one after
	// the other; more Ps interleave them as a bigger machine would.
	cmDaemonProcs  = "8"
	cmWriteTimeout = 2 * time.Minute
	// Writer ids of the content that was there before any round.
	cmWriterBacking = 0xffff0001
	cmWriterPrefill = 0xffff0002
)

// cmOp is one operation of the workload and when it ran.
type cmOp struct {
	Round, Writer, Seq int
	Kind               opKind // opWrite, opZero or opDiscard
	Sector, Count      int64  // absolute first sector and number of sectors
	Start, End         int64  // global counter before issuing, after completion
}

func (o *cmOp) String() string {
	return fmt.Sprintf("%s w%d#%d sectors %d..%d [start %d, end %d]",
		o.Kind, o.Writer, o.Seq, o.Sector, o.Sector+o.Count-1, o.Start, o.End)
}

func (o *cmOp) covers(s int64) bool { return s >= o.Sector && s < o.Sector+o.Count }

// cmTag names the op that wrote a sector.
type cmTag struct {
	Round  uint32
	Writer uint32
	Seq    uint64
	Sector uint64
}

var cmMagic = []byte("qcfsMDL\x00")

// cmFill writes the sector content of tag into b (len cmSector): a header
// naming the op, then noise derived from it, so a sector is recognised only
// when all of it is what one op wrote there.
func cmFill(b []byte, tag cmTag) {
	copy(b, cmMagic)
	binary.LittleEndian.PutUint32(b[8:], tag.Round)
	binary.LittleEndian.PutUint32(b[12:], tag.Writer)
	binary.LittleEndian.PutUint64(b[16:], tag.Seq)
	binary.LittleEndian.PutUint64(b[24:], tag.Sector)
	x := uint64(tag.Round)<<48 ^ uint64(tag.Writer)<<32 ^ tag.Seq<<20 ^ tag.Sector
	for i := 32; i < cmSector; i += 8 {
		// splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(b[i:], z^z>>31)
	}
}

// cmDecode says what a sector holds: zeros, a whole tagged sector, or
// neither (garbage, torn or misplaced data).
func cmDecode(b []byte) (tag cmTag, zero, ok bool) {
	if allZero(b) {
		return tag, true, false
	}
	if !bytes.Equal(b[:8], cmMagic) {
		return tag, false, false
	}
	tag = cmTag{
		Round:  binary.LittleEndian.Uint32(b[8:]),
		Writer: binary.LittleEndian.Uint32(b[12:]),
		Seq:    binary.LittleEndian.Uint64(b[16:]),
		Sector: binary.LittleEndian.Uint64(b[24:]),
	}
	var want [cmSector]byte
	cmFill(want[:], tag)
	return tag, false, bytes.Equal(b, want[:])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (tag cmTag) String() string {
	switch tag.Writer {
	case cmWriterBacking:
		return fmt.Sprintf("backing-file content of sector %d", tag.Sector)
	case cmWriterPrefill:
		return fmt.Sprintf("prefill content of sector %d", tag.Sector)
	}
	return fmt.Sprintf("round %d write w%d#%d's data for sector %d", tag.Round, tag.Writer, tag.Seq, tag.Sector)
}

// cmAccepted returns the ops whose value sector may hold at the end, given
// every op of the round that touched it (ops may be in any order).
//
// The rule. An op on a sector is atomic for that sector (one request writes
// it whole), but ops that overlap in time may take effect in either order;
// only real time orders them: if B started after A completed (B.Start >
// A.End), B took effect after A. The sector ends with the value of the op
// that took effect last. Let L be the op on the sector that started last.
// An op that completed before L started (O.End < L.Start) was followed by L,
// so its value cannot be the final one. Every other op (O.End > L.Start, L
// itself included) can be last: every op on the sector started no later
// than L, so before O completed, and can be placed before O within its own
// interval. So the accepted values are L's plus those of every op still
// running when L started; a write's value is its tag for the sector, a
// write-zeroes' or discard's is zeros. The content from before the round
// (backing file, prefill, earlier rounds) is accepted only where no op
// touched the sector. Start and End are taken outside the system calls, so
// the intervals only widen what is accepted: the model never fails a
// correct history, and a value it refuses is a completed op's write lost,
// undone or misplaced.
func cmAccepted(ops []*cmOp) []*cmOp {
	if len(ops) == 0 {
		return nil
	}
	var lastStart int64 = -1
	for _, o := range ops {
		lastStart = max(lastStart, o.Start)
	}
	var acc []*cmOp
	for _, o := range ops {
		if o.End > lastStart {
			acc = append(acc, o)
		}
	}
	return acc
}

// cmRegion is the hot clusters of an image, where every op lands.
type cmRegion struct {
	Kind  cmKind
	First int64 // first sector
	N     int64 // sectors
}

func (r cmRegion) describe(s int64) string {
	off := s * cmSector
	c := off / r.Kind.Cluster
	in := off % r.Kind.Cluster
	d := fmt.Sprintf("sector %d (guest offset %#x: cluster %d", s, off, c)
	if r.Kind.Sub != r.Kind.Cluster {
		d += fmt.Sprintf(", subcluster %d", in/r.Kind.Sub)
	}
	return d + fmt.Sprintf(", in-cluster offset %#x)", in)
}

// cmCheck checks the hot region's content got (starting at sector r.First)
// against the model for the round's ops; initial is the region's content
// before the round. It returns one message per bad sector, in detail for the
// first few.
func cmCheck(r cmRegion, initial, got []byte, ops []*cmOp) []string {
	bySector := make([][]*cmOp, r.N)
	for _, o := range ops {
		for s := o.Sector; s < o.Sector+o.Count; s++ {
			bySector[s-r.First] = append(bySector[s-r.First], o)
		}
	}
	var bad []string
	for i := int64(0); i < r.N; i++ {
		s := r.First + i
		b := got[i*cmSector : (i+1)*cmSector]
		if msg := cmCheckSector(r, s, b, initial[i*cmSector:(i+1)*cmSector], bySector[i], ops); msg != "" {
			bad = append(bad, msg)
		}
	}
	return bad
}

// cmCheckSector returns "" when sector s's content b is allowed, or why not.
func cmCheckSector(r cmRegion, s int64, b, initial []byte, touching, all []*cmOp) string {
	tag, zero, ok := cmDecode(b)
	var holds string
	switch {
	case zero:
		holds = "zeros"
	case ok:
		holds = tag.String()
	default:
		holds = "unrecognised data " + excerpt(b, 0)
	}
	if len(touching) == 0 {
		if bytes.Equal(b, initial) {
			return ""
		}
		it, iz, iok := cmDecode(initial)
		was := "unrecognised data " + excerpt(initial, 0)
		if iz {
			was = "zeros"
		} else if iok {
			was = it.String()
		}
		return fmt.Sprintf("%s: no op touched it, yet it changed from %s to %s", r.describe(s), was, holds)
	}
	acc := cmAccepted(touching)
	var found *cmOp // the op whose value the sector holds
	for _, o := range touching {
		if ok && o.Kind == opWrite && tag.Round == uint32(o.Round) && tag.Writer == uint32(o.Writer) && tag.Seq == uint64(o.Seq) && tag.Sector == uint64(s) {
			found = o
		}
	}
	for _, o := range acc {
		if o == found || zero && o.Kind != opWrite {
			return ""
		}
	}

	// Not allowed: say exactly what happened.
	var m strings.Builder
	fmt.Fprintf(&m, "%s holds %s, which is not an allowed final value.", r.describe(s), holds)
	switch {
	case found != nil:
		for _, o := range touching {
			if o.Start > found.End {
				fmt.Fprintf(&m, "\n    that write (%s) completed before %s started", found, o)
				break
			}
		}
	case ok && tag.Sector != uint64(s):
		fmt.Fprintf(&m, "\n    data of another sector: misplaced")
	case zero:
		fmt.Fprintf(&m, "\n    no accepted op writes zeros")
	case ok:
		fmt.Fprintf(&m, "\n    a value from before this round: a completed op's write was LOST")
	}
	m.WriteString("\n    accepted final values (from):")
	for _, o := range acc {
		fmt.Fprintf(&m, "\n      %s", o)
	}
	sorted := append([]*cmOp(nil), touching...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start < sorted[j].Start })
	if len(sorted) > 8 {
		sorted = sorted[len(sorted)-8:]
	}
	m.WriteString("\n    ops on this sector, last 8 by start:")
	for _, o := range sorted {
		fmt.Fprintf(&m, "\n      %s", o)
	}
	// Ops on the same cluster that did not touch this sector but ran while
	// an accepted op did: a copy-on-write merge among them can have
	// written stale data over the sector.
	cl := s * cmSector / r.Kind.Cluster
	var lo, hi int64 = 1 << 62, -1
	for _, o := range acc {
		lo, hi = min(lo, o.Start), max(hi, o.End)
	}
	var suspects []string
	for _, o := range all {
		oc0, oc1 := o.Sector*cmSector/r.Kind.Cluster, ((o.Sector+o.Count)*cmSector-1)/r.Kind.Cluster
		if o.covers(s) || cl < oc0 || cl > oc1 || o.End < lo || o.Start > hi {
			continue
		}
		suspects = append(suspects, o.String())
	}
	if len(suspects) > 0 {
		fmt.Fprintf(&m, "\n    ops on cluster %d not touching the sector, concurrent with the accepted ones:", cl)
		for i, x := range suspects {
			if i == 10 {
				fmt.Fprintf(&m, "\n      ... and %d more", len(suspects)-10)
				break
			}
			fmt.Fprintf(&m, "\n      %s", x)
		}
	}
	return m.String()
}

// testModelRules shows the checker rejects what it must and accepts what
// it may, on hand-made histories.
func testModelRules(t *testing.T) {
	k := cmKind{Name: "rules", Cluster: 4096, Sub: 2048}
	r := cmRegion{Kind: k, First: 8, N: 1}
	sector := func(tag cmTag) []byte {
		b := make([]byte, cmSector)
		cmFill(b, tag)
		return b
	}
	initial := sector(cmTag{Writer: cmWriterPrefill, Sector: 8})
	w := func(writer int, start, end int64) *cmOp {
		return &cmOp{Round: 1, Writer: writer, Kind: opWrite, Sector: 8, Count: 1, Start: start, End: end}
	}
	val := func(o *cmOp) []byte {
		return sector(cmTag{Round: 1, Writer: uint32(o.Writer), Sector: 8})
	}
	zero := make([]byte, cmSector)
	a, b := w(1, 1, 4), w(2, 2, 3) // overlapping
	c := w(3, 5, 6)                // after both
	z := &cmOp{Round: 1, Writer: 4, Kind: opZero, Sector: 8, Count: 1, Start: 3, End: 7}
	torn := append(append([]byte(nil), val(a)[:256]...), val(b)[256:]...)
	misplaced := sector(cmTag{Round: 1, Writer: 1, Sector: 9})
	cases := []struct {
		name string
		ops  []*cmOp
		got  []byte
		ok   bool
	}{
		{"untouched keeps initial", nil, initial, true},
		{"untouched changed", nil, zero, false},
		{"overlapping: first", []*cmOp{a, b}, val(a), true},
		{"overlapping: second", []*cmOp{a, b}, val(b), true},
		{"overtaken write lost", []*cmOp{a, b, c}, val(a), false},
		{"last write wins", []*cmOp{a, b, c}, val(c), true},
		{"initial after a write", []*cmOp{a}, initial, false},
		{"zero overlapping last write", []*cmOp{a, c, z}, zero, true},
		{"write overlapping zero", []*cmOp{a, c, z}, val(c), true},
		{"write overtaken by zero", []*cmOp{a, z}, val(a), true}, // a ends at 4 > z.Start 3
		{"zeros with no zero op", []*cmOp{a, b}, zero, false},
		{"torn sector", []*cmOp{a, b}, torn, false},
		{"misplaced sector", []*cmOp{a}, misplaced, false},
	}
	for _, c := range cases {
		msg := cmCheckSector(r, 8, c.got, initial, c.ops, c.ops)
		if (msg == "") != c.ok {
			t.Errorf("%s: checker said %q, want ok=%v", c.name, msg, c.ok)
		}
	}
}

// cmFillRange returns the tagged content of sectors [first, first+n) as
// writer writer, op seq of round round.
func cmFillRange(dst []byte, round, writer, seq int, first int64) {
	for i := 0; i < len(dst)/cmSector; i++ {
		cmFill(dst[i*cmSector:(i+1)*cmSector], cmTag{Round: uint32(round), Writer: uint32(writer), Seq: uint64(seq), Sector: uint64(first + int64(i))})
	}
}

// cmQemuWrite writes tagged sectors [off, off+n) bytes into img with qemu-io.
func cmQemuWrite(t *testing.T, img, src string, writer int, off, n int64) {
	buf := make([]byte, n)
	cmFillRange(buf, 0, writer, 0, off/cmSector)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, img, fmt.Sprintf("write -s %s %d %d", src, off, n))
}

// cmGenOp draws one op aimed at the hot region. Most ops are shaped to
// meet each other in the first few subclusters of the hot clusters (the
// window): single-sector writes into the first half of a subcluster (in
// place once it is allocated), writes straddling a subcluster boundary
// (which merge the partly covered allocated subcluster with a newly
// allocated one, rewriting the part they do not cover; some of these are
// write-zeroes and discards, which zero bytes in both), discards and
// write-zeroes of whole subclusters (which make the next straddling write
// a merge again), and large writes past the window (which keep the image
// file busy). The rest are drawn from everything: any op, any sector, one
// sector to two clusters.
func cmGenOp(rng *rand.Rand, r cmRegion) (kind opKind, first, count int64) {
	cs := r.Kind.Cluster / cmSector
	ss := r.Kind.Sub / cmSector
	window := min(cs, 4*ss) // sectors at the start of each hot cluster
	cluster := int64(rng.Intn(cmHotClusters)) * cs
	kind = opWrite
	switch p := rng.Intn(100); {
	case p < 35: // poke one sector
		sub := cluster + ss*rng.Int63n(window/ss)
		first, count = sub+rng.Int63n(max(ss/2, 1)), 1
	case p < 60: // straddle a subcluster boundary, partly covering both sides
		switch rng.Intn(4) {
		case 0:
			kind = opZero
		case 1:
			kind = opDiscard
		}
		b := cluster + ss*(1+rng.Int63n(max(window/ss-1, 1)))
		if window/ss == 1 {
			b = cs * (1 + rng.Int63n(cmHotClusters-1)) // a cluster boundary
		}
		side := max(min(ss/2, 4), 1)
		first = b - 1 - rng.Int63n(side)
		count = b - first + 1 + rng.Int63n(side)
	case p < 70: // unmap whole subclusters
		kind = opDiscard
		if rng.Intn(2) == 0 {
			kind = opZero
		}
		first = cluster + ss*rng.Int63n(window/ss)
		count = ss * (1 + rng.Int63n(4))
	case p < 80: // a big write past the window
		first = cluster + window + rng.Int63n(cs-window+1)
		count = cs/2 + rng.Int63n(cs)
	default:
		switch p := rng.Intn(100); {
		case p < 60:
			kind = opWrite
		case p < 80:
			kind = opZero
		default:
			kind = opDiscard
		}
		if rng.Intn(2) == 0 {
			first = cluster + rng.Int63n(window)
		} else {
			first = rng.Int63n(r.N)
		}
		switch p := rng.Intn(100); {
		case p < 35:
			count = 1
		case p < 60: // sub-4 KiB, often inside one subcluster
			count = 2 + rng.Int63n(6)
		case p < 80: // across a subcluster boundary
			first = first - first%ss + ss - 1 - rng.Int63n(min(ss, 4))
			count = 2 + rng.Int63n(max(ss, 4))
		case p < 95: // up to a cluster
			count = 8 + rng.Int63n(cs)
		default: // whole clusters, aligned
			first -= first % cs
			count = cs * (1 + rng.Int63n(2))
		}
	}
	first = min(max(first, 0), r.N-1)
	count = min(count, r.N-first)
	return kind, r.First + first, count
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	skip := int((align - uintptr(unsafe.Pointer(&b[0]))%align) % align)
	return b[skip : skip+n]
}

// cmWriter issues one goroutine's ops on its own O_DIRECT descriptor.
type cmWriter struct {
	id, fd, round int
	clock         *atomic.Int64
	buf           []byte
	ops           []*cmOp
}

// do issues one op and records it with its interval.
func (w *cmWriter) do(kind opKind, first, count int64) error {
	o := &cmOp{Round: w.round, Writer: w.id, Seq: len(w.ops), Kind: kind, Sector: first, Count: count}
	off, n := first*cmSector, count*cmSector
	var err error
	switch kind {
	case opWrite:
		p := w.buf[:n]
		cmFillRange(p, w.round, w.id, o.Seq, first)
		o.Start = w.clock.Add(1)
		var k int
		k, err = unix.Pwrite(w.fd, p, off)
		o.End = w.clock.Add(1)
		if err == nil && int64(k) != n {
			err = fmt.Errorf("short write: %d of %d bytes", k, n)
		}
	case opZero, opDiscard:
		mode := uint32(unix.FALLOC_FL_ZERO_RANGE)
		if kind == opDiscard {
			mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		}
		o.Start = w.clock.Add(1)
		err = unix.Fallocate(w.fd, mode, off, n)
		o.End = w.clock.Add(1)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	w.ops = append(w.ops, o)
	return nil
}

// cmBarrier starts the writers of a duel together, round after round.
type cmBarrier struct {
	mu      sync.Mutex
	n, in   int
	release chan struct{}
}

func newCMBarrier(n int) *cmBarrier { return &cmBarrier{n: n, release: make(chan struct{})} }

// wait returns once all n writers have arrived, or false once a writer
// has failed.
func (b *cmBarrier) wait(abort <-chan struct{}) bool {
	b.mu.Lock()
	ch := b.release
	if b.in++; b.in == b.n {
		b.in = 0
		b.release = make(chan struct{})
		b.mu.Unlock()
		close(ch)
		return true
	}
	b.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-abort:
		return false
	}
}

// cmDuel runs one role of a duel on hot cluster c. Each iteration the three
// writers of the duel start together: the setter unmaps (discard or
// write-zeroes) subcluster k+1, or else k and then pieces of both; the poker writes one sector in the first half
// of subcluster k; the merger writes from the second half of subcluster k
// into subcluster k+1. The kernel runs a fallocate alone on the file, so
// the two writes issued during it wait and then reach the daemon together.
// Once subcluster k is allocated, that is an in-place write racing a write
// that merges the rest of subcluster k (the poker's sector) with newly
// allocated subcluster k+1. The writers draw the same positions from the
// duel's seed; each also mixes in random ops of its own.
func cmDuel(w *cmWriter, role int, bar *cmBarrier, abort <-chan struct{}, r cmRegion, c, duelSeed int64, rng *rand.Rand) error {
	cs := r.Kind.Cluster / cmSector
	ss := r.Kind.Sub / cmSector
	half := max(ss/2, 1)
	pos := rand.New(rand.NewSource(duelSeed))
	for it := 0; it < cmDuelIterations; it++ {
		// Subcluster k of cluster c and the next one (without extended
		// L2, cluster c and the next hot cluster).
		k := r.First + c*cs + ss*pos.Int63n(max(min(cs/ss-1, 8), 1))
		unmap := opDiscard
		if pos.Intn(2) == 0 {
			unmap = opZero
		}
		// Mostly subcluster k+1, so the merge has one to allocate; else
		// all of subcluster k and then pieces of k and k+1 (which zero
		// bytes in subcluster k+1 while k reads as zeros already).
		unmapK := pos.Intn(4) == 0
		pieceFirst := k + ss - 1 - pos.Int63n(half)
		pieceEnd := k + ss + 1 + pos.Int63n(half)
		poke := k + pos.Int63n(half)
		from := k + half + pos.Int63n(half)
		to := k + ss + 1 + pos.Int63n(ss) // exclusive
		pokeLag := time.Duration(pos.Intn(40)) * time.Microsecond
		mergeLag := time.Duration(pos.Intn(40)) * time.Microsecond
		if !bar.wait(abort) {
			return nil
		}
		var err error
		switch role {
		case 0:
			if !unmapK {
				err = w.do(unmap, k+ss, ss)
			} else if err = w.do(unmap, k, ss); err == nil {
				err = w.do(unmap, pieceFirst, pieceEnd-pieceFirst)
			}
		case 1:
			spin(pokeLag)
			err = w.do(opWrite, poke, 1)
		case 2:
			spin(mergeLag)
			err = w.do(opWrite, from, to-from)
		}
		if err != nil {
			return err
		}
		if rng.Intn(4) == 0 {
			if err := w.do(cmGenOp(rng, r)); err != nil {
				return err
			}
		}
	}
	return nil
}

// spin waits d without giving up the CPU (sleeps are far coarser).
func spin(d time.Duration) {
	for t0 := time.Now(); time.Since(t0) < d; {
	}
}

// cmRunWriters runs the round's writers on file and returns their ops.
func cmRunWriters(file string, r cmRegion, seed int64, round int) ([]*cmOp, error) {
	var clock atomic.Int64
	var wg sync.WaitGroup
	writers := make([]*cmWriter, cmWriters)
	errs := make([]error, cmWriters)
	abort := make(chan struct{})
	var abortOnce sync.Once
	bars := make([]*cmBarrier, cmDuels)
	for i := range bars {
		bars[i] = newCMBarrier(3)
	}
	for i := range writers {
		fd, err := unix.Open(file, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		if err != nil {
			abortOnce.Do(func() { close(abort) })
			wg.Wait()
			return nil, fmt.Errorf("open %s O_DIRECT: %w", file, err)
		}
		w := &cmWriter{id: i, fd: fd, round: round, clock: &clock, buf: alignedBuf(int(r.N * cmSector))}
		writers[i] = w
		rng := rand.New(rand.NewSource(seed + int64(round)*1000 + int64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer unix.Close(fd)
			var err error
			if d := i / 3; d < cmDuels {
				// Duel d's cluster has a hot neighbour after it.
				err = cmDuel(w, i%3, bars[d], abort, r, int64(d%(cmHotClusters-1)), seed+int64(round)*1000+int64(100+d), rng)
			} else {
				for range cmRandomOps {
					if err = w.do(cmGenOp(rng, r)); err != nil {
						break
					}
				}
			}
			if err != nil {
				errs[i] = err
				abortOnce.Do(func() { close(abort) })
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	var ops []*cmOp
	for _, w := range writers {
		ops = append(ops, w.ops...)
	}
	return ops, nil
}

// readDirect reads all of file with O_DIRECT (no page cache in between).
func readDirect(t *testing.T, file string, size int64) []byte {
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s O_DIRECT: %v", file, err)
	}
	defer unix.Close(fd)
	buf := alignedBuf(int(size))
	for done := int64(0); done < size; {
		n, err := unix.Pread(fd, buf[done:min(size, done+1<<20)], done)
		if err != nil || n == 0 {
			t.Fatalf("read %s at %d: %d, %v", file, done, n, err)
		}
		done += int64(n)
	}
	return buf
}

func runConcurrencyModel(t *testing.T, k cmKind) {
	dir := testDir(t)
	kit := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := kit.Path(k.Name)
	cs := k.Cluster
	hotOff := cmFirstHot * cs
	r := cmRegion{Kind: k, First: hotOff / cmSector, N: cmHotClusters * cs / cmSector}

	// The initial content: a backing file tagged over a span beyond the
	// hot region, and (always) some prefilled pieces in the image itself,
	// so writes meet allocated clusters and subclusters from the start.
	backing := ""
	if k.Backing {
		base := kit.BkPath("base.qcow2")
		qemuCreate(t, base, fmt.Sprint(cmImageSize), "", "", "")
		cmQemuWrite(t, base, filepath.Join(dir, "backing.bin"), cmWriterBacking, hotOff-cs, (cmHotClusters+2)*cs)
		backing = "bk/base.qcow2"
	}
	qemuCreate(t, img, fmt.Sprint(cmImageSize), k.Opts, backing, "qcow2")
	for c := int64(0); c < cmHotClusters; c += 2 {
		at := hotOff + c*cs
		cmQemuWrite(t, img, filepath.Join(dir, "prefill.bin"), cmWriterPrefill, at+cmSector, max(cs/2, 2*k.Sub))
		cmQemuWrite(t, img, filepath.Join(dir, "prefill.bin"), cmWriterPrefill, at+cs+k.Sub/2, 3*cmSector)
	}

	seed := seedFor(t, "concurrency-model/"+k.Name)
	prevRaw := filepath.Join(dir, "before.raw")
	qemuToRaw(t, img, "", prevRaw)
	prev, err := os.ReadFile(prevRaw)
	if err != nil {
		t.Fatal(err)
	}
	hotEnd := hotOff + r.N*cmSector
	rounds := cmRounds * stressFactor(t)
	total := 0
	daemonLog := filepath.Join(dir, "daemon.log")
	t.Setenv("GOMAXPROCS", cmDaemonProcs) // inherited by the daemon
	for round := 1; round <= rounds; round++ {
		t0 := time.Now()
		mountQcow2fs(t, mnt, []string{"--log", daemonLog}, img)
		file := filepath.Join(mnt, k.Name+".raw")
		// A daemon that stops answering would leave the writers blocked
		// for good: abort the FUSE connection so they return, and fail.
		var hung atomic.Bool
		watchdog := time.AfterFunc(cmWriteTimeout, func() {
			hung.Store(true)
			abortFuse(mnt)
		})
		ops, err := cmRunWriters(file, r, seed, round)
		watchdog.Stop()
		writing := time.Since(t0)
		if hung.Load() {
			b, _ := os.ReadFile(daemonLog)
			t.Fatalf("round %d: the writers were still blocked after %v; aborted the FUSE connection. Daemon log:\n%s", round, cmWriteTimeout, lastLines(string(b), 40))
		}
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		total += len(ops)

		failed := false
		report := func(where string, got []byte) {
			bad := cmCheck(r, prev[hotOff:hotEnd], got[hotOff:hotEnd], ops)
			if len(bad) > 0 {
				failed = true
				shown := bad[:min(len(bad), 4)]
				t.Errorf("round %d of %d, %s: %d of %d hot sectors hold a value the model forbids; the first %d:\n  %s",
					round, rounds, where, len(bad), r.N, len(shown), strings.Join(shown, "\n  "))
			}
			for _, span := range [][2]int64{{0, hotOff}, {hotEnd, cmImageSize}} {
				if g, p := got[span[0]:span[1]], prev[span[0]:span[1]]; !bytes.Equal(g, p) {
					failed = true
					i := firstDiff(g, p)
					t.Errorf("round %d, %s: offset %#x, outside the hot clusters where no op wrote, changed: %s, was %s",
						round, where, span[0]+int64(i), excerpt(g, i), excerpt(p, i))
				}
			}
		}
		report("read through the mount", readDirect(t, file, cmImageSize))
		unmountQcow2fs(t, mnt, kit.Dir)

		raw := filepath.Join(dir, fmt.Sprintf("round%d.raw", round))
		qemuToRaw(t, img, "", raw)
		got, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		report("read by qemu-img convert after unmount", got)
		qemuCheckClean(t, img)
		t.Logf("round %d: %d ops, mount and writes %v, round %v", round, len(ops), writing.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		if failed || t.Failed() {
			t.Fatalf("stopping after round %d of %d (%d ops so far)", round, rounds, total)
		}
		prev = got
		_ = os.Remove(prevRaw)
		prevRaw = raw
	}
	t.Logf("%d rounds, %d ops by %d writers on %d hot clusters: every sector as the model allows", rounds, total, cmWriters, cmHotClusters)
}
