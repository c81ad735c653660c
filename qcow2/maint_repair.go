// Repair, the second half of check (qcow2fs check -r leaks|all): apply the
// refcount differences the reference walk found, fix COPIED flags, and
// rebuild a refcount structure that cannot be trusted.

package qcow2

import (
	"encoding/binary"
	"fmt"
)

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
	q := newChecker(c.img, nil)
	q.noRef = true
	q.fileLen = c.fileLen
	q.nb = c.nb
	q.table, q.blocks = c.table, map[uint64][]byte{}
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
