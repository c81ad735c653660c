package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// Consistency check and repair, modelled on `qemu-img check`: every
// reference the metadata holds is counted per host cluster (header, L1 and
// L2 tables of the active state and of every snapshot, data and compressed
// clusters, snapshot table, refcount structure, bitmaps) and compared with
// the stored refcounts; then the COPIED flags of the active tables are
// checked against the refcounts.

// CheckOptions controls Check.
type CheckOptions struct {
	// Repair is "" (only check), "leaks" (lower refcounts that are too
	// high) or "all" (also raise refcounts that are too low, rebuild a
	// broken refcount structure, fix COPIED flags).
	Repair string
	// ForceShare checks without taking image locks (read-only check only).
	ForceShare bool
	// Progress, if set, is called now and then with work done and total.
	Progress func(done, total int64)
}

// CheckResult is what Check found, with the JSON names of
// `qemu-img check --output=json`.
type CheckResult struct {
	Filename           string   `json:"filename"`
	Format             string   `json:"format"`
	CheckErrors        int      `json:"check-errors"`
	Corruptions        int      `json:"corruptions,omitempty"`
	Leaks              int      `json:"leaks,omitempty"`
	CorruptionsFixed   int      `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int      `json:"leaks-fixed,omitempty"`
	ImageEndOffset     int64    `json:"image-end-offset,omitempty"`
	TotalClusters      int64    `json:"total-clusters,omitempty"`
	AllocatedClusters  int64    `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64    `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64    `json:"compressed-clusters,omitempty"`
	Messages           []string `json:"-"` // what qemu-img prints on stderr, one line each
}

const maxCheckMessages = 10000

// Reserved bits of L1 entries and standard L2 cluster descriptors (QEMU's
// L1E_RESERVED_MASK, L2E_STD_RESERVED_MASK).
const (
	l1EntryReservedMask = 0x7f000000000001ff
	l2EntryReservedMask = 0x3f000000000001fe
)

// ExitCode is qemu-img check's exit status for this result: 0 clean, 1 the
// check could not complete (check errors), 2 corruptions, 3 leaks only.
// (An error from Check itself also means 1.)
func (r *CheckResult) ExitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// Check checks the image at path and, with o.Repair, repairs it. A returned
// error means the check could not run (qemu-img check's exit code 1); the
// result says what was found (corruptions: exit code 2, leaks only: 3).
// After a repair the image is checked again and the result is that second
// check's, with the fixed counts of the first.
func Check(path string, o CheckOptions) (*CheckResult, error) {
	var fix checkFix
	switch o.Repair {
	case "":
	case "leaks":
		fix = fixLeaks
	case "all":
		fix = fixLeaks | fixErrors
	default:
		return nil, fmt.Errorf("%s: unknown repair mode %q (leaks or all)", path, o.Repair)
	}
	if fix != 0 && o.ForceShare {
		return nil, fmt.Errorf("%s: force-share is only for a read-only check, not with repair", path)
	}
	img, err := Open(path, OpenOptions{ReadOnly: fix == 0, ForceShare: o.ForceShare, repair: fix != 0})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	s := img.s
	s.mu.Lock()
	defer s.mu.Unlock()
	progress := o.Progress
	if progress == nil {
		progress = func(int64, int64) {}
	}

	if fix != 0 {
		// Unknown autoclear bits go before anything is written (the
		// refcounts of a dirty image are what is being checked: no
		// rebuild here).
		if err := img.w.prepareKeepBitmaps(false); err != nil {
			return nil, nameFile(s.path, err)
		}
	}
	c := newChecker(img, progress)
	if err := c.run(fix); err != nil {
		return nil, nameFile(s.path, err)
	}
	res := c.res
	if fix == 0 || res.Corruptions+res.Leaks == 0 {
		return res, nameFile(s.path, c.finishRepair(fix))
	}
	// Double-check the repaired image.
	c2 := newChecker(img, progress)
	if err := c2.run(0); err != nil {
		return nil, nameFile(s.path, err)
	}
	final := c2.res
	final.CorruptionsFixed = max(0, res.Corruptions-final.Corruptions)
	final.LeaksFixed = max(0, res.Leaks-final.Leaks)
	final.Messages = append(res.Messages, final.Messages...)
	c2.res = final
	return final, nameFile(s.path, c2.finishRepair(fix))
}

type checkFix int

const (
	fixLeaks checkFix = 1 << iota
	fixErrors
)

// checker holds the state of one check pass. Caller holds s.mu.
type checker struct {
	img      *Image
	s        *shared
	res      *CheckResult
	progress func(done, total int64)
	cs       int64
	bits     uint
	fileLen  int64

	counts   []uint32 // references per host cluster
	nb       int64    // clusters compared: the file's, or more if referenced
	countMax uint64   // saturation: the image's refcount maximum

	// The stored refcount structure, read from the file.
	table    []uint64
	order    uint32
	perBlock int64
	blocks   map[int64][]byte

	rebuild bool // the refcount structure itself is broken
	outside bool // a refcount block lies past the end of the file
	noRef   bool // don't count the refcount structure (for a rebuild)
	fixes   []refFix
	work    int64 // progress: L1 entries walked + 64K-cluster steps compared
	total   int64
}

type refFix struct {
	cl int64
	rc uint64
}

func newChecker(img *Image, progress func(done, total int64)) *checker {
	s := img.s
	c := &checker{img: img, s: s, progress: progress, cs: s.g.clusterSize, bits: s.g.clusterBits,
		res: &CheckResult{Filename: s.path, Format: "qcow2"}}
	c.order = s.hdr.RefcountOrder
	c.perBlock = c.cs * 8 >> c.order
	c.countMax = 1<<(1<<c.order) - 1
	if c.order >= 5 {
		c.countMax = 1<<32 - 1
	}
	return c
}

func (c *checker) msg(format string, args ...any) {
	if len(c.res.Messages) < maxCheckMessages {
		c.res.Messages = append(c.res.Messages, fmt.Sprintf(format, args...))
	} else if len(c.res.Messages) == maxCheckMessages {
		c.res.Messages = append(c.res.Messages, "... (further messages omitted)")
	}
}

func (c *checker) loadRefStructure() error {
	s := c.s
	raw := make([]byte, int64(s.hdr.RefcountTableClusters)*c.cs)
	if err := preadFull(s.f, raw, int64(s.hdr.RefcountTableOffset)); err != nil {
		return fmt.Errorf("%s: read refcount table: %w", s.path, err)
	}
	c.table = make([]uint64, len(raw)/8)
	for i := range c.table {
		c.table[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	c.blocks = map[int64][]byte{}
	return nil
}

// storedRefcount is the refcount the image records for cluster cl.
func (c *checker) storedRefcount(cl int64) (uint64, error) {
	bi := cl / c.perBlock
	if bi >= int64(len(c.table)) {
		return 0, nil
	}
	off := int64(c.table[bi] & refTableOffsetMask)
	if off == 0 {
		return 0, nil
	}
	if off&(c.cs-1) != 0 {
		return 0, fmt.Errorf("refblock offset %#x unaligned (reftable index %#x)", off, bi)
	}
	blk := c.blocks[off]
	if blk == nil {
		blk = make([]byte, c.cs)
		if err := preadFull(c.s.f, blk, off); err != nil {
			return 0, err
		}
		if len(c.blocks) > 256 {
			clear(c.blocks)
		}
		c.blocks[off] = blk
	}
	return getRefcountEntry(blk, cl%c.perBlock, c.order), nil
}

// inc counts one reference to every cluster of [off, off+size), as QEMU's
// qcow2_inc_refcounts_imrt does.
func (c *checker) inc(off, size int64) {
	if size <= 0 {
		return
	}
	if off < 0 || off+size-c.fileLen >= c.cs {
		c.msg("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset %#x size %#x", off, size)
		c.res.Corruptions++
		return
	}
	for cl := off >> c.bits; cl <= (off+size-1)>>c.bits; cl++ {
		for int64(len(c.counts)) <= cl {
			c.counts = append(c.counts, make([]uint32, max(len(c.counts), 1024))...)
		}
		if cl >= c.nb {
			c.nb = cl + 1
		}
		if uint64(c.counts[cl]) >= c.countMax {
			c.msg("ERROR: overflow cluster offset=%#x", cl<<c.bits)
			c.res.Corruptions++
			continue
		}
		c.counts[cl]++
	}
}

func (c *checker) count(cl int64) uint64 {
	if cl < int64(len(c.counts)) {
		return uint64(c.counts[cl])
	}
	return 0
}

func (c *checker) step(n int64) {
	c.work += n
	c.progress(min(c.work, c.total), c.total)
}

// run is one full pass: count, compare (with fixes), COPIED flags.
func (c *checker) run(fix checkFix) error {
	s := c.s
	var err error
	if c.fileLen, err = s.fileSize(); err != nil {
		return err
	}
	c.nb = (c.fileLen + c.cs - 1) >> c.bits
	c.res.TotalClusters = (int64(s.hdr.Size) + c.cs - 1) >> c.bits
	c.total = int64(s.hdr.L1Size) + c.nb/65536 + 1
	for _, sn := range s.snaps {
		c.total += int64(sn.L1Size)
	}
	if err := c.loadRefStructure(); err != nil {
		return err
	}
	if err := c.countAll(); err != nil {
		return err
	}
	highest := c.compare(fix)
	if fix != 0 {
		if err := c.applyFixes(fix); err != nil {
			return err
		}
	}
	if err := c.checkCopied(fix); err != nil {
		return err
	}
	c.res.ImageEndOffset = (highest + 1) << c.bits
	c.progress(c.total, c.total)
	return nil
}

// countAll counts every reference the metadata holds.
func (c *checker) countAll() error {
	s := c.s
	h := &s.hdr
	c.inc(0, c.cs)
	if err := c.checkL1(int64(h.L1TableOffset), int64(h.L1Size), true); err != nil {
		return err
	}
	if s.g.dataFile && len(s.snaps) > 0 {
		c.msg("ERROR: image has an external data file and internal snapshots")
		c.res.Corruptions++
	}
	for _, sn := range s.snaps {
		if sn.L1TableOffset&uint64(c.cs-1) != 0 {
			c.msg("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", imgtext.Escape(sn.ID), imgtext.Escape(sn.Name), sn.L1TableOffset)
			c.res.Corruptions++
			continue
		}
		if int64(sn.L1Size)*8 > maxL1Bytes {
			c.msg("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", imgtext.Escape(sn.ID), imgtext.Escape(sn.Name), sn.L1Size)
			c.res.Corruptions++
			continue
		}
		if err := c.checkL1(int64(sn.L1TableOffset), int64(sn.L1Size), false); err != nil {
			return err
		}
	}
	if h.NbSnapshots > 0 {
		c.inc(int64(h.SnapshotsOffset), int64(len(encodeSnapshotTable(s.snaps))))
	}
	if !c.noRef {
		c.inc(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*c.cs)
	}
	if err := c.countBitmaps(); err != nil {
		return err
	}
	if !c.noRef {
		c.checkRefBlocks()
	}
	return nil
}

// checkL1 counts an L1 table and the trees below it; frag gathers the
// allocation statistics (active L1 only).
func (c *checker) checkL1(off, size int64, frag bool) error {
	c.inc(off, size*8)
	if size == 0 {
		return nil
	}
	raw := make([]byte, size*8)
	if err := preadFull(c.s.f, raw, off); err != nil {
		c.msg("ERROR: I/O error in check_refcounts_l1: %v", err)
		c.res.CheckErrors++
		return nil
	}
	l2 := make([]byte, c.cs)
	for i := int64(0); i < size; i++ {
		e := binary.BigEndian.Uint64(raw[i*8:])
		if e&l1EntryReservedMask != 0 {
			c.msg("ERROR found L1 entry with reserved bits set: %x", e)
			c.res.Corruptions++
		}
		l2off := int64(e & l1EntryOffsetMask)
		if l2off == 0 {
			continue
		}
		c.inc(l2off, c.cs)
		if l2off&(c.cs-1) != 0 {
			c.msg("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2off)
			c.res.Corruptions++
		}
		if err := preadFull(c.s.f, l2, l2off); err != nil {
			c.msg("ERROR: I/O error in check_refcounts_l2: %v", err)
			c.res.CheckErrors++
			continue
		}
		c.checkL2(l2, frag)
		c.step(1)
	}
	return nil
}

func (c *checker) checkL2(l2 []byte, frag bool) {
	g := &c.s.g
	var nextContig int64
	for j := int64(0); j < g.l2Entries; j++ {
		word := binary.BigEndian.Uint64(l2[j*g.l2EntrySize:])
		var bitmap uint64
		if g.l2EntrySize == 16 {
			bitmap = binary.BigEndian.Uint64(l2[j*g.l2EntrySize+8:])
		}
		offset := int64(word & l2EntryOffsetMask)
		if word&oflagCompressed == 0 && word&l2EntryReservedMask != 0 {
			c.msg("ERROR found l2 entry with reserved bits set: %x", word)
			c.res.Corruptions++
		}
		switch {
		case word&oflagCompressed != 0:
			if word&oflagCopied != 0 {
				c.msg("ERROR: coffset=%#x: copied flag must never be set for compressed clusters", word&(oflagCompressed-1))
				c.res.Corruptions++
			}
			if g.dataFile {
				c.msg("ERROR compressed cluster %d with data file, entry=%#x", j, word)
				c.res.Corruptions++
				continue
			}
			if bitmap != 0 {
				c.msg("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=%#x", j, word)
				c.res.Corruptions++
				continue
			}
			host, length := compressedDescriptor(word, g.clusterBits)
			c.inc(host, length)
			if frag {
				c.res.AllocatedClusters++
				c.res.CompressedClusters++
				c.res.FragmentedClusters++
			}
		case offset != 0 || g.dataFile && word&oflagCopied != 0 && !(g.subclusters == 1 && word&oflagZero != 0):
			// Normal, or preallocated zero cluster.
			if g.subclusters > 1 && (bitmap>>32)&bitmap != 0 {
				c.msg("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", offset)
				c.res.Corruptions++
			}
			if offset&(c.cs-1) != 0 {
				c.res.Corruptions++
				data := word&oflagZero == 0
				if g.subclusters > 1 {
					data = bitmap&0xffffffff != 0
				}
				if data {
					c.msg("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", offset)
				} else {
					c.msg("ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", offset)
				}
			}
			if frag {
				c.res.AllocatedClusters++
				if nextContig != 0 && offset != nextContig {
					c.res.FragmentedClusters++
				}
				nextContig = offset + c.cs
			}
			if !g.dataFile {
				c.inc(offset, c.cs)
			}
		default:
			if g.subclusters > 1 && bitmap&0xffffffff != 0 {
				c.msg("ERROR: Unallocated cluster has non-zero subcluster allocation map")
				c.res.Corruptions++
			}
		}
	}
}

// countBitmaps counts the persistent bitmaps' clusters; QEMU ignores the
// bitmaps (their clusters leak) once the autoclear bit is clear.
func (c *checker) countBitmaps() error {
	s := c.s
	if s.hdr.AutoclearFeatures&AutoclearBitmaps == 0 {
		return nil
	}
	if bd, ok := s.bitmapDirectory(); ok {
		be := binary.BigEndian
		dirSize, dirOff := bd.size, bd.offset
		c.inc(dirOff, dirSize)
		if dirSize > 64<<20 || dirOff < 0 || dirOff+dirSize > c.fileLen {
			c.msg("ERROR: bitmap directory at %#x (+%d bytes) is invalid", dirOff, dirSize)
			c.res.Corruptions++
			return nil
		}
		dir := make([]byte, dirSize)
		if _, err := s.f.ReadAt(dir, dirOff); err != nil && err != io.EOF {
			return fmt.Errorf("%s: read bitmap directory: %w", s.path, err)
		}
		for off := int64(0); off+24 <= dirSize; {
			tOff := int64(be.Uint64(dir[off:]))
			tSize := int64(be.Uint32(dir[off+8:]))
			nameSize := int64(be.Uint16(dir[off+18:]))
			extraSize := int64(be.Uint32(dir[off+20:]))
			c.inc(tOff, tSize*8)
			if tOff < 0 || tOff+tSize*8 > c.fileLen {
				c.res.Corruptions++
				break
			}
			tbl := make([]byte, tSize*8)
			if _, err := s.f.ReadAt(tbl, tOff); err != nil && err != io.EOF {
				return fmt.Errorf("%s: read bitmap table: %w", s.path, err)
			}
			for i := int64(0); i < tSize; i++ {
				e := be.Uint64(tbl[i*8:])
				d := int64(e & l2EntryOffsetMask)
				if e&0xff000000000001fe != 0 || d&(c.cs-1) != 0 || d != 0 && e&1 != 0 {
					c.res.Corruptions++
					continue
				}
				if d != 0 {
					c.inc(d, c.cs)
				}
			}
			off = (off + 24 + extraSize + nameSize + 7) &^ 7
		}
	}
	return nil
}

// checkRefBlocks counts the refcount blocks and validates the table's
// entries (QEMU's check_refblocks).
func (c *checker) checkRefBlocks() {
	for i, e := range c.table {
		off := int64(e & refTableOffsetMask)
		switch {
		case e&^refTableOffsetMask != 0:
			c.msg("ERROR refcount table entry %d has reserved bits set", i)
			c.res.Corruptions++
			c.rebuild = true
			continue
		case off&(c.cs-1) != 0:
			c.msg("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			c.res.Corruptions++
			c.rebuild = true
			continue
		case off>>c.bits >= c.nb:
			c.msg("ERROR refcount block %d is outside image", i)
			c.res.Corruptions++
			c.outside = true // repaired by the rebuild in "all" mode
			continue
		case off == 0:
			continue
		}
		c.inc(off, c.cs)
		if n := c.count(off >> c.bits); n != 1 {
			c.msg("ERROR refcount block %d refcount=%d", i, n)
			c.res.Corruptions++
			c.rebuild = true
		}
	}
}

// compare compares stored refcounts with the counted references and
// returns the highest cluster in use; fixable mismatches are queued.
func (c *checker) compare(fix checkFix) int64 {
	highest := int64(0)
	for i := int64(0); i < c.nb; i++ {
		if i%65536 == 0 {
			c.step(1)
		}
		rc1, err := c.storedRefcount(i)
		if err != nil {
			c.msg("Can't get refcount for cluster %d: %v", i, err)
			c.res.CheckErrors++
			continue
		}
		rc2 := c.count(i)
		if rc1 > 0 || rc2 > 0 {
			highest = i
		}
		if rc1 == rc2 {
			continue
		}
		fixable := false
		switch {
		case rc1 == 0:
			// No refcount at all: only a rebuild of the structure
			// (repair "all") fixes that.
			c.rebuild = true
		case rc1 > rc2:
			fixable = fix&fixLeaks != 0
		default:
			fixable = fix&fixErrors != 0
		}
		what := "Leaked"
		if fixable {
			what = "Repairing"
		} else if rc1 < rc2 {
			what = "ERROR"
		}
		c.msg("%s cluster %d refcount=%d reference=%d", what, i, rc1, rc2)
		if fixable {
			c.fixes = append(c.fixes, refFix{cl: i, rc: rc2})
		}
		if rc1 < rc2 {
			c.res.Corruptions++
		} else {
			c.res.Leaks++
		}
	}
	return highest
}

// applyFixes writes the queued refcount fixes, or rebuilds the whole
// refcount structure when it is broken (repair "all" only).
func (c *checker) applyFixes(fix checkFix) error {
	w := c.img.w
	if c.outside && fix&fixErrors != 0 {
		c.rebuild = true
	}
	if c.rebuild {
		if fix&fixErrors == 0 {
			c.msg("ERROR need to rebuild refcount structures")
			c.res.CheckErrors++
			return nil
		}
		c.msg("Rebuilding refcount structure")
		if err := c.rebuildRefcounts(); err != nil {
			return err
		}
	} else if len(c.fixes) > 0 {
		for _, f := range c.fixes {
			if err := w.setRefcount(f.cl, f.rc); err != nil {
				return err
			}
		}
		if err := w.flushLocked(); err != nil {
			return err
		}
	}
	// COPIED checks read the refcounts as they are now.
	return c.loadRefStructure()
}

// checkCopied checks QCOW_OFLAG_COPIED on the active L1 and L2 entries
// against the refcounts, and repairs them when allowed (as QEMU: always
// with "all", with "leaks" only if nothing else is wrong).
func (c *checker) checkCopied(fix checkFix) error {
	s := c.s
	g := &s.g
	repair := false
	switch {
	case fix&fixErrors != 0:
		repair = true
	case fix&fixLeaks != 0:
		// Only on an otherwise sound image (the leaks counted above
		// have all been fixed in this mode).
		repair = c.res.CheckErrors == 0 && c.res.Corruptions == 0
	}
	w := c.img.w
	l1 := c.img.l1
	l2 := make([]byte, c.cs)
	dirty := false
	for i, e := range l1 {
		l2off := int64(e & l1EntryOffsetMask)
		if l2off == 0 {
			continue
		}
		rc, err := c.storedRefcount(l2off >> c.bits)
		if err != nil {
			continue
		}
		if (rc == 1) != (e&oflagCopied != 0) {
			c.res.Corruptions++
			verb := "ERROR"
			if repair {
				verb = "Repairing"
			}
			c.msg("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", verb, i, e, rc)
			if repair {
				c.img.l1[i] = withCopied(e, rc == 1)
				w.l1Dirty[int64(i)] = true
				dirty = true
			}
		}
		if l2off&(c.cs-1) != 0 {
			continue
		}
		if err := preadFull(s.f, l2, l2off); err != nil {
			c.res.CheckErrors++
			continue
		}
		for j := int64(0); j < g.l2Entries; j++ {
			word := binary.BigEndian.Uint64(l2[j*g.l2EntrySize:])
			if word&oflagCompressed != 0 {
				continue
			}
			offset := int64(word & l2EntryOffsetMask)
			zeroPlain := g.subclusters == 1 && word&oflagZero != 0 && offset == 0
			if zeroPlain || offset == 0 && !(g.dataFile && word&oflagCopied != 0) {
				continue
			}
			rc := uint64(1)
			if !g.dataFile {
				if rc, err = c.storedRefcount(offset >> c.bits); err != nil {
					continue
				}
			}
			if (rc == 1) == (word&oflagCopied != 0) {
				continue
			}
			c.res.Corruptions++
			verb := "ERROR"
			if repair {
				verb = "Repairing"
			}
			c.msg("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", verb, word, rc)
			if repair {
				if err := c.setL2Word(l2off, j, withCopied(word, rc == 1)); err != nil {
					return err
				}
				dirty = true
			}
		}
	}
	if dirty {
		return w.flushLocked()
	}
	return nil
}

// setL2Word rewrites the first word of entry j of the L2 table at off
// in place, through the L2 cache.
func (c *checker) setL2Word(off, j int64, word uint64) error {
	s := c.s
	g := &s.g
	pos := j * g.l2EntrySize
	slice := l2SliceSize(*g)
	blk, err := s.l2c.Get(uint64(off + pos/slice*slice))
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint64(blk.Data[pos%slice:], word)
	s.l2c.MarkDirty(blk)
	return nil
}

// finishRepair clears the dirty and corrupt bits of a repaired image that
// is now consistent (as QEMU does after a successful repair).
func (c *checker) finishRepair(fix checkFix) error {
	s := c.s
	if fix == 0 || c.res.CheckErrors != 0 || c.res.Corruptions != 0 {
		return nil
	}
	bits := uint64(IncompatDirty | IncompatCorrupt)
	if s.hdr.IncompatibleFeatures&bits == 0 {
		return nil
	}
	s.hdr.IncompatibleFeatures &^= bits
	if err := c.img.w.writeHeader(); err != nil {
		return err
	}
	return s.syncMeta()
}

// rebuildRefcounts replaces the refcount structure with a new one built
// from the counted references, placed past the end of the file: blocks
// written first, then the table, then the header switched to it. The old
// table and blocks are simply no longer referenced.
func (c *checker) rebuildRefcounts() error {
	s := c.s
	w := c.img.w
	// References of everything but the refcount structure itself.
	q := newChecker(c.img, func(int64, int64) {})
	q.noRef = true
	q.fileLen = c.fileLen
	q.nb = c.nb
	q.table, q.blocks = c.table, map[int64][]byte{}
	if err := q.countAll(); err != nil {
		return err
	}
	counts := q.counts
	used := func(bi int64) bool {
		for cl := bi * c.perBlock; cl < min((bi+1)*c.perBlock, int64(len(counts))); cl++ {
			if counts[cl] != 0 {
				return true
			}
		}
		return false
	}
	start := max(q.nb, (c.fileLen+c.cs-1)>>c.bits)
	tc, nb := int64(1), int64(0)
	for {
		total := start + tc + nb
		ranges := (total + c.perBlock - 1) / c.perBlock
		blocks := int64(0)
		for bi := int64(0); bi < ranges; bi++ {
			if used(bi) || (bi+1)*c.perBlock > start {
				blocks++
			}
		}
		ntc := max(1, (ranges*8+c.cs-1)/c.cs)
		if blocks == nb && ntc == tc {
			break
		}
		tc, nb = max(tc, ntc), max(nb, blocks)
	}
	if tc*c.cs > maxRefTableBytes {
		return fmt.Errorf("%s: rebuilt refcount table would exceed %d bytes", s.path, maxRefTableBytes)
	}
	total := start + tc + nb
	for int64(len(counts)) < total {
		counts = append(counts, make([]uint32, total-int64(len(counts)))...)
	}
	for cl := start; cl < total; cl++ {
		counts[cl] = 1
	}
	table := make([]uint64, tc*c.cs/8)
	next := start + tc
	ranges := (total + c.perBlock - 1) / c.perBlock
	blk := make([]byte, c.cs)
	for bi := int64(0); bi < ranges; bi++ {
		if !used(bi) {
			continue
		}
		table[bi] = uint64(next << c.bits)
		clear(blk)
		for i := int64(0); i < c.perBlock; i++ {
			if cl := bi*c.perBlock + i; cl < int64(len(counts)) {
				setRefcountEntry(blk, i, c.order, uint64(counts[cl]))
			}
		}
		if _, err := s.f.WriteAt(blk, next<<c.bits); err != nil {
			return fmt.Errorf("%s: write refcount block: %w", s.path, err)
		}
		next++
	}
	raw := make([]byte, tc*c.cs)
	for i, e := range table {
		binary.BigEndian.PutUint64(raw[i*8:], e)
	}
	if _, err := s.f.WriteAt(raw, start<<c.bits); err != nil {
		return fmt.Errorf("%s: write refcount table: %w", s.path, err)
	}
	if fl := next << c.bits; fl > c.fileLen {
		if err := s.f.Truncate(fl); err != nil {
			return fmt.Errorf("%s: extend: %w", s.path, err)
		}
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.hdr.RefcountTableOffset = uint64(start << c.bits)
	s.hdr.RefcountTableClusters = uint32(tc)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	// The writer's view of the refcounts starts afresh.
	if err := s.rc.Invalidate(); err != nil {
		return err
	}
	rc, err := s.loadRefcounts()
	if err != nil {
		return err
	}
	w.rc = rc
	w.end = max(w.end, next)
	w.freeHint = 0
	if fl := next << c.bits; fl > w.fileLen {
		w.fileLen = fl
	}
	w.noteUsed(next - 1)
	return nil
}
