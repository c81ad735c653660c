// Writing compressed clusters (QEMU's qcow2_co_pwritev_compressed), for
// fresh targets such as a compressed backup.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// zlibWindow is the deflate window QEMU uses for compressed clusters
// (deflateInit2 with windowBits -12; it inflates with -12 too).
const zlibWindow = 4096

var zstdEncoders = sync.Pool{New: func() any {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only invalid options can fail
	}
	return e
}}

// compressCluster compresses src with compression type typ into a new
// slice; ok is false when the result would not be smaller than limit.
func compressCluster(typ uint8, src []byte, limit int) (out []byte, ok bool, err error) {
	switch typ {
	case CompressionZlib:
		var b bytes.Buffer
		fw, err := flate.NewWriterWindow(&b, zlibWindow)
		if err != nil {
			return nil, false, err
		}
		if _, err := fw.Write(src); err != nil {
			return nil, false, err
		}
		if err := fw.Close(); err != nil {
			return nil, false, err
		}
		out = b.Bytes()
	case CompressionZstd:
		e := zstdEncoders.Get().(*zstd.Encoder)
		out = e.EncodeAll(src, nil)
		zstdEncoders.Put(e)
	default:
		return nil, false, fmt.Errorf("unknown compression type %d", typ)
	}
	return out, len(out) < limit, nil
}

// WriteCompressed writes one whole guest cluster at off (cluster-aligned;
// data is a cluster, or the rest of the disk for a last partial cluster)
// compressed with the image's compression type. Data that does not
// compress to less than a cluster is written as a normal cluster (QEMU
// compresses into a buffer of a cluster minus one byte). Compressed runs
// are packed back to back in host clusters, as QEMU packs them; a cluster already allocated is replaced (its old
// reference dropped). External data files cannot hold compressed clusters.
//
// It is CompressCluster followed by StoreCompressed; callers that compress
// many clusters in parallel call the two themselves.
func (img *Image) WriteCompressed(off int64, data []byte) error {
	cc, err := img.CompressCluster(off, data)
	if err != nil {
		return err
	}
	return img.StoreCompressed(cc)
}

// CompressedCluster is one guest cluster compressed by CompressCluster,
// ready for StoreCompressed.
type CompressedCluster struct {
	off  int64
	data []byte // the guest bytes (written as they are when z is nil)
	z    []byte // the compressed run, nil when the data does not compress
}

// Compressed says whether the cluster compressed (else StoreCompressed
// writes it as a normal cluster).
func (cc CompressedCluster) Compressed() bool { return cc.z != nil }

// CompressCluster checks a WriteCompressed of data at off and compresses
// it. It takes no lock and touches no file: any number may run at once.
// The result keeps data (not copied) until it is stored.
func (img *Image) CompressCluster(off int64, data []byte) (CompressedCluster, error) {
	if img.w == nil {
		return CompressedCluster{}, ErrReadOnly
	}
	s := img.s
	cs := s.g.clusterSize
	if off < 0 || off >= img.size || off&(cs-1) != 0 {
		return CompressedCluster{}, fmt.Errorf("compressed write at %d: %w (must start a cluster of the disk)", off, ErrOutOfRange)
	}
	if want := min(cs, img.size-off); int64(len(data)) != want {
		return CompressedCluster{}, fmt.Errorf("compressed write at %d: %d bytes, must be %d (a whole cluster)", off, len(data), want)
	}
	if s.dataF != s.f {
		return CompressedCluster{}, errors.New("compressed clusters are not supported with an external data file")
	}
	src := data
	if int64(len(data)) < cs {
		src = make([]byte, cs) // last partial cluster: padded with zeros
		copy(src, data)
	}
	z, ok, err := compressCluster(s.compr, src, int(cs))
	if err != nil {
		return CompressedCluster{}, fmt.Errorf("compress cluster at %d: %w", off, err)
	}
	if !ok {
		z = nil
	}
	return CompressedCluster{off: off, data: data, z: z}, nil
}

