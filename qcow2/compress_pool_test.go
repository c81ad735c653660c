// The decompressor pool: a compressed read reuses an inflater instead of
// allocating a window and tables each time.

package qcow2

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/flate"
)

// A compressed read reuses its inflater: decompressing a deflate cluster
// allocates a few small objects, not a new window and tables each time.
func TestDecompressReusesInflater(t *testing.T) {
	const size = 64 << 10
	plain := make([]byte, size)
	rng := rand.New(rand.NewSource(1))
	for i := range plain {
		plain[i] = byte(rng.Intn(4)) // compressible
	}
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	w.Write(plain)
	w.Close()
	in := append(b.Bytes(), make([]byte, 512)...) // trailing bytes, as in an image
	out := make([]byte, size)
	for i := 0; i < 3; i++ {
		clear(out)
		if err := decompress(CompressionZlib, in, out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, plain) {
			t.Fatalf("round %d: wrong data", i)
		}
	}
	allocs := testing.AllocsPerRun(20, func() {
		if err := decompress(CompressionZlib, in, out); err != nil {
			t.Fatal(err)
		}
	})
	// The pool may drop a reader at a GC; on average the reads allocate
	// little: a bytes.Reader and the io.ReadFull bookkeeping.
	if allocs > 5 {
		t.Errorf("decompress allocates %.0f objects per call, want a handful (inflater not reused?)", allocs)
	}
}
