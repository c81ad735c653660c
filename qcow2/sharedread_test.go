// A model test of the read path's shared mapping (s.mu's read lock, cached
// L2 slices only) against concurrent writers: readers read blocks while
// their owners rewrite, zero and discard them, with an L2 cache of two
// slices (so slices are evicted, written back and reloaded all the time)
// and flushes in between. Every word a reader sees must belong to the
// block it read and to a version that was current at some point during
// the read. Run under -race too: readers share the lock, writers exclude
// them, and the race detector checks that nothing they share escapes it.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

func TestSharedReadsDuringWrites(t *testing.T) {
	needQEMU(t)
	for _, tc := range []struct {
		name string
		opts string
		size int64
	}{
		{"4k", "cluster_size=4096", 8 << 20},
		{"64k-extl2", "cluster_size=65536,extended_l2=on", 40 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) { sharedReadRound(t, tc.opts, tc.size) })
	}
}

// blockWord is what version v of block b holds in every 8-byte word;
// versions divisible by 5 are write-zeroes or discards (zeros), as is
// version 0, the empty image.
func blockWord(b, v int64) uint64 {
	if v%5 == 0 {
		return 0
	}
	return uint64(b)<<32 | uint64(v)
}

func sharedReadRound(t *testing.T, opts string, size int64) {
	const (
		bs        = 4096
		writers   = 3
		readers   = 3
		perWriter = 400
	)
	path := filepath.Join(t.TempDir(), "s.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size))
	im, err := Open(path, OpenOptions{CacheSize: 2 * 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	// Use blocks spread over every L2 slice: a stride of 9 blocks
	// from a start that is not slice-aligned.
	var blocks []int64
	for b := int64(5); b*bs < size; b += 9 {
		blocks = append(blocks, b)
	}
	started := make([]atomic.Int64, len(blocks))
	done := make([]atomic.Int64, len(blocks))
	var wg, rg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, writers+readers+1)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			buf := make([]byte, bs)
			for i := 0; i < perWriter; i++ {
				// Writer w owns the blocks i with i%writers == w.
				k := rng.Intn((len(blocks)-w+writers-1)/writers)*writers + w
				b := blocks[k]
				v := started[k].Load() + 1
				started[k].Store(v)
				var err error
				switch {
				case v%10 == 0:
					err = im.Discard(b*bs, bs)
				case v%5 == 0:
					err = im.WriteZeroes(b*bs, bs)
				default:
					word := blockWord(b, v)
					for j := 0; j < bs; j += 8 {
						binary.LittleEndian.PutUint64(buf[j:], word)
					}
					_, err = im.WriteAt(buf, b*bs)
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d: block %d version %d: %w", w, b, v, err)
					return
				}
				done[k].Store(v)
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			if err := im.Flush(); err != nil {
				errs <- fmt.Errorf("flush: %w", err)
				return
			}
		}
	}()
	var reads atomic.Int64
	for r := 0; r < readers; r++ {
		rg.Add(1)
		go func(r int) {
			defer rg.Done()
			rng := rand.New(rand.NewSource(100 + int64(r)))
			buf := make([]byte, bs)
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := rng.Intn(len(blocks))
				b := blocks[k]
				lo := done[k].Load()
				if _, err := im.ReadAt(buf, b*bs); err != nil {
					errs <- fmt.Errorf("reader %d: block %d: %w", r, b, err)
					return
				}
				hi := started[k].Load()
				reads.Add(1)
				for j := 0; j < bs; j += 8 {
					got := binary.LittleEndian.Uint64(buf[j:])
					ok := false
					for v := lo; v <= hi && !ok; v++ {
						ok = got == blockWord(b, v)
					}
					if !ok {
						errs <- fmt.Errorf("reader %d: block %d byte %d: word %#x, want a version in [%d, %d]", r, b, j, got, lo, hi)
						return
					}
				}
			}
		}(r)
	}
	wg.Wait()
	close(stop)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("no read ran")
	}
	// And the final content.
	for k, b := range blocks {
		buf := make([]byte, bs)
		if _, err := im.ReadAt(buf, b*bs); err != nil {
			t.Fatal(err)
		}
		if got, want := binary.LittleEndian.Uint64(buf), blockWord(b, done[k].Load()); got != want {
			t.Fatalf("block %d: %#x, want %#x", b, got, want)
		}
	}
	t.Logf("%d reads judged, %d L2 misses", reads.Load(), im.s.l2c.Misses)
}
