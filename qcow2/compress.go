package qcow2

import (
	"bytes"
	"fmt"
	"io"
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

// loadCompressed is the decompressed-cluster cache's loader: key is the L2
// entry of a compressed cluster.
func (s *shared) loadCompressed(key uint64, out []byte) error {
	host, length := compressedDescriptor(key, s.g.clusterBits)
	fsize, err := s.fileSize()
	if err != nil {
		return err
	}
	if host >= fsize {
		return s.corruptf("compressed cluster at %#x lies past the end of the file", host)
	}
	// The length is an upper bound that often runs into the next cluster or
	// past EOF: read what is there.
	length = min(length, fsize-host)
	in := make([]byte, length)
	if _, err := s.f.ReadAt(in, host); err != nil && err != io.EOF {
		return fmt.Errorf("read compressed cluster at %#x of %s: %w", host, s.path, err)
	}
	if err := decompress(s.compr, in, out); err != nil {
		return &FormatError{File: s.path, Msg: fmt.Sprintf("compressed cluster at %#x: %v", host, err)}
	}
	return nil
}

// decompress fills all of out from the compressed stream in (trailing bytes
// beyond the stream are ignored).
func decompress(typ uint8, in, out []byte) error {
	var r io.Reader
	switch typ {
	case CompressionZlib:
		fr := flate.NewReader(bytes.NewReader(in))
		defer fr.Close()
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
