package qcow2

import "sync"

// writer holds the state of a writable image.
type writer struct {
	img *Image
	// ioLock is held shared by every data I/O and exclusively by operations
	// that free clusters, so a freed cluster is never reused under a read or
	// write still in flight.
	ioLock sync.RWMutex
}

func newWriter(img *Image) *writer { return &writer{img: img} }

func (w *writer) close() error { return nil }

func (s *shared) markCorrupt(msg string) {
	s.warn(s.path + ": corrupt metadata: " + msg)
}

// WriteAt writes p at guest offset off. (Write path: being implemented.)
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.w == nil {
		return 0, ErrReadOnly
	}
	return 0, ErrReadOnly
}

// WriteZeroes makes [off, off+n) read as zeros, using the format's zero
// flags rather than writing zero bytes wherever it can.
func (img *Image) WriteZeroes(off, n int64) error { return ErrReadOnly }

// Discard deallocates [off, off+n); the range reads back as zeros.
func (img *Image) Discard(off, n int64) error { return ErrReadOnly }

// Flush writes back dirty metadata in dependency order and syncs the files.
func (img *Image) Flush() error { return nil }
