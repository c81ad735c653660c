package qcow2

import (
	"encoding/binary"
	"fmt"
)

// refcountCounter accumulates the reference count of every host cluster of
// the image file by walking all metadata, as `qemu-img check` does.
type refcountCounter struct {
	s      *shared
	counts []uint32 // per host cluster
}

func (rc *refcountCounter) addRange(off, length int64) {
	if length <= 0 {
		return
	}
	g := &rc.s.g
	first := off >> g.clusterBits
	last := (off + length - 1) >> g.clusterBits
	for cl := first; cl <= last; cl++ {
		for int64(len(rc.counts)) <= cl {
			rc.counts = append(rc.counts, make([]uint32, max(len(rc.counts), 1024))...)
		}
		rc.counts[cl]++
	}
}

// countAll walks header, refcount structure, every L1/L2 table (active and
// snapshots), the snapshot table and the bitmap directory.
func (s *shared) countReferences(activeL1 []uint64, table []uint64) (*refcountCounter, error) {
	g := &s.g
	cs := g.clusterSize
	rc := &refcountCounter{s: s}
	rc.addRange(0, cs) // header cluster
	rc.addRange(int64(s.hdr.RefcountTableOffset), int64(s.hdr.RefcountTableClusters)*cs)
	for _, b := range table {
		if off := int64(b & refTableOffsetMask); off != 0 {
			rc.addRange(off, 1)
		}
	}
	l1s := [][]uint64{activeL1}
	rc.addRange(int64(s.hdr.L1TableOffset), int64(len(activeL1))*8)
	if len(s.snaps) > 0 {
		rc.addRange(int64(s.hdr.SnapshotsOffset), int64(len(encodeSnapshotTable(s.snaps))))
		for _, sn := range s.snaps {
			if sn.badL1 {
				continue // unreadable: nothing to count (as QEMU's check skips it)
			}
			rc.addRange(int64(sn.L1TableOffset), int64(sn.L1Size)*8)
			l1, err := s.readL1(int64(sn.L1TableOffset), int64(sn.L1Size))
			if err != nil {
				return nil, err
			}
			l1s = append(l1s, l1)
		}
	}
	l2 := make([]byte, cs)
	for _, l1 := range l1s {
		for _, e := range l1 {
			off := int64(e & l1EntryOffsetMask)
			if off == 0 {
				continue
			}
			rc.addRange(off, 1)
			if _, err := s.f.ReadAt(l2, off); err != nil {
				return nil, fmt.Errorf("read L2 table at %#x: %w", off, err)
			}
			for i := int64(0); i < g.l2Entries; i++ {
				word := binary.BigEndian.Uint64(l2[i*g.l2EntrySize:])
				if word&oflagCompressed != 0 {
					host, length := compressedDescriptor(word, g.clusterBits)
					start := host &^ 511
					rc.addRange(start, (length+host&511+511)/512*512)
					continue
				}
				if h := int64(word & l2EntryOffsetMask); h != 0 && !g.dataFile {
					rc.addRange(h, 1)
				}
			}
		}
	}
	// Persistent bitmaps: directory, bitmap tables and their data clusters.
	if bd, ok := s.bitmapDirectory(); ok {
		be := binary.BigEndian
		dirSize, dirOff := bd.size, bd.offset
		fsize, err := s.fileSize()
		if err != nil {
			return nil, err
		}
		if dirSize > 64<<20 || dirOff < 0 || dirOff > fsize || dirSize > fsize-dirOff {
			return nil, fmt.Errorf("bitmap directory at %#x (+%d bytes) is invalid", dirOff, dirSize)
		}
		rc.addRange(dirOff, dirSize)
		dir := make([]byte, dirSize)
		if _, err := s.f.ReadAt(dir, dirOff); err != nil {
			return nil, fmt.Errorf("read bitmap directory: %w", err)
		}
		for off := int64(0); off+24 <= dirSize; {
			tOff := int64(be.Uint64(dir[off:]))
			tSize := int64(be.Uint32(dir[off+8:]))
			nameSize := int64(be.Uint16(dir[off+18:]))
			extraSize := int64(be.Uint32(dir[off+20:]))
			if tOff < 0 || tOff > fsize || tSize*8 > fsize-tOff {
				return nil, fmt.Errorf("bitmap table at %#x (%d entries) lies past the end of the file", tOff, tSize)
			}
			rc.addRange(tOff, tSize*8)
			tbl := make([]byte, tSize*8)
			if _, err := s.f.ReadAt(tbl, tOff); err != nil {
				return nil, fmt.Errorf("read bitmap table: %w", err)
			}
			for i := int64(0); i < tSize; i++ {
				if d := int64(be.Uint64(tbl[i*8:]) & l2EntryOffsetMask); d != 0 {
					rc.addRange(d, 1)
				}
			}
			off = (off + 24 + extraSize + nameSize + 7) &^ 7
		}
	}
	return rc, nil
}

