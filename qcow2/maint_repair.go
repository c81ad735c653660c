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
func (ck *checker) applyFixes(fix checkFix) error {
	w := ck.img.w
	if ck.outside && fix&fixErrors != 0 {
		ck.rebuild = true
	}
	if ck.rebuild {
		if fix&fixErrors == 0 {
			ck.msg("ERROR need to rebuild refcount structures")
			ck.res.CheckErrors++
			return nil
		}
		ck.msg("Rebuilding refcount structure")
		if err := ck.rebuildRefcounts(); err != nil {
			return err
		}
	} else if len(ck.fixes) > 0 {
		for _, f := range ck.fixes {
			if err := w.setRefcount(f.cl, f.rc); err != nil {
				return err
			}
		}
		if err := w.flushLocked(); err != nil {
			return err
		}
	}
	// COPIED checks read the refcounts as they are now.
	return ck.loadRefStructure()
}

// setL2Word rewrites the first word of entry j of the L2 table at off
// in place, through the L2 cache.
func (ck *checker) setL2Word(off, j int64, word uint64) error {
	s := ck.s
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
func (ck *checker) finishRepair(fix checkFix) error {
	s := ck.s
	if fix == 0 || ck.res.CheckErrors != 0 || ck.res.Corruptions != 0 {
		return nil
	}
	bits := uint64(IncompatDirty | IncompatCorrupt)
	if s.hdr.IncompatibleFeatures&bits == 0 {
		return nil
	}
	s.hdr.IncompatibleFeatures &^= bits
	if err := ck.img.w.writeHeader(); err != nil {
		return err
	}
	return s.syncMeta()
}

// rebuildRefcounts replaces the refcount structure with a new one built
// from the counted references, placed past the end of the file: blocks
// written first, then the table, then the header switched to it. The old
// table and blocks are simply no longer referenced.
func (ck *checker) rebuildRefcounts() error {
	s := ck.s
	w := ck.img.w
	// References of everything but the refcount structure itself.
	q := newChecker(ck.img, nil)
	q.noRef = true
	q.fileLen = ck.fileLen
	q.nb = ck.nb
	q.table, q.blocks = ck.table, map[uint64][]byte{}
	if err := q.countAll(); err != nil {
		return err
	}
	counts := q.counts
	used := func(bi int64) bool {
		for cl := bi * ck.perBlock; cl < min((bi+1)*ck.perBlock, int64(len(counts))); cl++ {
			if counts[cl] != 0 {
				return true
			}
		}
		return false
	}
	start := max(q.nb, (ck.fileLen+ck.cs-1)>>ck.bits)
	tc, nb := int64(1), int64(0)
	for {
		total := start + tc + nb
		ranges := (total + ck.perBlock - 1) / ck.perBlock
		blocks := int64(0)
		for bi := int64(0); bi < ranges; bi++ {
			if used(bi) || (bi+1)*ck.perBlock > start {
				blocks++
			}
		}
		ntc := max(1, (ranges*8+ck.cs-1)/ck.cs)
		if blocks == nb && ntc == tc {
			break
		}
		tc, nb = max(tc, ntc), max(nb, blocks)
	}
	if tc*ck.cs > maxRefTableBytes {
		return fmt.Errorf("%s: rebuilt refcount table would exceed %d bytes", s.path, maxRefTableBytes)
	}
	total := start + tc + nb
	for int64(len(counts)) < total {
		counts = append(counts, make([]uint32, total-int64(len(counts)))...)
	}
	for cl := start; cl < total; cl++ {
		counts[cl] = 1
	}
	table := make([]uint64, tc*ck.cs/8)
	next := start + tc
	ranges := (total + ck.perBlock - 1) / ck.perBlock
	blk := make([]byte, ck.cs)
	for bi := int64(0); bi < ranges; bi++ {
		if !used(bi) {
			continue
		}
		table[bi] = uint64(next << ck.bits)
		clear(blk)
		for i := int64(0); i < ck.perBlock; i++ {
			if cl := bi*ck.perBlock + i; cl < int64(len(counts)) {
				setRefcountEntry(blk, i, ck.order, uint64(counts[cl]))
			}
		}
		if _, err := s.f.WriteAt(blk, next<<ck.bits); err != nil {
			return fmt.Errorf("%s: write refcount block: %w", s.path, err)
		}
		next++
	}
	raw := make([]byte, tc*ck.cs)
	for i, e := range table {
		binary.BigEndian.PutUint64(raw[i*8:], e)
	}
	if _, err := s.f.WriteAt(raw, start<<ck.bits); err != nil {
		return fmt.Errorf("%s: write refcount table: %w", s.path, err)
	}
	if fl := next << ck.bits; fl > ck.fileLen {
		if err := s.f.Truncate(fl); err != nil {
			return fmt.Errorf("%s: extend: %w", s.path, err)
		}
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.hdr.RefcountTableOffset = uint64(start << ck.bits)
	s.hdr.RefcountTableClusters = uint32(tc)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	// The writer's view of the refcounts starts afresh.
	if err := s.refBlocks.Invalidate(); err != nil {
		return err
	}
	rc, err := s.loadRefcounts()
	if err != nil {
		return err
	}
	w.refTable = rc
	w.end = max(w.end, next)
	w.freeHint = 0
	if fl := next << ck.bits; fl > w.fileLen {
		w.fileLen = fl
	}
	w.noteUsed(next - 1)
	return nil
}
