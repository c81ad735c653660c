// Offline maintenance of an image (the qemu-img-like commands: snapshot,
// commit, rebase, resize, check and repair, bitmap, backup, convert, create)
// runs in a maintenance session: the image opened read-write with QEMU's
// writer locks held, so nothing else uses it, and the metadata mutex held for
// the whole operation. A session releases the mutex only around calls that
// take it themselves (unlocked, e.g. for WriteAt). The maint_*.go files hold
// the operations; this file the session.

package qcow2

import (
	"fmt"
	"strings"
)

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
	s   *fileState
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
func (s *fileState) hasValidBitmaps() bool { return s.hasBitmapsExtension() }

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
