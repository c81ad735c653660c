// The read path: guest ranges mapped to runs through the L1 and L2 tables,
// then served from the image, the data file, the backing chain or zeros.
// Mapping runs first under s.mu's read lock, from cached L2 slices only
// (concurrent readers do not exclude each other); an uncached slice or
// anything to report as corrupt sends it to the exclusive path.

package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/qcow2fs/qcow2fs/cache"
)

// run is a stretch of guest bytes with one treatment, produced by mapRuns.
type run struct {
	kind   clusterKind
	off    int64  // guest offset
	length int64  //
	host   int64  // kindNormal: host offset of the first byte
	desc   uint64 // kindCompressed: the L2 entry; off is inside that cluster
	skip   int64  // kindCompressed: offset inside the decompressed cluster
}

// errNeedExclusive stops a mapping under s.mu's read lock: it met an L2
// slice that is not cached (loading one changes the cache) or metadata to
// report corrupt (which flags the image); the caller maps again under the
// exclusive lock, which does both.
var errNeedExclusive = errors.New("qcow2: mapping needs the exclusive metadata lock")

// mapCorrupt is corruptf for the mappers: under the read lock (shared) it
// changes nothing and asks for the exclusive path instead.
func (img *Image) mapCorrupt(shared bool, format string, args ...any) error {
	if shared {
		return errNeedExclusive
	}
	return img.s.corruptf(format, args...)
}

// l2TableOffset returns the L2 table offset for L1 index i, 0 if unallocated.
// Caller holds s.mu.
func (img *Image) l2TableOffset(i int64) (int64, error) { return img.l2TableOffsetIn(i, false) }

// l2TableOffsetIn is l2TableOffset; with shared set the caller holds s.mu's
// read lock only, and a corrupt entry returns errNeedExclusive.
func (img *Image) l2TableOffsetIn(i int64, shared bool) (int64, error) {
	if i >= int64(len(img.l1)) {
		return 0, nil
	}
	off := int64(img.l1[i] & l1EntryOffsetMask)
	if off&(img.s.g.clusterSize-1) != 0 {
		return 0, img.mapCorrupt(shared, "L1 entry %d: L2 table offset %#x is not cluster-aligned", i, off)
	}
	if off != 0 {
		if what := img.overlapsMetadata(off, img.s.g.clusterSize); what != "" {
			return 0, img.mapCorrupt(shared, "L1 entry %d: L2 table at %#x overlaps %s", i, off, what)
		}
	}
	return off, nil
}

// lookup returns the L2 entry of guest cluster c. Caller holds s.mu.
func (img *Image) lookup(c int64) (l2Entry, error) { return img.lookupIn(c, false) }

// lookupIn is lookup; with shared set the caller holds s.mu's read lock
// only: the slice comes from the cache's concurrent hit path, and a slice
// not cached returns errNeedExclusive. (Writers change slices in place, and
// evict and recycle them, only under the exclusive lock, so the entry read
// here is whole and current.)
func (img *Image) lookupIn(c int64, shared bool) (l2Entry, error) {
	s := img.s
	g := &s.g
	l1i := g.l1Index(c)
	l2off, err := img.l2TableOffsetIn(l1i, shared)
	if err != nil || l2off == 0 {
		return l2Entry{}, err
	}
	pos := g.l2Index(c) * g.l2EntrySize
	slice := l2SliceSize(*g)
	key := uint64(l2off + pos/slice*slice)
	var blk *cache.Block
	if shared {
		if blk = s.l2c.LookupShared(key); blk == nil {
			return l2Entry{}, errNeedExclusive
		}
	} else {
		blk, err = s.l2c.Get(key)
	}
	if errors.Is(err, io.EOF) {
		return l2Entry{}, s.corruptf("L1 entry %d: L2 table at %#x lies past the end of the file", l1i, l2off)
	}
	if err != nil {
		return l2Entry{}, fmt.Errorf("read L2 table at %#x (L1 entry %d): %w", l2off, l1i, err)
	}
	in := pos % slice
	e := l2Entry{word: binary.BigEndian.Uint64(blk.Data[in:])}
	if g.l2EntrySize == 16 {
		e.bitmap = binary.BigEndian.Uint64(blk.Data[in+8:])
	}
	return e, nil
}

// mapRuns describes [off, off+n) as runs, merging neighbours that can be
// served by one I/O. Caller holds s.mu.
func (img *Image) mapRuns(off, n int64, out []run) ([]run, error) {
	return img.mapRunsIn(off, n, out, false)
}

// mapRunsIn is mapRuns; with shared set the caller holds s.mu's read lock
// only, and the mapping fails with errNeedExclusive (having changed nothing)
// where it would load an L2 slice or report corruption.
func (img *Image) mapRunsIn(off, n int64, out []run, shared bool) ([]run, error) {
	g := &img.s.g
	var err error
	add := func(r run) {
		if k := len(out) - 1; k >= 0 {
			last := &out[k]
			if last.kind == r.kind && last.off+last.length == r.off {
				switch r.kind {
				case kindZero, kindUnallocated:
					last.length += r.length
					return
				case kindNormal:
					if last.host+last.length == r.host {
						last.length += r.length
						return
					}
				}
			}
		}
		out = append(out, r)
	}
	// Go one L2 table's reach at a time, so that the holes of huge sparse
	// images (no L2 table at all) cost one step, not one per cluster.
	// (Distances, not end offsets: off+n may be up to MaxInt64, and the
	// next table boundary past it would overflow.)
	l2Reach := g.l2Entries << g.clusterBits
	for left := n; left > 0 && err == nil; {
		chunk := min(left, l2Reach-off%l2Reach)
		var l2off int64
		if l2off, err = img.l2TableOffsetIn(g.l1Index(g.clusterIndex(off)), shared); err != nil {
			break
		}
		if l2off == 0 {
			add(run{kind: kindUnallocated, off: off, length: chunk})
		} else {
			err = img.mapTable(off, chunk, add, shared)
		}
		off += chunk
		left -= chunk
	}
	return out, err
}