// StoreCompressed writes a cluster compressed by CompressCluster of this
// image: the compressed run packed after the previous one, or the data as
// a normal cluster when it did not compress. Runs are packed in the order
// they are stored.
func (img *Image) StoreCompressed(cc CompressedCluster) error {
	w := img.w
	if w == nil {
		return ErrReadOnly
	}
	s := img.s
	g := &s.g
	off, z := cc.off, cc.z
	if cc.data == nil || off < 0 || off >= img.size || off&(g.clusterSize-1) != 0 {
		return fmt.Errorf("compressed write at %d: %w (not from CompressCluster)", off, ErrOutOfRange)
	}
	if z == nil {
		_, err := img.WriteAt(cc.data, off)
		return err
	}
	if err := w.begin(off, int64(len(cc.data))); err != nil {
		return err
	}
	w.ioLock.RLock()
	defer w.ioLock.RUnlock()
	c := off >> g.clusterBits
	s.mu.Lock()
	w.waitInflight(c)
	if s.corrupt {
		s.mu.Unlock()
		return ErrCorrupt
	}
	old, err := img.lookup(c)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	ch := make(chan struct{})
	w.inflight[c] = ch
	w.waitInPlace(c)
	host, err := w.allocCompressed(int64(len(z)))
	s.mu.Unlock()
	if err == nil {
		err = w.pwriteData(z, host)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer w.endInflight(c)
	if err != nil {
		// Refcounts already raised leak at worst; nothing points here.
		return err
	}
	desc := compressedWord(host, int64(len(z)), g.clusterBits)
	s.zc.Drop(desc) // a freed run at the same place may still be cached
	// The new mapping may reach the disk only after this data has.
	w.unsyncedData = true
	if err := w.setL2(c, l2Entry{word: desc}); err != nil {
		return err
	}
	w.freeEntry(old)
	return nil
}

// compressedWord is the L2 entry of n compressed bytes at host: the
// offset, the number of 512-byte sectors after the first that the run
// touches, and the compressed flag (the subcluster bitmap stays 0).
func compressedWord(host, n int64, clusterBits uint) uint64 {
	x := 62 - (clusterBits - 8)
	sectors := uint64((host+n-1)>>9 - host>>9)
	return uint64(host) | sectors<<x | oflagCompressed
}

// allocCompressed returns the host offset for a compressed run of n bytes
// (n < cluster size), packed after the previous one in the current
// compressed cluster when possible (it may cross into the next cluster,
// taken when free), else at the start of a new cluster. Each host cluster
// the run touches gets one more reference. Caller holds s.mu.
func (w *writer) allocCompressed(n int64) (int64, error) {
	s := w.img.s
	cb := s.g.clusterBits
	cs := s.g.clusterSize
	if f := w.zFree; f != 0 {
		cur := f >> cb
		rc, err := w.refcount(cur)
		if err != nil {
			return 0, err
		}
		room := (cur+1)<<cb - f
		next := int64(0)
		if rc > 0 && rc < w.refTable.maxRefcount && n > room {
			nrc, err := w.refcount(cur + 1)
			if err != nil {
				return 0, err
			}
			if nrc == 0 {
				next = cur + 1
			}
		}
		if rc > 0 && rc < w.refTable.maxRefcount && (n <= room || next != 0) {
			if err := w.setRefcount(cur, rc+1); err != nil {
				return 0, err
			}
			if next != 0 {
				if err := w.setRefcount(next, 1); err != nil {
					return 0, err
				}
			}
			w.setZFree(f + n)
			return f, nil
		}
	}
	cl, _, err := w.allocCluster()
	if err != nil {
		return 0, err
	}
	host := cl << cb
	if n > cs {
		return 0, fmt.Errorf("compressed run of %d bytes exceeds a cluster", n)
	}
	w.setZFree(host + n)
	return host, nil
}

func (w *writer) setZFree(f int64) {
	if f&(w.img.s.g.clusterSize-1) == 0 {
		f = 0 // the cluster is full
	}
	w.zFree = f
}
