// Flush and the write-back order it follows: refcounts and data before L2
// slices, L2 before L1, deferred frees last, each stage behind a barrier.

package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Flush makes every completed write durable. The rule behind the order: a
// pointer never reaches the disk before what it points at. Refcount blocks
// and the data that new mappings expose go first, behind a barrier (see
// beforeL2WriteBack, which cache evictions run too); then L2 slices; then L1
// entries, each stage behind a barrier; refcount decrements queued since
// the last flush come last, once no on-disk L2 entry references the
// clusters any more; then the files are synced.
//
// Flush never reports success for data that is not durable: after an
// fdatasync failed it keeps failing (stickyErr), and a failed metadata
// write leaves the metadata dirty for the next Flush to retry. An image
// found corrupt still writes back the metadata it cached (writeBlock refuses
// anything that would land on the fixed metadata), so writes acknowledged
// before the corruption was seen are kept.
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
	if err := s.stickyErr(); err != nil {
		return err
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	return s.stickyErr()
}

func (w *writer) flushLocked() error {
	s := w.img.s
	if err := w.extendFile(); err != nil {
		return err
	}
	// L2 slices; the cache runs beforeL2WriteBack first.
	if err := s.l2c.Flush(); err != nil {
		return err
	}
	if len(w.l1Dirty) > 0 {
		// New L2 tables: their refcounts, and every L2 slice written
		// (now or by an earlier eviction), before L1 points at them.
		if err := w.beforeL2WriteBack(); err != nil {
			return err
		}
		if s.metaUnsynced.Load() {
			if err := s.syncMeta(); err != nil {
				return err
			}
		}
		if err := w.writeL1(); err != nil {
			return err
		}
	}
	if len(w.pending) > 0 && !s.corrupt {
		// Never free anything in an image found corrupt (leaks are safe).
		if s.metaUnsynced.Load() {
			if err := s.syncMeta(); err != nil {
				return err
			}
		}
		toFree := w.pending
		w.pending = nil
		if err := w.applyFrees(toFree); err != nil {
			return err
		}
	}
	if err := s.refBlocks.Flush(); err != nil {
		return err
	}
	return w.barrier()
}

// beforeL2WriteBack runs before any dirty L2 slice is written, by Flush or
// by an eviction: every refcount block, and every data write a dirty
// mapping may expose, must be on disk first. Caller holds s.mu.
func (w *writer) beforeL2WriteBack() error {
	wrote, err := w.writeRefcounts()
	if err != nil {
		return err
	}
	if !wrote && !w.unsyncedData {
		return nil
	}
	return w.barrier()
}

// writeRefcounts writes the dirty refcount blocks and refcount table
// entries (no barrier); wrote says whether there were any. Caller holds
// s.mu.
func (w *writer) writeRefcounts() (wrote bool, err error) {
	s := w.img.s
	if s.refBlocks.NumDirty() == 0 && len(w.refTable.tableDirty) == 0 {
		return false, nil
	}
	if err := s.refBlocks.Flush(); err != nil {
		return false, err
	}
	if err := w.writeRefcountTableEntries(); err != nil {
		return false, err
	}
	return true, nil
}

// barrier makes every completed write durable: the external data file
// first, then the image file. Caller holds s.mu.
func (w *writer) barrier() error {
	s := w.img.s
	if s.dataF != s.f {
		if err := s.syncFile(s.dataF, s.dataFilePath); err != nil {
			return err
		}
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	w.unsyncedData = false
	return nil
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
		s.metaUnsynced.Store(true)
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
				if w.zFree != 0 && cl == w.zFree>>s.g.clusterBits {
					w.zFree = 0 // the current compressed cluster is gone
				}
				if cl < w.freeHint {
					w.freeHint = cl
				}
			}
		}
	}
	return nil
}

// close flushes everything, stores the persistent bitmaps, and leaves the
// image clean; closing twice is not an error. After a failed flush the
// bitmaps stay flagged in use (inconsistent), as after a crash.
func (w *writer) close() error {
	err := w.img.Flush()
	if errors.Is(err, ErrClosed) {
		return nil
	}
	if err != nil {
		return err
	}
	return w.storeBitmapsAtClose()
}
