// Offline resize (qemu-img resize), plus the two allocation helpers the
// maintenance operations share: runs of contiguous clusters for tables, and
// growing the active L1 table.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Resize changes the virtual size of the image at path. Growing needs no
// flag; shrinking needs shrink=true and drops every cluster past the new end.
// Like QEMU, the new size must be a multiple of 512 and a version 2 image
// with internal snapshots cannot be resized (its snapshots do not record
// their own disk size).
func Resize(path string, newSize int64, shrink bool) error {
	if newSize < 0 || newSize%512 != 0 {
		return fmt.Errorf("%s: new size %d is not a non-negative multiple of 512", path, newSize)
	}
	m, err := openMaint(path)
	if err != nil {
		return err
	}
	return m.close(m.resize(newSize, shrink))
}

func (m *maint) resize(newSize int64, shrink bool) error {
	img, s := m.img, m.s
	old := img.size
	if newSize == old {
		return nil
	}
	if len(s.snaps) > 0 && s.hdr.Version < 3 {
		return fmt.Errorf("%s: can't resize a v2 image which has snapshots", s.path)
	}
	if s.hasValidBitmaps() {
		return fmt.Errorf("%s: image has persistent dirty bitmaps (%s), which this tool cannot resize; use qemu-img resize, or remove them first (qemu-img bitmap --remove)", s.path, strings.Join(s.bitmapNames(), ", "))
	}
	if newSize < old && !shrink {
		return fmt.Errorf("%s: shrinking from %d to %d bytes deletes data; use shrink (--shrink) to do it", s.path, old, newSize)
	}
	if need := s.g.l1EntriesFor(newSize); need*8 > maxL1Bytes {
		return fmt.Errorf("%s: size %d needs an L1 table larger than QEMU's limit of %d bytes", s.path, newSize, maxL1Bytes)
	}
	if newSize > old {
		return m.grow(newSize)
	}
	return m.shrink(newSize)
}

// grow raises the virtual size. The bytes between the old end and the end of
// its cluster are zeroed (they may hold stale data from an earlier shrink),
// and so is the new area where a longer backing file would show through
// (as QEMU does).
func (m *maint) grow(newSize int64) error {
	img, s, w := m.img, m.s, m.w
	old := img.size
	if err := w.growL1(s.g.l1EntriesFor(newSize)); err != nil {
		return err
	}
	if err := m.setSize(newSize); err != nil {
		return err
	}
	if s.dataF != s.f {
		if err := truncateAtLeast(s.dataF, s.dataFilePath, newSize); err != nil {
			return err
		}
	}
	zeroEnd := min(newSize, s.g.alignUp(old))
	if s.backing != nil {
		zeroEnd = max(zeroEnd, min(newSize, s.backing.Size()))
	}
	if zeroEnd > old {
		return m.unlocked(func() error { return img.WriteZeroes(old, zeroEnd-old) })
	}
	return nil
}

// shrink lowers the virtual size: clusters wholly past the new end are
// deallocated (L2 tables past it dropped), the file is cut after its last
// used cluster.
func (m *maint) shrink(newSize int64) error {
	img, s, w := m.img, m.s, m.w
	g := &s.g
	firstGone := g.alignUp(newSize) >> g.clusterBits // first guest cluster dropped
	// Zero the tail of the last kept cluster so that a later grow cannot
	// expose what lay past the new end.
	if tail := min(img.size, firstGone<<g.clusterBits); tail > newSize {
		if err := m.unlocked(func() error { return img.WriteZeroes(newSize, tail-newSize) }); err != nil {
			return err
		}
	}
	keepL1 := g.l1EntriesFor(newSize)
	// The L2 table that straddles the new end: drop its entries past it.
	if firstGone%g.l2Entries != 0 && keepL1-1 < int64(len(img.l1)) && img.l1[keepL1-1]&l1EntryOffsetMask != 0 {
		for c := firstGone; c < keepL1*g.l2Entries; c++ {
			e, err := img.lookup(c)
			if err != nil {
				return err
			}
			if e == (l2Entry{}) {
				continue
			}
			if err := w.setL2(c, l2Entry{}); err != nil {
				return err
			}
			w.freeEntry(e)
		}
	}
	// Whole L2 tables past the end.
	for i := keepL1; i < int64(len(img.l1)); i++ {
		if err := w.dropL1Entry(i); err != nil {
			return err
		}
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	if err := m.setSize(newSize); err != nil {
		return err
	}
	if s.dataF != s.f {
		if err := s.dataF.Truncate(newSize); err != nil {
			return fmt.Errorf("truncate external data file %s: %w", s.dataFilePath, err)
		}
	}
	return w.truncateToUsed()
}

// setSize writes the new virtual size into the header.
func (m *maint) setSize(size int64) error {
	m.s.hdr.Size = uint64(size)
	m.img.size = size
	if err := m.w.writeHeader(); err != nil {
		return err
	}
	return m.s.syncMeta()
}

// truncateToUsed cuts the image file after its last cluster with a non-zero
// refcount (QEMU does the same after a shrink).
func (w *writer) truncateToUsed() error {
	s := w.img.s
	fsize, err := s.fileSize()
	if err != nil {
		return err
	}
	last := s.g.alignUp(fsize)>>s.g.clusterBits - 1
	for ; last > 0; last-- {
		rc, err := w.refcount(last)
		if err != nil {
			return err
		}
		if rc > 0 {
			break
		}
	}
	end := (last + 1) << s.g.clusterBits
	if end >= fsize {
		return nil
	}
	if err := s.f.Truncate(end); err != nil {
		return fmt.Errorf("truncate %s: %w", s.path, err)
	}
	w.end = last + 1
	w.fileLen = end
	w.zeroFrom = min(w.zeroFrom, last+1)
	if w.freeHint > last+1 {
		w.freeHint = last + 1
	}
	return nil
}

func truncateAtLeast(f hostFile, name string, size int64) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if st.Size() >= size {
		return nil
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("extend %s: %w", name, err)
	}
	return nil
}

