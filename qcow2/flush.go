package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Flush makes every completed write durable: dirty metadata goes to disk in
// dependency order — refcount blocks (and refcount table entries), then L2
// tables, then L1 entries, each stage behind a barrier — and the files are
// synced. Refcount decrements queued since the last flush are applied last,
// once no on-disk L2 entry references the clusters any more.
func (img *Image) Flush() error {
	w := img.w
	if w == nil {
		return nil
	}
	s := img.s
	w.ioLock.Lock()
	defer w.ioLock.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return w.flushLocked()
}

func (w *writer) flushLocked() error {
	s := w.img.s
	if s.corrupt {
		// Never write metadata through an image found corrupt; data writes
		// that completed still get synced.
		return s.dataF.Datasync()
	}
	if err := w.extendFile(); err != nil {
		return err
	}
	toFree := w.pending
	w.pending = nil
	metaDirty := s.rc.NumDirty() > 0 || len(w.rc.tableDirty) > 0
	if metaDirty {
		if err := s.rc.Flush(); err != nil {
			return err
		}
		if err := w.writeRefcountTableEntries(); err != nil {
			return err
		}
		if err := s.syncMeta(); err != nil {
			return err
		}
	}
	if s.dataF != s.f {
		if err := s.dataF.Datasync(); err != nil {
			return fmt.Errorf("sync %s: %w", s.dataFilePath, err)
		}
	}
	if s.l2c.NumDirty() > 0 {
		if err := s.l2c.Flush(); err != nil {
			return err
		}
		if err := s.syncMeta(); err != nil {
			return err
		}
	}
	if len(w.l1Dirty) > 0 {
		if err := w.writeL1(); err != nil {
			return err
		}
		if err := s.syncMeta(); err != nil {
			return err
		}
	}
	if len(toFree) > 0 {
		if err := w.applyFrees(toFree); err != nil {
			return err
		}
		if err := s.rc.Flush(); err != nil {
			return err
		}
	}
	return s.syncMeta()
}

// extendFile grows the image file to cover every allocated cluster, so that
// no L2 entry or table points past its end (some are written only partly).
func (w *writer) extendFile() error {
	s := w.img.s
	want := w.end << s.g.clusterBits
	if want <= w.fileLen {
		return nil
	}
	size, err := s.fileSize()
	if err != nil {
		return err
	}
	if size < want {
		if err := s.f.Truncate(want); err != nil {
			return fmt.Errorf("extend %s: %w", s.path, err)
		}
		size = want
	}
	w.fileLen = size
	return nil
}

// writeL1 writes the dirty L1 entries, a 512-byte sector at a time.
func (w *writer) writeL1() error {
	img := w.img
	s := img.s
	sectors := map[int64]bool{}
	for i := range w.l1Dirty {
		sectors[i/64] = true
	}
	buf := make([]byte, 512)
	for sec := range sectors {
		first := sec * 64
		n := min(int64(64), int64(len(img.l1))-first)
		for j := int64(0); j < n; j++ {
			binary.BigEndian.PutUint64(buf[j*8:], img.l1[first+j])
		}
		if _, err := s.f.WriteAt(buf[:n*8], img.l1Offset+first*8); err != nil {
			return fmt.Errorf("write L1 table of %s: %w", s.path, err)
		}
	}
	clear(w.l1Dirty)
	return nil
}

// applyFrees decrements the refcounts of clusters whose last reference went
// away; clusters that become free get their host space released.
func (w *writer) applyFrees(frees []pendingFree) error {
	s := w.img.s
	for _, f := range frees {
		for cl := f.cluster; cl < f.cluster+f.count; cl++ {
			rc, err := w.refcount(cl)
			if err != nil {
				return err
			}
			if rc == 0 {
				s.markCorrupt(fmt.Sprintf("freeing cluster %#x whose refcount is already 0", cl<<s.g.clusterBits))
				return ErrCorrupt
			}
			if err := w.setRefcount(cl, rc-1); err != nil {
				return err
			}
			if rc == 1 {
				// The cache may still hold it as an L2 table or refcount block.
				slice := l2SliceSize(s.g)
				for so := int64(0); so < s.g.clusterSize; so += slice {
					s.l2c.Drop(uint64(cl<<s.g.clusterBits + so))
				}
				_ = s.f.PunchHole(cl<<s.g.clusterBits, s.g.clusterSize)
				if cl < w.freeHint {
					w.freeHint = cl
				}
			}
		}
	}
	return nil
}

// close flushes everything and leaves the image clean; closing twice is
// not an error.
func (w *writer) close() error {
	if err := w.img.Flush(); !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}
