// Internal snapshot maintenance (qemu-img snapshot -c/-d/-a) and the
// writing of the snapshot table. The live form (a snapshot of a mounted
// image) runs these same functions while the mount is held between
// requests (cmd/qcow2fs/control.go).

package qcow2

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

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
func (s *fileState) findSnapshot(nameOrID string) (int, error) {
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
func (s *fileState) snapshotL1(sn *snapshot) ([]uint64, error) {
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
