// The guest write path: the writer's state, preparing the image before its
// first modification, and WriteAt with in-flight allocations per cluster.

package qcow2

import (
	"fmt"
	"sync"
)

// writer holds the state of a writable image: allocation, in-flight
// allocations, deferred frees and what must be written back on Flush.
type writer struct {
	img *Image
	// ioLock is held shared by every data I/O and exclusively while deferred
	// frees are applied, so a freed cluster is never reused under a read or
	// write still in flight.
	ioLock sync.RWMutex

	// The fields below are guarded by img.s.mu.
	refTable *refcountTable
	end      int64                   // first host cluster past everything allocated
	freeHint int64                   // where the search for a free cluster starts
	inflight map[int64]chan struct{} // guest clusters being allocated (or merged)
	// inPlaceN counts the in-place writes running on each guest cluster;
	// a merge (which reads bytes of the cluster and writes them back)
	// waits for them in drained, so it never writes back a stale copy.
	inPlaceN map[int64]int
	drained  map[int64]chan struct{}
	// unsyncedData: data was written that a dirty L2 entry exposes, and
	// no barrier has followed yet (see beforeL2WriteBack).
	unsyncedData bool
	l1Dirty      map[int64]bool
	pending      []pendingFree // refcount decrements waiting for the L2 updates to be durable
	prepared     bool          // header prepared for writing (autoclear cleared, refcounts valid)
	// bm: the persistent bitmaps, loaded and flagged in use before the
	// first guest write (bmStarted); see dirtybitmap.go.
	bm        *bitmapSet
	bmStarted bool
	zeroBuf   []byte
	fileLen   int64 // host file length we know of
	// zeroFrom is the first host cluster never handed out since open and past
	// the file's end then: clusters from here on read as zeros, so a new
	// data cluster there needs no zero padding written around a write.
	zeroFrom int64
	// zFree is the free tail of the current compressed cluster: the host
	// byte where the next compressed run starts (0: none; see
	// WriteCompressed).
	zFree int64
}

func newWriter(img *Image) *writer {
	cs := img.s.g.clusterSize
	w := &writer{img: img, inflight: map[int64]chan struct{}{}, l1Dirty: map[int64]bool{},
		inPlaceN: map[int64]int{}, drained: map[int64]chan struct{}{}}
	img.s.l2c.BeforeWriteBack(w.beforeL2WriteBack)
	w.zeroBuf = make([]byte, cs)
	return w
}

// init loads the refcount structure; called once at open.
func (w *writer) init() error {
	s := w.img.s
	rc, err := s.loadRefcounts()
	if err != nil {
		return err
	}
	w.refTable = rc
	fsize, err := s.fileSize()
	if err != nil {
		return err
	}
	// The last cluster may end past EOF (qemu-img leaves files that are
	// not cluster multiples); count it as covered so that an open that
	// writes nothing never changes the file's length.
	w.fileLen = s.g.alignUp(fsize)
	w.zeroFrom = s.g.alignUp(fsize) >> s.g.clusterBits
	w.end = s.g.alignUp(fsize) >> s.g.clusterBits
	return nil
}

// writeHeader writes the fixed header fields (not the extensions).
func (w *writer) writeHeader() error {
	s := w.img.s
	if _, err := s.f.WriteAt(s.hdr.encode(), 0); err != nil {
		return fmt.Errorf("write header of %s: %w", s.path, err)
	}
	return nil
}

// prepare runs once before the first modification: it clears the autoclear
// bits this implementation does not know (QEMU must learn about them), and
// makes the change durable before any data changes. Persistent bitmaps are
// kept: guest writes update them (begin). Caller holds s.mu.
func (w *writer) prepare() error { return w.prepareWith(true, true) }

// prepareWith is prepare for maintenance as well: rebuildDirty repairs the
// refcounts of a dirty image first; keepBitmaps clears only the autoclear
// bits this implementation does not know (operations that keep guest
// content, like snapshots and rebase, leave QEMU's bitmaps valid).
func (w *writer) prepareWith(rebuildDirty, keepBitmaps bool) error {
	s := w.img.s
	if s.corrupt {
		return ErrCorrupt
	}
	if w.prepared {
		return nil
	}
	if rebuildDirty && s.hdr.IncompatibleFeatures&IncompatDirty != 0 {
		if err := w.rebuildRefcounts(); err != nil {
			return fmt.Errorf("%s: repair refcounts of dirty image: %w", s.path, err)
		}
	}
	clearBits := s.hdr.AutoclearFeatures &^ AutoclearDataFileRaw
	if keepBitmaps {
		clearBits = s.hdr.AutoclearFeatures &^ autoclearKnown
	}
	if clearBits != 0 && s.hdr.Version >= 3 {
		s.hdr.AutoclearFeatures &^= clearBits
		if err := w.writeHeader(); err != nil {
			return err
		}
		if err := s.syncMeta(); err != nil {
			return err
		}
	}
	w.prepared = true
	return nil
}

