// Reference-count updates over whole L1 trees, for the maintenance
// operations that add or drop a tree (snapshots, commit, repair).
//
// Refcount semantics are QEMU's: an L2 table's refcount is the number of L1
// tables (active and snapshots) pointing to it, a data cluster's the number
// of L1 trees through which it is reached; QCOW_OFLAG_COPIED on an active L1
// or L2 entry means refcount == 1. Increments may reach the disk at any
// time (a crash leaks); decrements wait until the structure that dropped the
// references is durable (writer.deferFree, applied by flushLocked).

package qcow2

import (
	"encoding/binary"
	"fmt"
)

// forEachL2 walks the L2 table at off through the L2 cache and calls fn for
// each entry with the cached slice holding it, the entry's offset in the
// slice and its index in the table. fn may modify the entry in place and
// then returns dirty.
func (w *writer) forEachL2(off int64, fn func(data []byte, in, idx int64, e l2Entry) (dirty bool, err error)) error {
	s := w.img.s
	g := &s.g
	slice := l2SliceSize(*g)
	for so := int64(0); so < g.clusterSize; so += slice {
		blk, err := s.l2c.Get(uint64(off + so))
		if err != nil {
			return fmt.Errorf("%s: read L2 table at %#x: %w", s.path, off, err)
		}
		dirty := false
		for in := int64(0); in < slice; in += g.l2EntrySize {
			e := l2Entry{word: binary.BigEndian.Uint64(blk.Data[in:])}
			if g.l2EntrySize == 16 {
				e.bitmap = binary.BigEndian.Uint64(blk.Data[in+8:])
			}
			d, err := fn(blk.Data, in, (so+in)/g.l2EntrySize, e)
			if err != nil {
				return err
			}
			dirty = dirty || d
		}
		if dirty {
			s.l2c.MarkDirty(blk)
		}
	}
	return nil
}

// l2TableOf returns the L2 table offset of an L1 entry (0: none), checking
// its alignment.
func (s *fileState) l2TableOf(e uint64, i int) (int64, error) {
	off := int64(e & l1EntryOffsetMask)
	if off&(s.g.clusterSize-1) != 0 {
		return 0, s.corruptf("L1 entry %d: L2 table offset %#x is not cluster-aligned", i, off)
	}
	return off, nil
}

// entryRefs calls fn for every host cluster of the image file that L2
// entry e holds a reference on: a data cluster (also a preallocated zero
// cluster), or every cluster compressed data spans. Clusters in an external
// data file carry no refcounts.
func (s *fileState) entryRefs(e l2Entry, fn func(cl int64) error) error {
	g := &s.g
	if e.compressed() {
		host, length := compressedDescriptor(e.word, g.clusterBits)
		start := host &^ 511
		n := (length + host&511 + 511) / 512 * 512
		for cl := start >> g.clusterBits; cl <= (start+n-1)>>g.clusterBits; cl++ {
			if err := fn(cl); err != nil {
				return err
			}
		}
		return nil
	}
	h := e.hostOffset()
	if h == 0 || g.dataFile {
		return nil
	}
	if h&(g.clusterSize-1) != 0 {
		return s.corruptf("L2 entry %#x: host offset %#x is not cluster-aligned", e.word, h)
	}
	return fn(h >> g.clusterBits)
}

