package qcow2

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// Internal snapshot maintenance (qemu-img snapshot -c/-d/-a), and the
// helpers every offline operation shares: a maintenance session on an image
// opened read-write, and reference-count updates over whole L1 trees.
//
// Refcount semantics are QEMU's: an L2 table's refcount is the number of L1
// tables (active and snapshots) pointing to it, a data cluster's the number
// of L1 trees through which it is reached; QCOW_OFLAG_COPIED on an active L1
// or L2 entry means refcount == 1. Increments may reach the disk at any
// time (a crash leaks); decrements wait until the structure that dropped the
// references is durable (writer.deferFree, applied by flushLocked).

// MaintenanceOptions are the optional settings of the long maintenance
// operations.
type MaintenanceOptions struct {
	// Progress, when set, is called now and then with the work done so far
	// and the total (in bytes of guest data or in clusters).
	Progress func(done, total int64)
}

func progressOf(opts []MaintenanceOptions) func(done, total int64) {
	for _, o := range opts {
		if o.Progress != nil {
			return o.Progress
		}
	}
	return func(int64, int64) {}
}

// maint is an image opened read-write (QEMU writer locks held, so nothing
// else uses it) for one maintenance operation; s.mu is held throughout.
type maint struct {
	img *Image
	s   *shared
	w   *writer
}

// openMaint opens the image for an operation that leaves the guest content
// as it is or restores an earlier state of it (snapshots, rebase, emptying
// a committed image): persistent bitmaps stay valid, as with QEMU.
func openMaint(path string) (*maint, error) {
	return openMaintWith(path, OpenOptions{})
}

func openMaintWith(path string, o OpenOptions) (*maint, error) {
	img, err := Open(path, o)
	if err != nil {
		return nil, err
	}
	m := &maint{img: img, s: img.s, w: img.w}
	m.s.mu.Lock()
	if err := m.w.prepareKeepBitmaps(true); err != nil {
		m.s.mu.Unlock()
		img.Close()
		return nil, nameFile(path, err)
	}
	return m, nil
}

// prepareKeepBitmaps readies the image for metadata changes like
// writer.prepare, but keeps the bitmaps autoclear bit: only autoclear bits
// this implementation does not know are cleared (as the spec requires
// before any write). rebuildDirty repairs the refcounts of a dirty image
// first. Caller holds s.mu.
func (w *writer) prepareKeepBitmaps(rebuildDirty bool) error {
	return w.prepareWith(rebuildDirty, true)
}

// hasValidBitmaps reports whether the image holds persistent bitmaps QEMU
// considers (an operation that changes guest content or size behind their
// back must not run); bitmap metadata QEMU refuses counts too.
func (s *shared) hasValidBitmaps() bool { return s.hasBitmapsExtension() }

// close ends the session: a full ordered flush (when err is nil), then the
// image is closed. It returns err or the first error of its own.
func (m *maint) close(err error) error {
	if err == nil {
		err = m.w.flushLocked()
	}
	m.s.mu.Unlock()
	if cerr := m.img.Close(); err == nil {
		err = cerr
	}
	return nameFile(m.s.path, err)
}

