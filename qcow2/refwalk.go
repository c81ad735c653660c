// The reference walker: one walk over all metadata that counts, per host
// cluster, the references the image holds (header, L1 and L2 tables of the
// active state and of every snapshot, data and compressed clusters,
// snapshot table, refcount table and blocks, persistent bitmaps), with the
// checks and messages of QEMU's calculate_refcounts. Check compares the
// counts with the stored refcounts; the dirty-image rebuild writes them.
//
// Every offset comes from the image and is untrusted: a reference reaching
// one cluster or more past the end of the file is reported and not
// counted, so the counts never outgrow the file.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// refWalker holds the counts of one walk. Caller holds s.mu.
type refWalker struct {
	s        *fileState
	res      *CheckResult // findings: corruptions, check errors, messages, statistics
	cs       int64
	bits     uint
	fileLen  int64    // references may reach less than a cluster past it
	counts   []uint32 // references per host cluster
	nb       int64    // clusters covered: the file's, or more if referenced
	countMax uint64   // saturation: the image's refcount maximum

	table   []uint64 // refcount table entries (their blocks are counted)
	noRef   bool     // don't count the refcount structure (for a rebuild of it)
	rebuild bool     // the refcount structure itself is broken
	outside bool     // a refcount block lies past the end of the file
	// skipBadSnapshots: snapshots whose L1 table cannot be read hold no
	// references (the dirty-image rebuild; check reports them instead).
	skipBadSnapshots bool

	progress func(done, total int64)
	work     int64 // progress: L1 entries walked + 64K-cluster steps compared
	total    int64

	l1buf, l2buf, scratch []byte // reused by every table read
}

func newRefWalker(s *fileState, progress func(done, total int64)) refWalker {
	if progress == nil {
		progress = func(int64, int64) {}
	}
	w := refWalker{s: s, progress: progress, cs: s.g.clusterSize, bits: s.g.clusterBits,
		res: &CheckResult{Filename: s.path, Format: "qcow2"}}
	order := s.hdr.RefcountOrder
	w.countMax = 1<<(1<<order) - 1
	if order >= 5 {
		w.countMax = 1<<32 - 1
	}
	return w
}

// setFileLen sets the length of the file the references must stay within.
func (w *refWalker) setFileLen(n int64) {
	w.fileLen = n
	w.nb = (n + w.cs - 1) >> w.bits
}

func (w *refWalker) msg(format string, args ...any) {
	if len(w.res.Messages) < maxCheckMessages {
		w.res.Messages = append(w.res.Messages, fmt.Sprintf(format, args...))
	} else if len(w.res.Messages) == maxCheckMessages {
		w.res.Messages = append(w.res.Messages, "... (further messages omitted)")
	}
}

func (w *refWalker) step(n int64) {
	w.work += n
	w.progress(min(w.work, w.total), w.total)
}

// inc counts one reference to every cluster of [off, off+size), as QEMU's
// qcow2_inc_refcounts_imrt does: a region reaching one cluster or more
// past the end of the file is a corruption, not counted. off and size come
// from the image: the bound is computed without overflow.
func (w *refWalker) inc(off, size int64) {
	if size <= 0 {
		return
	}
	// off+size-fileLen >= cs, for any off and size > 0.
	if off < 0 || off > w.fileLen+w.cs || size >= w.fileLen+w.cs-off {
		w.msg("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset %#x size %#x", uint64(off), size)
		w.res.Corruptions++
		return
	}
	for cl := off >> w.bits; cl <= (off+size-1)>>w.bits; cl++ {
		w.grow(cl)
		if uint64(w.counts[cl]) >= w.countMax {
			w.msg("ERROR: overflow cluster offset=%#x", cl<<w.bits)
			w.res.Corruptions++
			continue
		}
		w.counts[cl]++
	}
}

// grow makes room for cluster cl (at most one cluster past the file, or
// a cluster the caller allocated).
func (w *refWalker) grow(cl int64) {
	if n := int64(len(w.counts)); n <= cl {
		w.counts = append(w.counts, make([]uint32, max(cl+1-n, n, 1024))...)
	}
	if cl >= w.nb {
		w.nb = cl + 1
	}
}

// addCluster counts a reference to cluster cl, which the caller has just
// allocated (not from the image: no bounds to check).
func (w *refWalker) addCluster(cl int64) {
	w.grow(cl)
	w.counts[cl]++
}