// WriteAt writes p at guest offset off.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	w := img.w
	if w == nil {
		return 0, ErrReadOnly
	}
	if off < 0 || off > img.size || int64(len(p)) > img.size-off {
		return 0, ErrOutOfRange
	}
	if err := w.begin(off, int64(len(p))); err != nil {
		return 0, err
	}
	w.ioLock.RLock()
	defer w.ioLock.RUnlock()
	var err error
	img.s.g.splitRange(off, int64(len(p)), func(pc piece) bool {
		err = w.writePiece(p[pc.bufOff:pc.bufOff+pc.length], pc.cluster, pc.skip)
		return err == nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// begin readies the image for a guest write of [off, off+n) and marks
// the range dirty in the enabled persistent bitmaps.
func (w *writer) begin(off, n int64) error {
	s := w.img.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := w.prepare(); err != nil {
		return err
	}
	if err := w.startBitmaps(); err != nil {
		return err
	}
	w.markDirty(off, n)
	return nil
}

// waitInflight blocks (releasing s.mu) until guest cluster c has no
// allocation in flight. Caller holds s.mu; it is held again on return.
func (w *writer) waitInflight(c int64) {
	for {
		ch := w.inflight[c]
		if ch == nil {
			return
		}
		w.img.s.mu.Unlock()
		<-ch
		w.img.s.mu.Lock()
	}
}

func (w *writer) endInflight(c int64) {
	if ch := w.inflight[c]; ch != nil {
		delete(w.inflight, c)
		close(ch)
	}
}

// writePiece writes p at offset skip inside guest cluster c.
func (w *writer) writePiece(p []byte, c, skip int64) error {
	img := w.img
	s := img.s
	s.mu.Lock()
	w.waitInflight(c)
	if s.corrupt {
		s.mu.Unlock()
		return ErrCorrupt
	}
	e, err := img.lookup(c)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	in, err := w.inPlace(e, skip, int64(len(p)))
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if (in || w.hasHost(e) && e.copied()) && s.dataF == s.f {
		// About to write into an existing cluster: never into metadata.
		if what := img.overlapsMetadata(e.hostOffset(), s.g.clusterSize); what != "" {
			err := s.corruptf("guest cluster %d: data cluster at %#x overlaps %s", c, e.hostOffset(), what)
			s.mu.Unlock()
			return err
		}
	}
	if in {
		w.inPlaceN[c]++
		s.mu.Unlock()
		err := w.pwriteData(p, e.hostOffset()+skip)
		s.mu.Lock()
		w.endInPlace(c)
		s.mu.Unlock()
		return err
	}
	// Copy-on-write into a cluster of our own. Claim the cluster (new
	// writers wait), then let in-place writes already running finish:
	// a merge reads bytes they may be writing.
	ch := make(chan struct{})
	w.inflight[c] = ch
	w.waitInPlace(c)
	reuse := !e.compressed() && w.hasHost(e) && e.copied()
	var host int64
	fresh := false
	if reuse {
		host = e.hostOffset()
	} else {
		host, fresh, err = w.allocDataCluster(c)
	}
	s.mu.Unlock()
	if err != nil {
		s.mu.Lock()
		w.endInflight(c)
		s.mu.Unlock()
		return err
	}
	ne, werr := w.cowWrite(c, e, host, reuse, fresh, p, skip)
	s.mu.Lock()
	defer s.mu.Unlock()
	defer w.endInflight(c)
	if werr != nil {
		if !reuse {
			w.releaseDataCluster(host)
		}
		return werr
	}
	// The new mapping may reach the disk only after this data has.
	w.unsyncedData = true
	if err := w.setL2(c, ne); err != nil {
		return err
	}
	if !reuse {
		w.freeEntry(e)
	}
	return nil
}

// endInPlace ends an in-place write on guest cluster c. Caller holds s.mu.
func (w *writer) endInPlace(c int64) {
	w.inPlaceN[c]--
	if w.inPlaceN[c] > 0 {
		return
	}
	delete(w.inPlaceN, c)
	if ch := w.drained[c]; ch != nil {
		delete(w.drained, c)
		close(ch)
	}
}

// waitInPlace blocks (releasing s.mu) until no in-place write runs on
// guest cluster c. Caller holds s.mu and has claimed c in inflight, so no
// new in-place write starts meanwhile.
func (w *writer) waitInPlace(c int64) {
	for w.inPlaceN[c] > 0 {
		ch := w.drained[c]
		if ch == nil {
			ch = make(chan struct{})
			w.drained[c] = ch
		}
		w.img.s.mu.Unlock()
		<-ch
		w.img.s.mu.Lock()
	}
}

// inPlace reports whether a write of n bytes at skip can overwrite the
// cluster of entry e directly.
func (w *writer) inPlace(e l2Entry, skip, n int64) (bool, error) {
	g := &w.img.s.g
	if e.compressed() || !e.copied() || !w.hasHost(e) {
		return false, nil
	}
	if g.subclusters == 1 {
		k, err := e.kind(g, 0)
		if err != nil {
			return false, w.img.s.corruptf("%v", err)
		}
		return k == kindNormal, nil
	}
	first := int(skip >> g.subclusterBits)
	last := int((skip + n - 1) >> g.subclusterBits)
	for i := first; i <= last; i++ {
		if !e.subAllocated(i) {
			return false, nil
		}
	}
	return true, nil
}

func (w *writer) pwriteData(p []byte, host int64) error {
	s := w.img.s
	if _, err := s.dataF.WriteAt(p, host); err != nil {
		return fmt.Errorf("write data at %#x of %s: %w", host, s.dataName(), err)
	}
	return nil
}

// cowWrite writes p at skip into host cluster host, filling the rest of the
// region it must write with the cluster's old content (entry e), and returns
// the new L2 entry. With extended L2 only the touched subclusters are written
// when the old cluster is not a whole one (unallocated, zero).
func (w *writer) cowWrite(c int64, e l2Entry, host int64, reuse, fresh bool, p []byte, skip int64) (l2Entry, error) {
	img := w.img
	g := &img.s.g
	cs := g.clusterSize
	end := skip + int64(len(p))
	from, to := int64(0), cs
	ne := l2Entry{word: uint64(host) | oflagCopied}
	if g.subclusters > 1 {
		sub := int64(1) << g.subclusterBits
		first, last := skip/sub, (end-1)/sub
		touched := uint64(1)<<(last+1) - uint64(1)<<first
		switch {
		case e.compressed() || w.hasHost(e) && !reuse:
			// Copy the whole cluster (compressed or shared): all
			// subclusters the old entry had as data stay data.
			if e.compressed() {
				ne.bitmap = 0xffffffff
			} else {
				alloc := e.bitmap & 0xffffffff
				ne.bitmap = alloc | touched | (e.bitmap>>32&^touched&^alloc)<<32
				from, to = 0, cs
			}
		default:
			from, to = first*sub, (last+1)*sub
			zero := e.bitmap >> 32 &^ touched
			alloc := e.bitmap&0xffffffff | touched
			if !w.hasHost(e) {
				alloc = touched
			}
			ne.bitmap = alloc | zero<<32
		}
	}
	if from == skip && to == end || fresh && w.readsZero(e, from, to) {
		// Nothing around the write to preserve: the cluster is fresh
		// (reads as zeros) and so was the old content.
		return ne, w.pwriteData(p, host+skip)
	}
	bp := img.s.getBuf()
	defer img.s.putBuf(bp)
	buf := (*bp)[from:to]
	if err := img.readEntry(c, e, buf[:skip-from], from); err != nil {
		return ne, err
	}
	copy(buf[skip-from:], p)
	if err := img.readEntry(c, e, buf[end-from:], end); err != nil {
		return ne, err
	}
	return ne, w.pwriteData(buf, host+from)
}

// readEntry reads dst from guest cluster c at in-cluster offset inOff as the
// L2 entry e maps it (the cluster's current content).
func (img *Image) readEntry(c int64, e l2Entry, dst []byte, inOff int64) error {
	if len(dst) == 0 {
		return nil
	}
	s := img.s
	g := &s.g
	guest := c<<g.clusterBits + inOff
	if e.compressed() {
		s.mu.Lock()
		blk, err := s.zc.Get(e.word)
		if err == nil {
			copy(dst, blk.Data[inOff:])
		}
		s.mu.Unlock()
		return err
	}
	step := g.clusterSize
	if g.subclusters > 1 {
		step = 1 << g.subclusterBits
	}
	for done := int64(0); done < int64(len(dst)); {
		o := inOff + done
		l := min(step-o%step, int64(len(dst))-done)
		part := dst[done : done+l]
		k, err := e.kind(g, int(o/step))
		if err != nil {
			return s.corruptf("%v", err)
		}
		switch k {
		case kindZero:
			clear(part)
		case kindNormal:
			if err := preadFull(s.dataF, part, e.hostOffset()+o); err != nil {
				return fmt.Errorf("read data at %#x of %s: %w", e.hostOffset()+o, s.dataName(), err)
			}
		case kindUnallocated:
			if s.backing != nil {
				if err := s.backing.readAt(part, guest+done); err != nil {
					return err
				}
			} else {
				clear(part)
			}
		}
		done += l
	}
	return nil
}

// readsZero reports whether entry e's content in [from, to) is all zeros
// without reading it (zero flags, or unallocated with no backing file).
func (w *writer) readsZero(e l2Entry, from, to int64) bool {
	g := &w.img.s.g
	if e.compressed() {
		return false
	}
	step := g.clusterSize
	if g.subclusters > 1 {
		step = 1 << g.subclusterBits
	}
	for o := from - from%step; o < to; o += step {
		k, err := e.kind(g, int(o/step))
		if err != nil || k == kindNormal || k == kindUnallocated && w.img.s.backing != nil {
			return false
		}
	}
	return true
}

func (s *fileState) markCorrupt(msg string) {
	if s.corrupt {
		return
	}
	s.corrupt = true
	s.warn(s.path + ": corrupt metadata: " + msg + "; further writes refused")
	if s.ro || s.hdr.Version < 3 {
		return
	}
	s.hdr.IncompatibleFeatures |= IncompatCorrupt
	if _, err := s.f.WriteAt(s.hdr.encode(), 0); err == nil {
		_ = s.syncMeta()
	}
}
