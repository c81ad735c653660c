// Persistent dirty bitmaps kept up to date by writes, as QEMU keeps them
// (block/qcow2-bitmap.c):
//
//   - Before the first guest write of a read-write open, every bitmap of the
//     directory is loaded into memory and flagged IN_USE on disk (the
//     directory rewritten in place, synced before any data changes). The
//     autoclear "bitmaps" bit stays set.
//   - Every write, write-zeroes and discard sets, under the metadata lock,
//     the bits of the bitmaps with the AUTO flag (enabled).
//   - Close stores them: new data clusters and tables for the bitmaps that
//     changed, a new directory with IN_USE cleared, the header extension
//     pointed at it, and only then the old clusters freed. Like QEMU,
//     Flush (fsync) does not store them: storing on every fsync would cost
//     a table and directory rewrite each time, and QEMU too leaves IN_USE
//     set until close. A crash leaves them IN_USE, which QEMU (and we)
//     treat as inconsistent: their content is never trusted again; they
//     can only be removed (qemu-img check -r all leaves them as they are).
//
// Bitmaps found IN_USE when loaded are kept as they are (their table is
// not read again, nor freed). Read-only opens never get here.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// dirtyBitmap is one directory entry with, when loaded, its content.
type dirtyBitmap struct {
	name        string // the entry's name bytes
	flags       uint32
	gran        uint8 // granularity bits
	tableOffset uint64
	tableSize   uint32
	// loaded: chunks hold the content. False for a bitmap found in use,
	// whose content is unknown and whose table is kept as it is.
	loaded bool
	chunks map[uint32]*bitmapChunk // by table index; absent: all zeros
	data   []uint64                // data clusters the table on disk points at
	// rewrite: the table on disk no longer says what chunks say.
	rewrite bool
}

// bitmapChunk is the part of a bitmap one data cluster holds.
type bitmapChunk struct {
	ones bool   // every bit set (the all-ones table entry)
	bits []byte // one cluster, bit i of the chunk at byte i/8, bit i%8
}

// bitmapSet is the directory of an image opened read-write.
type bitmapSet struct {
	dirOffset uint64
	dirSize   uint64
	list      []*dirtyBitmap
	inUse     bool // loaded bitmaps flagged IN_USE on disk by us
}

func (b *dirtyBitmap) enabled() bool { return b.loaded && b.flags&bitmapFlagAuto != 0 }

// loadBitmapSet reads the bitmap directory and the content of every bitmap
// not in use. nil when the image has no bitmaps QEMU would consider.
// Memory is bounded by the file: only table entries and data clusters
// inside it are read. Caller holds s.mu.
func (s *fileState) loadBitmapSet() (*bitmapSet, error) {
	bm, err := s.loadBitmaps()
	if err != nil || bm == nil {
		return nil, err
	}
	set := &bitmapSet{dirOffset: bm.ext.dirOffset, dirSize: bm.ext.dirSize}
	var scratch []byte
	seen := map[string]bool{}
	cs := s.g.clusterSize
	for i := range bm.list {
		info := &bm.list[i]
		b := &dirtyBitmap{name: info.name, flags: info.flags, gran: info.granularityBits,
			tableOffset: info.tableOffset, tableSize: info.tableSize}
		set.list = append(set.list, b)
		if info.inUse() || seen[info.name] {
			continue
		}
		seen[info.name] = true
		b.loaded = true
		b.chunks = map[uint32]*bitmapChunk{}
		var rerr error
		err := s.forBitmapTable(info, &scratch, func(i, off uint64) {
			if rerr != nil {
				return
			}
			if off == 0 {
				b.chunks[uint32(i)] = &bitmapChunk{ones: true}
				return
			}
			c := &bitmapChunk{bits: make([]byte, cs)}
			if err := readMeta(s.f, c.bits, off); err != nil {
				rerr = fmt.Errorf("read data cluster %#x of bitmap '%s': %w", off, imgtext.Escape(info.name), err)
				return
			}
			b.chunks[uint32(i)] = c
			b.data = append(b.data, off)
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.path, err)
		}
	}
	return set, nil
}