func (w *refWalker) count(cl int64) uint64 {
	if cl >= 0 && cl < int64(len(w.counts)) {
		return uint64(w.counts[cl])
	}
	return 0
}

// countAll counts every reference the metadata holds. An error means the
// walk could not go on (QEMU: the check fails); findings go to w.res.
func (w *refWalker) countAll() error {
	s := w.s
	h := &s.hdr
	w.inc(0, w.cs)
	if err := w.checkL1(int64(h.L1TableOffset), int64(h.L1Size), true); err != nil {
		return err
	}
	if s.g.dataFile && len(s.snaps) > 0 {
		w.msg("ERROR: image has an external data file and internal snapshots")
		w.res.Corruptions++
	}
	for _, sn := range s.snaps {
		if sn.badL1 && w.skipBadSnapshots {
			continue
		}
		if sn.L1TableOffset&uint64(w.cs-1) != 0 {
			w.msg("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", imgtext.Escape(sn.ID), imgtext.Escape(sn.Name), sn.L1TableOffset)
			w.res.Corruptions++
			continue
		}
		if int64(sn.L1Size)*8 > maxL1Bytes {
			w.msg("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", imgtext.Escape(sn.ID), imgtext.Escape(sn.Name), sn.L1Size)
			w.res.Corruptions++
			continue
		}
		if err := w.checkL1(int64(sn.L1TableOffset), int64(sn.L1Size), false); err != nil {
			return err
		}
	}
	if h.NbSnapshots > 0 {
		w.inc(int64(h.SnapshotsOffset), int64(len(encodeSnapshotTable(s.snaps))))
	}
	if !w.noRef {
		w.inc(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*w.cs)
	}
	if err := w.countBitmaps(); err != nil {
		return err
	}
	if !w.noRef {
		w.checkRefBlocks()
	}
	return nil
}

