// Reading compressed clusters (zlib and zstd): the decompressed-cluster
// cache's loader, and parallel inflation without the lock for large reads.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(1<<25))
	if err != nil {
		panic(err) // only invalid options can fail
	}
	return d
}}

// flateReaders keeps inflaters for reuse: a new one allocates its window
// and tables (about 35 KB), which a compressed 4 KiB read otherwise paid.
var flateReaders sync.Pool

// loadCompressed is the decompressed-cluster cache's loader: key is the L2
// entry of a compressed cluster. Caller holds s.mu.
func (s *fileState) loadCompressed(key uint64, out []byte) error {
	err := s.decompressCluster(key, out)
	var pe *pastEOF
	if errors.As(err, &pe) {
		return s.corruptf("%s", pe.msg)
	}
	return err
}

// pastEOF marks a compressed descriptor pointing past the end of the file:
// metadata corruption, which the caller records under the lock.
type pastEOF struct{ msg string }

func (e *pastEOF) Error() string { return e.msg }

// decompressCluster inflates the compressed cluster described by L2 entry
// key into out. It touches no shared state, so it runs without s.mu.
func (s *fileState) decompressCluster(key uint64, out []byte) error {
	host, length := compressedDescriptor(key, s.g.clusterBits)
	fsize, err := s.fileSize()
	if err != nil {
		return err
	}
	if host >= fsize {
		return &pastEOF{fmt.Sprintf("compressed cluster at %#x lies past the end of the file", host)}
	}
	// The length is an upper bound that often runs into the next cluster or
	// past EOF: read what is there.
	length = min(length, fsize-host)
	bp := s.getBuf()
	defer s.putBuf(bp)
	in := (*bp)[:length]
	if _, err := s.f.ReadAt(in, host); err != nil && err != io.EOF {
		return fmt.Errorf("read compressed cluster at %#x of %s: %w", host, s.path, err)
	}
	if err := decompress(s.compr, in, out); err != nil {
		return &FormatError{File: s.path, Msg: fmt.Sprintf("compressed cluster at %#x: %v", host, err)}
	}
	return nil
}

// readCompressed fills the compressed runs of a read. Cached clusters are
// copied under the lock; the others are inflated in parallel without it
// (a 1 MiB read of 64 KiB clusters holds 16), then cached.
func (img *Image) readCompressed(p []byte, off int64, runs []run) error {
	s := img.s
	var missing []uint64
	seen := map[uint64]bool{}
	s.mu.Lock()
	for _, r := range runs {
		if r.kind != kindCompressed {
			continue
		}
		if blk := s.zc.Lookup(r.desc); blk != nil {
			copy(p[r.off-off:r.off-off+r.length], blk.Data[r.skip:r.skip+r.length])
			continue
		}
		if !seen[r.desc] {
			seen[r.desc] = true
			missing = append(missing, r.desc)
		}
	}
	s.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	bufs := make([][]byte, len(missing))
	for i := range bufs {
		bp := s.getBuf()
		defer s.putBuf(bp)
		bufs[i] = (*bp)[:s.g.clusterSize]
	}
	errs := make([]error, len(missing))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, d := range missing {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			errs[i] = s.decompressCluster(d, bufs[i])
			<-sem
		}()
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	index := map[uint64]int{}
	for i, d := range missing {
		if err := errs[i]; err != nil {
			var pe *pastEOF
			if errors.As(err, &pe) {
				return s.corruptf("%s", pe.msg)
			}
			return err
		}
		index[d] = i
		if blk, err := s.zc.Put(d); err == nil {
			copy(blk.Data, bufs[i])
		}
	}
	for _, r := range runs {
		if i, ok := index[r.desc]; ok && r.kind == kindCompressed {
			copy(p[r.off-off:r.off-off+r.length], bufs[i][r.skip:r.skip+r.length])
		}
	}
	return nil
}

// decompress fills all of out from the compressed stream in (trailing bytes
// beyond the stream are ignored).
func decompress(typ uint8, in, out []byte) error {
	var r io.Reader
	switch typ {
	case CompressionZlib:
		var fr io.ReadCloser
		if v, ok := flateReaders.Get().(io.ReadCloser); ok {
			fr = v
			if err := fr.(flate.Resetter).Reset(bytes.NewReader(in), nil); err != nil {
				return fmt.Errorf("deflate: %w", err)
			}
		} else {
			fr = flate.NewReader(bytes.NewReader(in))
		}
		defer flateReaders.Put(fr)
		r = fr
	case CompressionZstd:
		d := zstdDecoders.Get().(*zstd.Decoder)
		defer zstdDecoders.Put(d)
		if err := d.Reset(bytes.NewReader(in)); err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		r = d
	default:
		return fmt.Errorf("unknown compression type %d", typ)
	}
	if _, err := io.ReadFull(r, out); err != nil {
		return fmt.Errorf("decompression produced less than a cluster: %w", err)
	}
	return nil
}