// rebuildRefcounts recomputes every refcount of a dirty image (lazy
// refcounts left stale by an unclean shutdown) before the first allocation,
// writes them, and clears the dirty bit. Caller holds s.mu.
func (w *writer) rebuildRefcounts() error {
	s := w.img.s
	r := w.rc
	cnt, err := s.countReferences(w.img.l1, r.table)
	if err != nil {
		return err
	}
	counts := cnt.counts
	w.end = max(w.end, int64(len(counts)))
	get := func(cl int64) uint64 {
		if cl < int64(len(counts)) {
			return uint64(counts[cl])
		}
		return 0
	}
	// Every range holding a referenced cluster needs a refcount block; new
	// blocks go at the end of the file (and count themselves).
	for {
		changed := false
		for cl := int64(0); cl < int64(len(counts)); cl += r.perBlock {
			bi := cl / r.perBlock
			used := false
			for c := cl; c < min(cl+r.perBlock, int64(len(counts))); c++ {
				if counts[c] != 0 {
					used = true
					break
				}
			}
			if !used || bi < int64(len(r.table)) && r.table[bi] != 0 {
				continue
			}
			if bi >= int64(len(r.table)) {
				if err := w.growRefcountTable(bi, w.end-1); err != nil {
					return err
				}
				// The grown table's clusters and blocks are new references.
				cnt.addRange(r.tableOffset, int64(len(r.table))*8)
				counts = cnt.counts
			}
			if r.table[bi] == 0 {
				b := w.end
				if _, err := s.rc.Put(uint64(b << s.g.clusterBits)); err != nil {
					return err
				}
				r.table[bi] = uint64(b << s.g.clusterBits)
				r.tableDirty[bi] = true
				w.noteUsed(b)
				w.end++
				cnt.addRange(b<<s.g.clusterBits, 1)
				counts = cnt.counts
			}
			changed = true
		}
		if !changed {
			break
		}
	}
	// Count again with the final table (growth moved it and added blocks);
	// the old table's deferred free is moot: the recount already omits it.
	w.pending = nil
	if cnt, err = s.countReferences(w.img.l1, r.table); err != nil {
		return err
	}
	counts = cnt.counts
	// Rewrite every block from the counts.
	for bi, b := range r.table {
		off := b & refTableOffsetMask
		if off == 0 {
			continue
		}
		blk, err := s.rc.Get(off)
		if err != nil {
			return err
		}
		base := int64(bi) * r.perBlock
		for i := int64(0); i < r.perBlock; i++ {
			v := get(base + i)
			if v > r.maxRefcount {
				return fmt.Errorf("cluster %#x: refcount %d exceeds %d bits", (base+i)<<s.g.clusterBits, v, 1<<r.order)
			}
			setRefcountEntry(blk.Data, i, r.order, v)
		}
		s.rc.MarkDirty(blk)
	}
	if err := s.rc.Flush(); err != nil {
		return err
	}
	if err := w.writeRefcountTableEntries(); err != nil {
		return err
	}
	if err := w.extendFile(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.hdr.IncompatibleFeatures &^= IncompatDirty
	if err := w.writeHeader(); err != nil {
		return err
	}
	s.warn(fmt.Sprintf("%s: image was not closed cleanly (dirty, lazy refcounts); refcounts rebuilt", s.path))
	return s.syncMeta()
}