// nameFile makes sure an error names the image file.
func nameFile(path string, err error) error {
	if err == nil || strings.Contains(err.Error(), path) {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}

// unlocked runs fn (which takes the image's locks itself, e.g. WriteAt)
// with s.mu released.
func (m *maint) unlocked(fn func() error) error {
	m.s.mu.Unlock()
	defer m.s.mu.Lock()
	return fn()
}

// SnapshotCreate creates an internal snapshot of the image's current state,
// as `qemu-img snapshot -c NAME` does: a new unique numeric ID, the name, the
// current date, no VM state.
func SnapshotCreate(path, name string) error {
	if name == "" {
		return fmt.Errorf("%s: snapshot name must not be empty", path)
	}
	if len(name) > 0xffff {
		return fmt.Errorf("%s: snapshot name too long", path)
	}
	m, err := openMaint(path)
	if err != nil {
		return err
	}
	return m.close(m.snapshotCreate(name))
}

func (m *maint) snapshotCreate(name string) error {
	img, s, w := m.img, m.s, m.w
	if s.dataF != s.f {
		return fmt.Errorf("%s: internal snapshots are not supported with an external data file", s.path)
	}
	if len(s.snaps) >= maxSnapshots-1 {
		return fmt.Errorf("%s: too many snapshots", s.path)
	}
	maxID := uint64(0)
	for _, sn := range s.snaps {
		if sn.Name == name {
			return fmt.Errorf("%s: a snapshot named %s already exists (ID %s)", s.path, imgtext.Quote(name), imgtext.Quote(sn.ID))
		}
		if id, err := strconv.ParseUint(sn.ID, 10, 64); err == nil && id > maxID {
			maxID = id
		}
	}
	if err := w.checkTreeOverflow(img.l1); err != nil {
		return err
	}
	// 1. A copy of the active L1 table (COPIED bits cleared: they mean
	// nothing in an inactive table).
	cs := s.g.clusterSize
	n := int64(len(img.l1))
	clusters := (n*8 + cs - 1) / cs
	start, err := w.allocRun(clusters)
	if err != nil {
		return err
	}
	if n > 0 {
		raw := make([]byte, clusters*cs)
		for i, e := range img.l1 {
			binary.BigEndian.PutUint64(raw[i*8:], e&^oflagCopied)
		}
		if _, err := s.f.WriteAt(raw, start<<s.g.clusterBits); err != nil {
			return fmt.Errorf("write snapshot L1 table of %s: %w", s.path, err)
		}
	}
	// 2. One more reference on everything the active tree reaches, and the
	// COPIED flags of the (now shared) active entries cleared; durable
	// before the snapshot table points at the copy.
	if err := w.incTree(img.l1); err != nil {
		return err
	}
	if err := w.fixCopiedFlags(); err != nil {
		return err
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	// 3. The new snapshot table.
	now := time.Now()
	extra := make([]byte, 24)
	binary.BigEndian.PutUint64(extra[8:], uint64(img.size)) // disk size; VM state size and icount 0, as qemu-img writes them
	sn := snapshot{
		L1TableOffset: 0,
		L1Size:        uint32(n),
		ID:            strconv.FormatUint(maxID+1, 10),
		Name:          name,
		DateSec:       uint32(now.Unix()),
		DateNsec:      uint32(now.Nanosecond() / 1000 * 1000),
		Extra:         extra,
	}
	if n > 0 {
		sn.L1TableOffset = uint64(start << s.g.clusterBits)
	}
	snaps := append(append([]snapshot(nil), s.snaps...), sn)
	return w.writeSnapshotTable(snaps)
}

// findSnapshot returns the index of the snapshot with that name or, failing
// that, ID (the order Image.OpenSnapshot uses).
func (s *shared) findSnapshot(nameOrID string) (int, error) {
	for i := range s.snaps {
		if s.snaps[i].Name == nameOrID {
			return i, nil
		}
	}
	for i := range s.snaps {
		if s.snaps[i].ID == nameOrID {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%s: no snapshot named %s", s.path, imgtext.Quote(nameOrID))
}

// SnapshotDelete deletes an internal snapshot (by name, or failing that by
// ID): it leaves the table, then its clusters lose one reference, and active
// entries whose refcount went back to 1 get QCOW_OFLAG_COPIED again.
func SnapshotDelete(path, nameOrID string, opts ...MaintenanceOptions) error {
	m, err := openMaint(path)
	if err != nil {
		return err
	}
	return m.close(m.snapshotDelete(nameOrID, progressOf(opts)))
}

func (m *maint) snapshotDelete(nameOrID string, progress func(done, total int64)) error {
	s, w := m.s, m.w
	i, err := s.findSnapshot(nameOrID)
	if err != nil {
		return err
	}
	sn := s.snaps[i]
	l1, err := s.snapshotL1(&sn)
	if err != nil {
		return err
	}
	progress(0, 3)
	snaps := append(append([]snapshot(nil), s.snaps[:i]...), s.snaps[i+1:]...)
	if err := w.writeSnapshotTable(snaps); err != nil {
		return err
	}
	// The snapshot is gone from the table on disk: drop its references.
	if err := w.decTree(l1); err != nil {
		return err
	}
	if sn.L1Size > 0 {
		cs := s.g.clusterSize
		w.deferFree(int64(sn.L1TableOffset)>>s.g.clusterBits, (int64(sn.L1Size)*8+cs-1)/cs)
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	progress(2, 3)
	if err := w.fixCopiedFlags(); err != nil {
		return err
	}
	progress(3, 3)
	return nil
}

// snapshotL1 reads a snapshot's L1 table (where it lies was checked when
// the image was opened).
func (s *shared) snapshotL1(sn *snapshot) ([]uint64, error) {
	if sn.badL1 {
		return nil, formatErr(s.path, "snapshot %s (ID %s): %s", imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), sn.problem)
	}
	if sn.L1Size == 0 {
		return nil, nil
	}
	return s.readL1(int64(sn.L1TableOffset), int64(sn.L1Size))
}

// SnapshotApply reverts the active image to an internal snapshot (by name,
// or failing that by ID), as `qemu-img snapshot -a` does: the active L1
// table takes the snapshot's entries, the virtual size becomes the
// snapshot's disk size, and the old active state is released.
func SnapshotApply(path, nameOrID string, opts ...MaintenanceOptions) error {
	m, err := openMaint(path)
	if err != nil {
		return err
	}
	return m.close(m.snapshotApply(nameOrID, progressOf(opts)))
}

func (m *maint) snapshotApply(nameOrID string, progress func(done, total int64)) error {
	img, s, w := m.img, m.s, m.w
	i, err := s.findSnapshot(nameOrID)
	if err != nil {
		return err
	}
	sn := s.snaps[i]
	snL1, err := s.snapshotL1(&sn)
	if err != nil {
		return err
	}
	if sn.problem != "" {
		return formatErr(s.path, "snapshot %s (ID %s) cannot be applied: %s", imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), sn.problem)
	}
	size := int64(sn.diskSize(s.hdr.Size)) // (checked: at most 2^61)
	if err := w.checkTreeOverflow(snL1); err != nil {
		return err
	}
	progress(0, 4)
	// 1. An active L1 table large enough for the snapshot's.
	if err := w.growL1(max(int64(len(snL1)), s.g.l1EntriesFor(size))); err != nil {
		return err
	}
	// 2. The snapshot's tree gains the active table's reference, durably,
	// before the active table points into it.
	if err := w.incTree(snL1); err != nil {
		return err
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	progress(1, 4)
	// 3. Switch the active L1 table's content (COPIED bits clear: the
	// tables are shared until the flags are recomputed below), then the
	// size.
	newL1 := make([]uint64, len(img.l1))
	for j, e := range snL1 {
		newL1[j] = e &^ oflagCopied
	}
	raw := make([]byte, len(newL1)*8)
	for j, e := range newL1 {
		binary.BigEndian.PutUint64(raw[j*8:], e)
	}
	if _, err := s.f.WriteAt(raw, img.l1Offset); err != nil {
		return fmt.Errorf("write L1 table of %s: %w", s.path, err)
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	oldL1 := img.l1
	img.l1 = newL1
	clear(w.l1Dirty)
	if size != img.size {
		if err := m.setSize(size); err != nil {
			return err
		}
	}
	progress(2, 4)
	// 4. The old active tree loses its reference; then the flags.
	if err := w.decTree(oldL1); err != nil {
		return err
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	progress(3, 4)
	if err := w.fixCopiedFlags(); err != nil {
		return err
	}
	progress(4, 4)
	return nil
}

// writeSnapshotTable writes snaps as the new snapshot table in fresh
// clusters, switches the header to it and frees the old table. Caller
// holds s.mu.
func (w *writer) writeSnapshotTable(snaps []snapshot) error {
	s := w.img.s
	data := encodeSnapshotTable(snaps)
	if len(data) > maxSnapshotTableSz {
		return fmt.Errorf("%s: snapshot table would exceed %d bytes", s.path, maxSnapshotTableSz)
	}
	cs := s.g.clusterSize
	var off int64
	if len(snaps) > 0 {
		clusters := (int64(len(data)) + cs - 1) / cs
		start, err := w.allocRun(clusters)
		if err != nil {
			return err
		}
		off = start << s.g.clusterBits
		buf := make([]byte, clusters*cs)
		copy(buf, data)
		if _, err := s.f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write snapshot table of %s: %w", s.path, err)
		}
		// Its refcounts and content durable before the header points at it.
		if err := w.flushLocked(); err != nil {
			return err
		}
	}
	oldOff := int64(s.hdr.SnapshotsOffset)
	oldLen := int64(0)
	if s.hdr.NbSnapshots > 0 {
		oldLen = int64(len(encodeSnapshotTable(s.snaps)))
	}
	s.hdr.NbSnapshots = uint32(len(snaps))
	s.hdr.SnapshotsOffset = uint64(off)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.snaps = snaps
	if oldLen > 0 {
		first := oldOff >> s.g.clusterBits
		last := (oldOff + oldLen - 1) >> s.g.clusterBits
		w.deferFree(first, last-first+1)
	}
	return nil
}

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
func (s *shared) l2TableOf(e uint64, i int) (int64, error) {
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
func (s *shared) entryRefs(e l2Entry, fn func(cl int64) error) error {
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
	if w.rc.order >= 4 {
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
		if rc+n > w.rc.maxRefcount {
			return fmt.Errorf("%s: cluster %#x would need refcount %d, more than refcount_bits=%d can hold", w.img.s.path, cl<<w.img.s.g.clusterBits, rc+n, 1<<w.rc.order)
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