// growL1 makes the active L1 table hold at least n entries: a new table is
// written to fresh clusters, the header switched over to it, and the old
// table freed. Caller holds s.mu.
func (w *writer) growL1(n int64) error {
	img := w.img
	s := img.s
	cur := int64(len(img.l1))
	if n <= cur {
		return nil
	}
	if n*8 > maxL1Bytes {
		return fmt.Errorf("%s: L1 table of %d entries exceeds QEMU's limit of %d bytes", s.path, n, maxL1Bytes)
	}
	// Everything the current L1 entries point to must be on disk before a
	// new table refers to it.
	if err := w.flushLocked(); err != nil {
		return err
	}
	cs := s.g.clusterSize
	clusters := (n*8 + cs - 1) / cs
	start, err := w.allocRun(clusters)
	if err != nil {
		return err
	}
	l1 := make([]uint64, n)
	copy(l1, img.l1)
	raw := make([]byte, clusters*cs)
	for i, e := range l1 {
		binary.BigEndian.PutUint64(raw[i*8:], e)
	}
	off := start << s.g.clusterBits
	if _, err := s.f.WriteAt(raw, off); err != nil {
		return fmt.Errorf("write L1 table of %s: %w", s.path, err)
	}
	// The new table's refcounts and content, then the header.
	if err := w.flushLocked(); err != nil {
		return err
	}
	oldOff, oldClusters := img.l1Offset, (cur*8+cs-1)/cs
	s.hdr.L1Size = uint32(n)
	s.hdr.L1TableOffset = uint64(off)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	img.l1 = l1
	img.l1Offset = off
	clear(w.l1Dirty)
	if oldOff != 0 && cur > 0 {
		w.deferFree(oldOff>>s.g.clusterBits, oldClusters)
	}
	return nil
}

// allocRun reserves n contiguous clusters past everything allocated, with
// refcount 1, and returns the first. Refcount blocks missing for the range
// are created in front of it (a run may be longer than one block's reach),
// durable before the refcount table points at them. Caller holds s.mu.
func (w *writer) allocRun(n int64) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	s := w.img.s
	r := w.refTable
	hasBlock := func(bi int64) bool { return bi < int64(len(r.table)) && r.table[bi]&refTableOffsetMask != 0 }
	for {
		start := w.end
		// Skip clusters past the file end that a stray refcount marks used.
		busy := int64(-1)
		for cl := start; cl < start+n; cl++ {
			if !hasBlock(cl / r.perBlock) {
				continue
			}
			rc, err := w.refcount(cl)
			if err != nil {
				return 0, err
			}
			if rc != 0 {
				busy = cl
			}
		}
		if busy >= 0 {
			w.end = busy + 1
			continue
		}
		// m new blocks go at [start, start+m), the run after them; m is the
		// number of block ranges [start, start+m+n) touches that lack one.
		var missing []int64
		for m := int64(0); ; {
			missing = missing[:0]
			for bi := start / r.perBlock; bi <= (start+m+n-1)/r.perBlock; bi++ {
				if !hasBlock(bi) {
					missing = append(missing, bi)
				}
			}
			// The count only grows with the range: this converges.
			if int64(len(missing)) == m {
				break
			}
			m = int64(len(missing))
		}
		m := int64(len(missing))
		end := start + m + n
		if last := (end - 1) / r.perBlock; last >= int64(len(r.table)) {
			// The table moves past everything (w.end grows); start over.
			if err := w.growRefcountTable(last, end-1); err != nil {
				return 0, err
			}
			continue
		}
		for k, bi := range missing {
			off := uint64(start+int64(k)) << s.g.clusterBits
			blk, err := s.refBlocks.Put(off)
			if err != nil {
				return 0, err
			}
			s.refBlocks.MarkDirty(blk)
			r.table[bi] = off
			r.tableDirty[bi] = true
		}
		for k := int64(0); k < int64(len(missing)); k++ {
			if err := w.setRefcount(start+k, 1); err != nil {
				return 0, err
			}
		}
		runStart := start + m
		for cl := runStart; cl < runStart+n; cl++ {
			if err := w.setRefcount(cl, 1); err != nil {
				return 0, err
			}
		}
		if len(missing) > 0 {
			if err := s.refBlocks.Flush(); err != nil {
				return 0, err
			}
			if err := s.syncMeta(); err != nil {
				return 0, err
			}
			if err := w.writeRefcountTableEntries(); err != nil {
				return 0, err
			}
			if err := s.syncMeta(); err != nil {
				return 0, err
			}
		}
		return runStart, nil
	}
}
