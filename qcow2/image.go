// Package qcow2 reads and writes QCOW2 images (and raw backing files) the
// way QEMU does, and runs the offline maintenance of qemu-img. This file
// holds Image and the state it shares with its snapshot views: the files,
// the L2 cache, metadata write-back and the sticky fdatasync error.
package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/qcow2fs/qcow2fs/cache"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// layer is one readable level of a backing chain: a qcow2 image or a raw file.
type layer interface {
	// readAt fills all of p; bytes past the layer's size read as zeros.
	readAt(p []byte, off int64) error
	Size() int64
	// blockStatus describes [off, off+n) (clipped to the layer's size
	// by the caller) with Depth relative to this layer.
	blockStatus(off, n int64) ([]Extent, error)
	Info() *Info
	Close() error
}

// fileState is the state of one image file, shared by the active view and the
// read-only views of its internal snapshots.
type fileState struct {
	path   string
	f      hostFile // the image file
	dataF  hostFile // where guest data lives: f, or the external data file
	ro     bool
	warn   func(string)
	hdr    Header
	exts   []Extension
	g      geometry
	compr  uint8
	extL2  bool
	rawExt bool // external data file with data_file_raw

	featureNames []FeatureName
	backingName  string
	backingPath  string
	backingFmt   string
	dataFileName string
	dataFilePath string
	bitmaps      []string

	backing layer
	snaps   []snapshot

	// mu serialises metadata: the caches, L1/refcount tables, allocation.
	// Everything that changes them holds it exclusively. The read path
	// alone maps under the read lock (mapRunsIn, shared): it only reads
	// the L1 table, the header and cached L2 slices (cache.LookupShared).
	mu        sync.RWMutex
	l2c       *cache.Cache // L2 table slices, keyed by host offset
	zc        *cache.Cache // decompressed clusters, keyed by compressed descriptor
	refBlocks *cache.Cache // refcount blocks, keyed by host offset

	// bufs recycles scratch buffers of maxScratch bytes: copy-on-write
	// merges and compressed clusters (input and output) on the I/O path.
	bufs sync.Pool

	closed  bool
	corrupt bool // metadata found inconsistent: writes refused

	// metaUnsynced: metadata was written since the last image-file sync.
	metaUnsynced atomic.Bool
	// syncErr is the first failed fdatasync: after it nobody knows what
	// reached the disk, so every later Flush reports it (errseq-style).
	syncErrMu sync.Mutex
	syncErr   error
	refs      int // views open on this file
}

// Image is an open qcow2 image (or a read-only view of one of its internal
// snapshots). Its methods are safe for concurrent use.
type Image struct {
	s        *fileState
	ro       bool
	size     int64
	l1       []uint64
	l1Offset int64
	snapshot string // name of the snapshot this view shows, "" for the active image
	w        *writer
}

func (s *fileState) closeFiles() {
	if s.backing != nil {
		s.backing.Close()
	}
	if s.dataF != nil && s.dataF != s.f {
		s.dataF.Close()
	}
	s.f.Close()
}

func (s *fileState) fileSize() (int64, error) {
	st, err := s.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// getBuf returns a scratch buffer of at least two clusters plus a sector
// (the longest compressed cluster a descriptor can describe); putBuf
// recycles it.
func (s *fileState) getBuf() *[]byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 2*s.g.clusterSize+512)
	return &b
}

func (s *fileState) putBuf(b *[]byte) { s.bufs.Put(b) }

// DefaultCacheSize is the default L2 cache budget: it maps 128 GiB of a
// 64 KiB-cluster image at once, and random I/O over larger images costs one
// 4 KiB slice read (from the host page cache, as a rule) per miss. It stays
// small so that the daemon's peak RSS stays low (a 1 TiB image would need
// 128 MiB of L2 tables to map at once).
const DefaultCacheSize = 16 << 20

// l2SliceSize is the unit in which L2 tables are cached: 4 KiB slices so a
// miss reads 4 KiB, not a whole (up to 2 MiB) table.
func l2SliceSize(g geometry) int64 { return min(g.clusterSize, 4096) }