// walkTree calls fn once per reference the tree of l1 holds: each L2 table,
// and each host cluster reached through it.
func (w *writer) walkTree(l1 []uint64, fn func(cl int64) error) error {
	s := w.img.s
	for i, e := range l1 {
		off, err := s.l2TableOf(e, i)
		if err != nil || off == 0 {
			if err != nil {
				return err
			}
			continue
		}
		if err := fn(off >> s.g.clusterBits); err != nil {
			return err
		}
		err = w.forEachL2(off, func(_ []byte, _, _ int64, le l2Entry) (bool, error) {
			return false, s.entryRefs(le, fn)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// incTree adds one reference to everything the tree of l1 reaches.
func (w *writer) incTree(l1 []uint64) error {
	return w.walkTree(l1, func(cl int64) error {
		rc, err := w.refcount(cl)
		if err != nil {
			return err
		}
		return w.setRefcount(cl, rc+1)
	})
}

// decTree queues one reference less on everything the tree of l1 reaches
// (applied by the next flush).
func (w *writer) decTree(l1 []uint64) error {
	return w.walkTree(l1, func(cl int64) error {
		w.deferFree(cl, 1)
		return nil
	})
}

// checkTreeOverflow refuses, before anything changes, an increment over the
// tree of l1 that would overflow narrow refcounts (refcount_bits < 16; with
// wider ones that takes more snapshots than QEMU allows).
func (w *writer) checkTreeOverflow(l1 []uint64) error {
	if w.refTable.order >= 4 {
		return nil
	}
	add := map[int64]uint64{}
	if err := w.walkTree(l1, func(cl int64) error { add[cl]++; return nil }); err != nil {
		return err
	}
	for cl, n := range add {
		rc, err := w.refcount(cl)
		if err != nil {
			return err
		}
		if rc+n > w.refTable.maxRefcount {
			return fmt.Errorf("%s: cluster %#x would need refcount %d, more than refcount_bits=%d can hold", w.img.s.path, cl<<w.img.s.g.clusterBits, rc+n, 1<<w.refTable.order)
		}
	}
	return nil
}

// dropL1Entry removes active L1 entry i and the active tree's reference on
// its L2 table and everything reached through it.
func (w *writer) dropL1Entry(i int64) error {
	img := w.img
	e := img.l1[i]
	if e&l1EntryOffsetMask == 0 {
		if e != 0 {
			img.l1[i] = 0
			w.l1Dirty[i] = true
		}
		return nil
	}
	if err := w.decTree([]uint64{e}); err != nil {
		return err
	}
	if img.s.dataF != img.s.f {
		// Release the data file's space too (it carries no refcounts).
		g := &img.s.g
		off, _ := img.s.l2TableOf(e, int(i))
		err := w.forEachL2(off, func(_ []byte, _, idx int64, le l2Entry) (bool, error) {
			if w.hasHost(le) {
				w.punchDataFile(i*g.l2Entries + idx)
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	img.l1[i] = 0
	w.l1Dirty[i] = true
	return nil
}

// fixCopiedFlags sets QCOW_OFLAG_COPIED on the active L1 and L2 entries
// exactly where the refcount is 1 (always for data in an external data
// file; never for compressed or unallocated entries).
func (w *writer) fixCopiedFlags() error {
	img := w.img
	s := img.s
	for i, e := range img.l1 {
		off, err := s.l2TableOf(e, i)
		if err != nil {
			return err
		}
		if off == 0 {
			continue
		}
		rc, err := w.refcount(off >> s.g.clusterBits)
		if err != nil {
			return err
		}
		if want := withCopied(e, rc == 1); want != e {
			img.l1[i] = want
			w.l1Dirty[int64(i)] = true
		}
		err = w.forEachL2(off, func(data []byte, in, _ int64, le l2Entry) (bool, error) {
			var want bool
			switch {
			case le.compressed() || !w.hasHost(le):
			case s.g.dataFile:
				want = true
			default:
				h := le.hostOffset()
				if h&(s.g.clusterSize-1) != 0 {
					return false, s.corruptf("L2 entry %#x: host offset %#x is not cluster-aligned", le.word, h)
				}
				rc, err := w.refcount(h >> s.g.clusterBits)
				if err != nil {
					return false, err
				}
				want = rc == 1
			}
			if nw := withCopied(le.word, want); nw != le.word {
				binary.BigEndian.PutUint64(data[in:], nw)
				return true, nil
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func withCopied(e uint64, on bool) uint64 {
	if on {
		return e | oflagCopied
	}
	return e &^ oflagCopied
}
