// Allocation and mapping updates of the write path: data clusters and new
// L2 tables (with the L1 entry that points at one), the L2 entry update
// (setL2), growth of the file to cover what is allocated, and frees deferred
// until the mapping that dropped them is durable. Caller holds s.mu.

package qcow2

import (
	"encoding/binary"
	"fmt"
)

type pendingFree struct {
	cluster int64
	count   int64 // number of clusters
}

// allocDataCluster returns a host offset for guest cluster c's data. Caller
// holds s.mu.
func (w *writer) allocDataCluster(c int64) (host int64, fresh bool, err error) {
	s := w.img.s
	if s.dataF != s.f {
		// External data file: guest offset == host offset, no refcounts.
		return c << s.g.clusterBits, false, nil
	}
	cl, fresh, err := w.allocCluster()
	if err != nil {
		return 0, false, err
	}
	return cl << s.g.clusterBits, fresh, nil
}

// releaseDataCluster undoes allocDataCluster after a failed data write (the
// cluster was never referenced, so it is freed at once).
func (w *writer) releaseDataCluster(host int64) {
	s := w.img.s
	if s.dataF != s.f {
		return
	}
	cl := host >> s.g.clusterBits
	if err := w.setRefcount(cl, 0); err == nil && cl < w.freeHint {
		w.freeHint = cl
	}
}

// allocCluster finds a free host cluster in the image file and sets its
// refcount to 1; fresh reports a cluster known to read as zeros. Caller
// holds s.mu.
func (w *writer) allocCluster() (cl int64, fresh bool, err error) {
	r := w.refTable
	cl = w.freeHint
	for {
		if cl >= w.end {
			break
		}
		bi := cl / r.perBlock
		if bi >= int64(len(r.table)) || r.table[bi] == 0 {
			break // no block: the whole range is free
		}
		rc, err := w.refcount(cl)
		if err != nil {
			return 0, false, err
		}
		if rc == 0 && cl != 0 {
			break
		}
		cl++
	}
	fresh = cl >= w.zeroFrom
	if err := w.setRefcount(cl, 1); err != nil {
		return 0, false, err
	}
	w.freeHint = cl + 1
	return cl, fresh, nil
}

// noteUsed records that host cluster cl now holds something: it is no
// longer known to read as zeros.
func (w *writer) noteUsed(cl int64) {
	if cl >= w.zeroFrom {
		w.zeroFrom = cl + 1
	}
}

// deferFree queues a refcount decrement for n clusters from cl; it is
// applied on the next Flush, once no on-disk L2 entry can still reference
// them. Caller holds s.mu.
func (w *writer) deferFree(cl, n int64) {
	if k := len(w.pending) - 1; k >= 0 && w.pending[k].cluster+w.pending[k].count == cl && n == 1 {
		w.pending[k].count++
		return
	}
	w.pending = append(w.pending, pendingFree{cluster: cl, count: n})
}

// freeEntry drops the reference an overwritten L2 entry held.
func (w *writer) freeEntry(e l2Entry) {
	s := w.img.s
	g := &s.g
	if e.compressed() {
		host, length := compressedDescriptor(e.word, g.clusterBits)
		start := host &^ 511
		// The descriptor's sector count: the data spans [start, start+n*512).
		n := (length + host&511 + 511) / 512 * 512
		first := start >> g.clusterBits
		last := (start + n - 1) >> g.clusterBits
		for cl := first; cl <= last; cl++ {
			w.deferFree(cl, 1)
		}
		return
	}
	if h := e.hostOffset(); h != 0 && s.dataF == s.f {
		w.deferFree(h>>g.clusterBits, 1)
	}
}

// l2SliceFor returns the cached slice of a writable L2 table for guest cluster c
// and the entry's offset inside it, allocating or copying the table as
// needed. Caller holds s.mu.
func (w *writer) l2SliceFor(c int64) (key uint64, in int64, err error) {
	img := w.img
	s := img.s
	g := &s.g
	i := g.l1Index(c)
	if i >= int64(len(img.l1)) {
		return 0, 0, s.corruptf("guest cluster %d beyond the L1 table", c)
	}
	l1e := img.l1[i]
	old := int64(l1e & l1EntryOffsetMask)
	if old == 0 || l1e&oflagCopied == 0 {
		cl, fresh, err := w.allocCluster()
		if err != nil {
			return 0, 0, err
		}
		newOff := cl << g.clusterBits
		// A new, empty table in a fresh cluster (past the old end of the
		// file) already reads as zeros once the file covers it: only the
		// slices that get entries need writing, not the whole table.
		zeroOnDisk := old == 0 && fresh
		if zeroOnDisk {
			if err := w.coverCluster(cl); err != nil {
				return 0, 0, err
			}
		}
		slice := l2SliceSize(*g)
		for so := int64(0); so < g.clusterSize; so += slice {
			var src []byte
			if old != 0 {
				blk, err := s.l2c.Get(uint64(old + so))
				if err != nil {
					return 0, 0, err
				}
				src = append([]byte(nil), blk.Data...)
			}
			nb, err := s.l2c.Put(uint64(newOff + so))
			if err != nil {
				return 0, 0, err
			}
			copy(nb.Data, src)
			if !zeroOnDisk {
				s.l2c.MarkDirty(nb)
			}
		}
		if old != 0 {
			// The old table stays with the snapshots that share it.
			w.deferFree(old>>g.clusterBits, 1)
		}
		img.l1[i] = uint64(newOff) | oflagCopied
		w.l1Dirty[i] = true
		old = newOff
	}
	pos := g.l2Index(c) * g.l2EntrySize
	slice := l2SliceSize(*g)
	return uint64(old + pos/slice*slice), pos % slice, nil
}

// coverCluster extends the image file (sparsely) to include host cluster cl.
func (w *writer) coverCluster(cl int64) error {
	s := w.img.s
	end := (cl + 1) << s.g.clusterBits
	if end <= w.fileLen {
		return nil
	}
	// Data writes (outside the lock) may have grown the file already;
	// never shrink it. They only touch clusters allocated before cl, all
	// below end, so nothing can land past end meanwhile.
	size, err := s.fileSize()
	if err != nil {
		return err
	}
	if size < end {
		if err := s.f.Truncate(end); err != nil {
			return fmt.Errorf("extend %s: %w", s.path, err)
		}
		size = end
	}
	w.fileLen = size
	return nil
}

// setL2 stores entry e for guest cluster c. Caller holds s.mu.
func (w *writer) setL2(c int64, e l2Entry) error {
	s := w.img.s
	key, in, err := w.l2SliceFor(c)
	if err != nil {
		return err
	}
	blk, err := s.l2c.Get(key)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint64(blk.Data[in:], e.word)
	if s.g.l2EntrySize == 16 {
		binary.BigEndian.PutUint64(blk.Data[in+8:], e.bitmap)
	}
	s.l2c.MarkDirty(blk)
	return nil
}

// hasHost reports whether a (non-compressed) entry owns a host cluster.
// Offset 0 is a valid location in an external data file, where COPIED tells
// allocated from unallocated.
func (w *writer) hasHost(e l2Entry) bool {
	return e.hostOffset() != 0 || w.img.s.g.dataFile && e.copied()
}