// checkL1 counts an L1 table and the trees below it; frag gathers the
// allocation statistics (active L1 only).
func (w *refWalker) checkL1(off, size int64, frag bool) error {
	w.inc(off, size*8)
	if size == 0 {
		return nil
	}
	// Reused: Open bounds each L1 table by the file, but many snapshots
	// may name the same large one.
	if int64(cap(w.l1buf)) < size*8 {
		w.l1buf = make([]byte, size*8)
	}
	raw := w.l1buf[:size*8]
	if err := readMeta(w.s.f, raw, uint64(off)); err != nil {
		w.msg("ERROR: I/O error in check_refcounts_l1: %v", err)
		w.res.CheckErrors++
		return nil
	}
	if w.l2buf == nil {
		w.l2buf = make([]byte, w.cs)
	}
	l2 := w.l2buf
	for i := int64(0); i < size; i++ {
		e := binary.BigEndian.Uint64(raw[i*8:])
		if e&l1EntryReservedMask != 0 {
			w.msg("ERROR found L1 entry with reserved bits set: %x", e)
			w.res.Corruptions++
		}
		l2off := int64(e & l1EntryOffsetMask)
		if l2off == 0 {
			continue
		}
		w.inc(l2off, w.cs)
		if l2off&(w.cs-1) != 0 {
			w.msg("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2off)
			w.res.Corruptions++
		}
		if err := readMeta(w.s.f, l2, uint64(l2off)); err != nil {
			w.msg("ERROR: I/O error in check_refcounts_l2: %v", err)
			w.res.CheckErrors++
			continue
		}
		w.checkL2(l2, frag)
		w.step(1)
	}
	return nil
}

func (w *refWalker) checkL2(l2 []byte, frag bool) {
	g := &w.s.g
	var nextContig int64
	for j := int64(0); j < g.l2Entries; j++ {
		word := binary.BigEndian.Uint64(l2[j*g.l2EntrySize:])
		var bitmap uint64
		if g.l2EntrySize == 16 {
			bitmap = binary.BigEndian.Uint64(l2[j*g.l2EntrySize+8:])
		}
		offset := int64(word & l2EntryOffsetMask)
		if word&oflagCompressed == 0 && word&l2EntryReservedMask != 0 {
			w.msg("ERROR found l2 entry with reserved bits set: %x", word)
			w.res.Corruptions++
		}
		switch {
		case word&oflagCompressed != 0:
			if word&oflagCopied != 0 {
				w.msg("ERROR: coffset=%#x: copied flag must never be set for compressed clusters", word&(oflagCompressed-1))
				w.res.Corruptions++
			}
			if g.dataFile {
				w.msg("ERROR compressed cluster %d with data file, entry=%#x", j, word)
				w.res.Corruptions++
				continue
			}
			if bitmap != 0 {
				w.msg("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=%#x", j, word)
				w.res.Corruptions++
				continue
			}
			host, length := compressedDescriptor(word, g.clusterBits)
			w.inc(host, length)
			if frag {
				w.res.AllocatedClusters++
				w.res.CompressedClusters++
				w.res.FragmentedClusters++
			}
		case offset != 0 || g.dataFile && word&oflagCopied != 0 && !(g.subclusters == 1 && word&oflagZero != 0):
			// Normal, or preallocated zero cluster.
			if g.subclusters > 1 && (bitmap>>32)&bitmap != 0 {
				w.msg("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", offset)
				w.res.Corruptions++
			}
			if offset&(w.cs-1) != 0 {
				w.res.Corruptions++
				data := word&oflagZero == 0
				if g.subclusters > 1 {
					data = bitmap&0xffffffff != 0
				}
				if data {
					w.msg("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", offset)
				} else {
					w.msg("ERROR offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", offset)
				}
			}
			if frag {
				w.res.AllocatedClusters++
				if nextContig != 0 && offset != nextContig {
					w.res.FragmentedClusters++
				}
				nextContig = offset + w.cs
			}
			if !g.dataFile {
				w.inc(offset, w.cs)
			}
		default:
			if g.subclusters > 1 && bitmap&0xffffffff != 0 {
				w.msg("ERROR: Unallocated cluster has non-zero subcluster allocation map")
				w.res.Corruptions++
			}
		}
	}
}

// checkFailed is an error that ends a walk the way QEMU's check ends when
// calculate_refcounts fails (qemu-img check: "Check failed").
type checkFailed struct{ msg string }

func (e *checkFailed) Error() string { return e.msg }

// countBitmaps counts the persistent bitmaps' clusters (QEMU's
// qcow2_check_bitmaps_refcounts): the directory, each bitmap table and its
// data clusters. Bitmap metadata QEMU refuses when it opens the image is
// an error here too; QEMU ignores the bitmaps (their clusters leak) once
// the autoclear bit is clear.
func (w *refWalker) countBitmaps() error {
	bm, err := w.s.loadBitmaps()
	if err != nil || bm == nil {
		return err
	}
	w.inc(int64(bm.ext.dirOffset), int64(bm.ext.dirSize))
	for i := range bm.list {
		b := &bm.list[i]
		// Sizes are bounded by the directory checks; the offset is
		// cluster aligned but may be anything up to 2^64.
		w.inc(int64(b.tableOffset), int64(b.tableSize)*8)
		err := w.s.forBitmapTable(b, &w.scratch, func(_, data uint64) {
			if data != 0 {
				w.inc(int64(data), w.cs)
			}
		})
		if err != nil {
			// Only a bitmap in use gets here: QEMU checked the others'
			// tables when it opened the image.
			w.res.Corruptions++
			return &checkFailed{fmt.Sprintf("bitmap '%s': %v", imgtext.Escape(b.name), err)}
		}
	}
	return nil
}

// checkRefBlocks counts the refcount blocks and validates the table's
// entries (QEMU's check_refblocks). Entries are untrusted 64-bit values:
// compared as unsigned, so bit 63 makes an offset huge, not negative.
func (w *refWalker) checkRefBlocks() {
	for i, e := range w.table {
		off := e & refTableOffsetMask
		switch {
		case e&^refTableOffsetMask != 0:
			w.msg("ERROR refcount table entry %d has reserved bits set", i)
			w.res.Corruptions++
			w.rebuild = true
			continue
		case off&uint64(w.cs-1) != 0:
			w.msg("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			w.res.Corruptions++
			w.rebuild = true
			continue
		case off>>w.bits >= uint64(w.nb):
			w.msg("ERROR refcount block %d is outside image", i)
			w.res.Corruptions++
			w.outside = true // repaired by the rebuild in "all" mode
			continue
		case off == 0:
			continue
		}
		// Inside the file now: off < nb clusters.
		w.inc(int64(off), w.cs)
		if n := w.count(int64(off >> w.bits)); n != 1 {
			w.msg("ERROR refcount block %d refcount=%d", i, n)
			w.res.Corruptions++
			w.rebuild = true
		}
	}
}
