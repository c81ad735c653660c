// Rebuilding the refcounts of a dirty image (lazy refcounts after an
// unclean shutdown) with check's reference walker before the first
// allocation.

package qcow2

import (
	"errors"
	"fmt"
)

// walkReferences counts every reference of the image with check's walker
// (refwalk.go). The refcount table is the writer's: in memory, it may name
// blocks not yet on disk, all below w.end. Metadata the walk finds
// inconsistent is an error: refcounts rebuilt from it would be wrong and
// writes would spread the damage; check -r all repairs it first.
func (w *writer) walkReferences() (*refWalker, error) {
	s := w.img.s
	fsize, err := s.fileSize()
	if err != nil {
		return nil, err
	}
	rw := newRefWalker(s, nil)
	rw.setFileLen(max(fsize, w.end<<s.g.clusterBits))
	rw.table = w.refTable.table
	rw.skipBadSnapshots = true
	if err := rw.countAll(); err != nil {
		var fe *FormatError
		if errors.As(err, &fe) && fe.File == s.path {
			err = errors.New(fe.Msg) // the caller names the file
		}
		return nil, err
	}
	if n := rw.res.Corruptions + rw.res.CheckErrors; n > 0 {
		first := ""
		if len(rw.res.Messages) > 0 {
			first = ": " + rw.res.Messages[0]
		}
		return nil, fmt.Errorf("metadata inconsistent, %d problem(s)%s; repair with qcow2fs check -r all", n, first)
	}
	return &rw, nil
}

// rebuildRefcounts recomputes every refcount of a dirty image (lazy
// refcounts left stale by an unclean shutdown) before the first allocation,
// writes them, and clears the dirty bit. Caller holds s.mu.
//
// The bitmaps count while the autoclear bit says they are valid (the
// caller may clear it afterwards; their clusters then leak, as with any
// program without bitmap support).
func (w *writer) rebuildRefcounts() error {
	s := w.img.s
	r := w.refTable
	cnt, err := w.walkReferences()
	if err != nil {
		return err
	}
	w.end = max(w.end, cnt.nb)
	// Every range holding a referenced cluster needs a refcount block; new
	// blocks go at the end of the file (and count themselves).
	used := func(first int64) bool {
		for c := first; c < min(first+r.perBlock, int64(len(cnt.counts))); c++ {
			if cnt.counts[c] != 0 {
				return true
			}
		}
		return false
	}
	for {
		changed := false
		for cl := int64(0); cl < int64(len(cnt.counts)); cl += r.perBlock {
			bi := cl / r.perBlock
			if !used(cl) || bi < int64(len(r.table)) && r.table[bi] != 0 {
				continue
			}
			if bi >= int64(len(r.table)) {
				if err := w.growRefcountTable(bi, w.end-1); err != nil {
					return err
				}
				// The grown table's clusters are new references.
				cs := s.g.clusterSize
				for c := r.tableOffset / cs; c < (r.tableOffset+int64(len(r.table))*8+cs-1)/cs; c++ {
					cnt.addCluster(c)
				}
			}
			if r.table[bi] == 0 {
				b := w.end
				if _, err := s.refBlocks.Put(uint64(b << s.g.clusterBits)); err != nil {
					return err
				}
				r.table[bi] = uint64(b << s.g.clusterBits)
				r.tableDirty[bi] = true
				w.noteUsed(b)
				w.end++
				cnt.addCluster(b)
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
	if cnt, err = w.walkReferences(); err != nil {
		return err
	}
	get := cnt.count
	// Rewrite every block from the counts.
	for bi, b := range r.table {
		off := b & refTableOffsetMask
		if off == 0 {
			continue
		}
		blk, err := s.refBlocks.Get(off)
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
		s.refBlocks.MarkDirty(blk)
	}
	if err := s.refBlocks.Flush(); err != nil {
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