// mapTable is mapRuns for a range within the reach of one L2 table.
func (img *Image) mapTable(off, n int64, add func(run), shared bool) error {
	g := &img.s.g
	var err error
	g.splitRange(off, n, func(p piece) bool {
		var e l2Entry
		e, err = img.lookupIn(p.cluster, shared)
		if err != nil {
			return false
		}
		gOff := p.cluster<<g.clusterBits + p.skip
		if e.compressed() {
			add(run{kind: kindCompressed, off: gOff, length: p.length, desc: e.word, skip: p.skip})
			return true
		}
		if g.subclusters == 1 {
			var k clusterKind
			k, err = e.kind(g, 0)
			if err != nil {
				err = img.mapCorrupt(shared, "guest cluster %d: %v", p.cluster, err)
				return false
			}
			add(run{kind: k, off: gOff, length: p.length, host: e.hostOffset() + p.skip})
			return true
		}
		// Extended L2: one run per subcluster touched (a bitmap of zero
		// means all of them are unallocated: one run).
		if e.bitmap == 0 {
			if _, err = e.kind(g, 0); err != nil {
				err = img.mapCorrupt(shared, "guest cluster %d: %v", p.cluster, err)
				return false
			}
			add(run{kind: kindUnallocated, off: gOff, length: p.length})
			return true
		}
		subSize := int64(1) << g.subclusterBits
		for done := int64(0); done < p.length; {
			in := p.skip + done
			i := int(in >> g.subclusterBits)
			l := min(subSize-in&(subSize-1), p.length-done)
			var k clusterKind
			k, err = e.kind(g, i)
			if err != nil {
				err = img.mapCorrupt(shared, "guest cluster %d: %v", p.cluster, err)
				return false
			}
			add(run{kind: k, off: gOff + done, length: l, host: e.hostOffset() + in})
			done += l
		}
		return true
	})
	return err
}

// ReadAt reads len(p) bytes of the virtual disk at off. Reads that cross the
// end of the disk are short with io.EOF.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= img.size {
		return 0, io.EOF
	}
	n := int64(len(p))
	var eof error
	if n > img.size-off {
		n = img.size - off
		eof = io.EOF
	}
	if err := img.read(p[:n], off); err != nil {
		return 0, err
	}
	return int(n), eof
}

// readAt implements layer: bytes past the size read as zeros.
func (img *Image) readAt(p []byte, off int64) error {
	if off >= img.size {
		clear(p)
		return nil
	}
	if int64(len(p)) > img.size-off {
		clear(p[img.size-off:])
		p = p[:img.size-off]
	}
	return img.read(p, off)
}

func (img *Image) read(p []byte, off int64) error {
	s := img.s
	if img.w != nil {
		img.w.ioLock.RLock()
		defer img.w.ioLock.RUnlock()
	}
	// Map under the read lock first: readers whose L2 slices are all
	// cached run side by side. Writers change the tables and the cache
	// under the exclusive lock, so what is read here is a consistent state
	// (the same one a reader holding the exclusive lock would see).
	var stack [16]run
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	runs, err := img.mapRunsIn(off, int64(len(p)), stack[:0], true)
	s.mu.RUnlock()
	if err == errNeedExclusive {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		runs, err = img.mapRuns(off, int64(len(p)), stack[:0])
		s.mu.Unlock()
	}
	if err != nil {
		return err
	}
	compressed := false
	for _, r := range runs {
		buf := p[r.off-off : r.off-off+r.length]
		switch r.kind {
		case kindZero:
			clear(buf)
		case kindUnallocated:
			if s.backing != nil {
				if err := s.backing.readAt(buf, r.off); err != nil {
					return err
				}
			} else {
				clear(buf)
			}
		case kindNormal:
			if err := preadFull(s.dataF, buf, r.host); err != nil {
				return fmt.Errorf("read data at %#x of %s: %w", r.host, s.dataName(), err)
			}
		case kindCompressed:
			compressed = true // filled below, in parallel
		}
	}
	if compressed {
		return img.readCompressed(p, off, runs)
	}
	return nil
}

func (s *fileState) dataName() string {
	if s.dataFilePath != "" {
		return s.dataFilePath
	}
	return s.path
}

// preadFull reads len(buf) bytes at off; bytes past the end of the file read
// as zeros (as QEMU does for clusters beyond EOF).
func preadFull(f interface {
	ReadAt([]byte, int64) (int, error)
}, buf []byte, off int64) error {
	n, err := f.ReadAt(buf, off)
	if err == io.EOF {
		clear(buf[n:])
		return nil
	}
	return err
}

// corruptf reports metadata found inconsistent at run time. The image is
// flagged so that no further write goes through it.
func (s *fileState) corruptf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	s.markCorrupt(msg)
	return &FormatError{File: s.path, Msg: "corrupt metadata: " + msg}
}