func (s *fileState) loadBlock(key uint64, buf []byte) error {
	n, err := s.f.ReadAt(buf, int64(key))
	if err == io.EOF && n > 0 {
		clear(buf[n:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("read metadata at %#x of %s: %w", key, s.path, err)
	}
	return nil
}

// writeBlock writes back a cached metadata block (an L2 slice or a refcount
// block), never over the fixed metadata: an image found corrupt still gets
// the blocks it cached while it was sound, but nothing that would land on
// its header or tables.
func (s *fileState) writeBlock(key uint64, buf []byte) error {
	if what := s.overlapsMetadata(int64(key), int64(len(buf)), int64(s.hdr.L1TableOffset), int64(s.hdr.L1Size)*8); what != "" {
		return s.corruptf("cached metadata block at %#x overlaps %s; not written", key, what)
	}
	s.metaUnsynced.Store(true)
	if _, err := s.f.WriteAt(buf, int64(key)); err != nil {
		return fmt.Errorf("write metadata at %#x of %s: %w", key, s.path, err)
	}
	return nil
}

// syncMeta makes every completed write to the image file durable.
func (s *fileState) syncMeta() error {
	s.metaUnsynced.Store(false)
	return s.syncFile(s.f, s.path)
}

// syncFile fdatasyncs f. A failure is remembered for good: the kernel may
// have dropped the dirty pages, so a later sync that works proves nothing.
func (s *fileState) syncFile(f hostFile, name string) error {
	if err := f.Datasync(); err != nil {
		err = fmt.Errorf("sync %s: %w", name, err)
		s.syncErrMu.Lock()
		if s.syncErr == nil {
			s.syncErr = err
		}
		s.syncErrMu.Unlock()
		return err
	}
	return nil
}

// stickyErr returns the first fdatasync failure, if any.
func (s *fileState) stickyErr() error {
	s.syncErrMu.Lock()
	defer s.syncErrMu.Unlock()
	if s.syncErr != nil {
		return fmt.Errorf("an earlier write-back failed, data may be lost: %w", s.syncErr)
	}
	return nil
}

func (s *fileState) featureList(typ uint8, bits uint64) string {
	out := ""
	for b := uint8(0); b < 64; b++ {
		if bits&(1<<b) == 0 {
			continue
		}
		name := ""
		for _, fn := range s.featureNames {
			if fn.Type == typ && fn.Bit == b {
				name = fn.Name
			}
		}
		if name == "" {
			name = builtinFeatureNames[[2]uint8{typ, b}]
		}
		if name == "" {
			name = fmt.Sprintf("unknown feature bit %d", b)
		} else {
			name = fmt.Sprintf("%s (bit %d)", imgtext.Escape(name), b)
		}
		if out != "" {
			out += ", "
		}
		out += name
	}
	return out
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Path returns the image's absolute path.
func (img *Image) Path() string { return img.s.path }

// Stat returns the fstat of the image file's descriptor (opened before
// any mount, so this never looks a path up).
func (img *Image) Stat() (os.FileInfo, error) { return img.s.f.Stat() }

// Size returns the virtual disk size in bytes.
func (img *Image) Size() int64 { return img.size }

// ClusterSize returns the cluster size in bytes.
func (img *Image) ClusterSize() int64 { return img.s.g.clusterSize }

// ReadOnly reports whether writes are refused.
func (img *Image) ReadOnly() bool { return img.ro }

// SnapshotName returns the snapshot this view shows ("" for the active image).
func (img *Image) SnapshotName() string { return img.snapshot }

// Files returns every host file the image reads: the image, its external
// data file and the whole backing chain.
func (img *Image) Files() []string {
	out := []string{img.s.path}
	if img.s.dataFilePath != "" {
		out = append(out, img.s.dataFilePath)
	}
	if b, ok := img.s.backing.(*Image); ok {
		out = append(out, b.Files()...)
	} else if r, ok := img.s.backing.(*rawLayer); ok {
		out = append(out, r.path)
	}
	return out
}

// HostBytes returns the bytes the image's files (image and external data
// file, not the backing chain) occupy on the host file system.
func (img *Image) HostBytes() int64 {
	total := img.s.f.AllocatedBytes()
	if img.s.dataF != img.s.f {
		total += img.s.dataF.AllocatedBytes()
	}
	return total
}

// Close flushes (when writable) and closes the image and its chain. Views of
// snapshots share the file; it is closed with the last view.
func (img *Image) Close() error {
	s := img.s
	var err error
	if img.w != nil {
		err = img.w.close()
	}
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	if last {
		s.closed = true
	}
	s.mu.Unlock()
	if last {
		s.closeFiles()
	}
	return err
}

var errShortRead = errors.New("short read")