// encodeBitmapDirectory is the directory for list, flags as in memory.
func encodeBitmapDirectory(list []*dirtyBitmap) []byte {
	var out []byte
	be := binary.BigEndian
	for _, b := range list {
		var e [bitmapDirEntrySize]byte
		be.PutUint64(e[0:], b.tableOffset)
		be.PutUint32(e[8:], b.tableSize)
		be.PutUint32(e[12:], b.flags)
		e[16] = bitmapTypeDirty
		e[17] = b.gran
		be.PutUint16(e[18:], uint16(len(b.name)))
		out = append(append(out, e[:]...), b.name...)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

// setBits sets bits [from, to) of a chunk.
func setBits(p []byte, from, to uint64) {
	for from < to && from%8 != 0 {
		p[from/8] |= 1 << (from % 8)
		from++
	}
	for ; from+8 <= to; from += 8 {
		p[from/8] = 0xff
	}
	for ; from < to; from++ {
		p[from/8] |= 1 << (from % 8)
	}
}

// setRange marks guest bytes [off, off+n) dirty.
func (b *dirtyBitmap) setRange(off, n, clusterSize int64) {
	if n <= 0 {
		return
	}
	perChunk := uint64(clusterSize) * 8
	first, last := uint64(off)>>b.gran, uint64(off+n-1)>>b.gran
	for bit := first; bit <= last; {
		ci := bit / perChunk
		end := min(last+1, (ci+1)*perChunk)
		c := b.chunks[uint32(ci)]
		if c == nil {
			c = &bitmapChunk{bits: make([]byte, clusterSize)}
			b.chunks[uint32(ci)] = c
		}
		if !c.ones {
			setBits(c.bits, bit-ci*perChunk, end-ci*perChunk)
		}
		bit = end
	}
	b.rewrite = true
}

// isSet reports whether the granule holding guest byte off is dirty.
func (b *dirtyBitmap) isSet(off, clusterSize int64) bool {
	perChunk := uint64(clusterSize) * 8
	bit := uint64(off) >> b.gran
	c := b.chunks[uint32(bit/perChunk)]
	if c == nil {
		return false
	}
	if c.ones {
		return true
	}
	i := bit % perChunk
	return c.bits[i/8]&(1<<(i%8)) != 0
}

// markDirty sets the bits of the enabled bitmaps for a guest write of
// [off, off+n). Caller holds s.mu.
func (w *writer) markDirty(off, n int64) {
	if w.bm == nil {
		return
	}
	for _, b := range w.bm.list {
		if b.enabled() {
			b.setRange(off, n, w.img.s.g.clusterSize)
		}
	}
}

// startBitmaps runs once before the first guest write: it loads the
// bitmaps and flags them IN_USE on disk (the directory rewritten in place:
// only flags change), durable before any data is written. Caller holds
// s.mu.
func (w *writer) startBitmaps() error {
	if w.bmStarted {
		return nil
	}
	s := w.img.s
	set, err := s.loadBitmapSet()
	if err != nil {
		return err
	}
	w.bmStarted = true
	if set == nil {
		return nil
	}
	w.bm = set
	changed := false
	for _, b := range set.list {
		if b.loaded && b.flags&bitmapFlagInUse == 0 {
			b.flags |= bitmapFlagInUse
			changed = true
		}
	}
	if !changed {
		return nil
	}
	dir := encodeBitmapDirectory(set.list)
	if uint64(len(dir)) != set.dirSize {
		return fmt.Errorf("%s: bitmap directory re-encoded to %d bytes, not %d", s.path, len(dir), set.dirSize)
	}
	s.metaUnsynced.Store(true)
	if _, err := s.f.WriteAt(dir, int64(set.dirOffset)); err != nil {
		return fmt.Errorf("flag bitmaps in use in %s: %w", s.path, err)
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	set.inUse = true
	return nil
}

// storeBitmaps writes the bitmaps back: a new table (and data clusters)
// for every bitmap whose content changed, a new directory (IN_USE cleared
// on the loaded bitmaps when clearInUse), the header extension pointed at
// it (removed, with the autoclear bit, when no bitmap is left), and then
// the old clusters freed. A pointer never reaches the disk before what it
// points at: tables, data and directory, and their refcounts, are durable
// before the header names them; the frees wait for the new header.
// extraFrees are freed with the old clusters (bitmaps removed). Caller
// holds s.mu; the image is flushed.
func (w *writer) storeBitmaps(set *bitmapSet, clearInUse bool, extraFrees [][2]int64) error {
	s := w.img.s
	cs := s.g.clusterSize
	frees := extraFrees
	clustersOf := func(bytes int64) int64 { return (bytes + cs - 1) / cs }
	for _, b := range set.list {
		if clearInUse && b.loaded {
			b.flags &^= bitmapFlagInUse
		}
		if !b.rewrite {
			continue
		}
		table := make([]byte, int64(b.tableSize)*8)
		keys := make([]uint32, 0, len(b.chunks))
		for k := range b.chunks {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var data []uint64
		for _, k := range keys {
			if uint64(k) >= uint64(b.tableSize) {
				continue // past the disk: cannot happen, the table covers it
			}
			c := b.chunks[k]
			var e uint64
			switch {
			case c.ones:
				e = bitmapEntryAllOnes
			case !slices.ContainsFunc(c.bits, func(x byte) bool { return x != 0 }):
				continue
			default:
				cl, _, err := w.allocCluster()
				if err != nil {
					return err
				}
				off := cl << s.g.clusterBits
				s.metaUnsynced.Store(true)
				if _, err := s.f.WriteAt(c.bits, off); err != nil {
					return fmt.Errorf("write bitmap data of %s: %w", s.path, err)
				}
				e = uint64(off)
				data = append(data, uint64(off))
			}
			binary.BigEndian.PutUint64(table[int64(k)*8:], e)
		}
		first, err := w.allocRun(clustersOf(int64(len(table))))
		if err != nil {
			return err
		}
		toff := first << s.g.clusterBits
		s.metaUnsynced.Store(true)
		if _, err := s.f.WriteAt(table, toff); err != nil {
			return fmt.Errorf("write bitmap table of %s: %w", s.path, err)
		}
		if b.tableOffset != 0 {
			frees = append(frees, [2]int64{int64(b.tableOffset), clustersOf(int64(b.tableSize) * 8)})
		}
		for _, d := range b.data {
			frees = append(frees, [2]int64{int64(d), 1})
		}
		b.tableOffset, b.data, b.rewrite = uint64(toff), data, false
	}
	var ext []byte
	if len(set.list) > 0 {
		dir := encodeBitmapDirectory(set.list)
		first, err := w.allocRun(clustersOf(int64(len(dir))))
		if err != nil {
			return err
		}
		doff := first << s.g.clusterBits
		s.metaUnsynced.Store(true)
		if _, err := s.f.WriteAt(dir, doff); err != nil {
			return fmt.Errorf("write bitmap directory of %s: %w", s.path, err)
		}
		ext = make([]byte, 24)
		binary.BigEndian.PutUint32(ext, uint32(len(set.list)))
		binary.BigEndian.PutUint64(ext[8:], uint64(len(dir)))
		binary.BigEndian.PutUint64(ext[16:], uint64(doff))
		if set.dirOffset != 0 {
			frees = append(frees, [2]int64{int64(set.dirOffset), clustersOf(int64(set.dirSize))})
		}
		set.dirOffset, set.dirSize = uint64(doff), uint64(len(dir))
	} else if set.dirOffset != 0 {
		frees = append(frees, [2]int64{int64(set.dirOffset), clustersOf(int64(set.dirSize))})
		set.dirOffset, set.dirSize = 0, 0
	}
	// What the header will point at, and its refcounts, durable first.
	if err := w.extendFile(); err != nil {
		return err
	}
	if _, err := w.writeRefcounts(); err != nil {
		return err
	}
	if err := w.barrier(); err != nil {
		return err
	}
	hdr := s.hdr
	var exts []Extension
	placed := false
	for _, e := range s.exts {
		if e.Type != ExtBitmaps {
			exts = append(exts, e)
			continue
		}
		if ext != nil && !placed {
			exts = append(exts, Extension{Type: ExtBitmaps, Data: ext})
			placed = true
		}
	}
	if ext != nil && !placed {
		exts = append(exts, Extension{Type: ExtBitmaps, Data: ext})
	}
	if ext != nil {
		hdr.AutoclearFeatures |= AutoclearBitmaps
	} else {
		hdr.AutoclearFeatures &^= AutoclearBitmaps
	}
	if err := w.writeHeaderArea(hdr, exts, s.backingName); err != nil {
		return err
	}
	set.inUse = !clearInUse
	for _, f := range frees {
		w.deferFree(f[0]>>s.g.clusterBits, f[1])
	}
	return w.flushLocked()
}

// storeBitmapsAtClose stores the bitmaps flagged in use by this open.
func (w *writer) storeBitmapsAtClose() error {
	s := w.img.s
	w.ioLock.Lock()
	defer w.ioLock.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.bm == nil || !w.bm.inUse || s.corrupt {
		return nil // corrupt: the bitmaps stay in use (inconsistent)
	}
	if err := s.stickyErr(); err != nil {
		return err
	}
	return w.storeBitmaps(w.bm, true, nil)
}
