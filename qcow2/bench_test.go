// Hot-path benchmarks of the mapper (no FUSE): go test -run '^$' -bench .
// ./qcow2/. Neither make test nor CI runs them; `make bench` compares
// whole-stack figures with QEMU.

package qcow2

import (
	"fmt"
	"math/rand"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

func benchImage(b *testing.B, opts string, size int64, fill bool) *Image {
	b.Helper()
	needQEMU(b)
	path := filepath.Join(b.TempDir(), "b.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size)).CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	im, err := Open(path, OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if fill {
		buf := make([]byte, 1<<20)
		for off := int64(0); off < size; off += 1 << 20 {
			if _, err := im.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Cleanup(func() { im.Close() })
	return im
}

func BenchmarkRandomRead4K(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewSource(1))
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := im.ReadAt(buf, rng.Int63n(size/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRandomRead4KParallel is BenchmarkRandomRead4K from GOMAXPROCS
// goroutines (-cpu sets how many) over the same image: every L2 slice is
// cached (the fill loaded them all), so it measures what concurrent
// readers pay for the metadata lock and the cache's hit path.
func BenchmarkRandomRead4KParallel(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	var seed atomic.Int64
	b.SetBytes(4096)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		rng := rand.New(rand.NewSource(seed.Add(1)))
		for pb.Next() {
			if _, err := im.ReadAt(buf, rng.Int63n(size/4096)*4096); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkRandomOverwrite4K(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewSource(1))
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := im.WriteAt(buf, rng.Int63n(size/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllocatingWrite4K(b *testing.B) {
	const size = 64 << 30
	im := benchImage(b, "cluster_size=65536", size, false)
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewSource(1))
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := im.WriteAt(buf, rng.Int63n(size/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSequentialRead1M(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	buf := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := int64(i) % (size >> 20) << 20
		if _, err := im.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMapRuns(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		im.s.mu.Lock()
		_, err := im.mapRuns(int64(i%255)<<20, 1<<20, nil)
		im.s.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMapRuns4KParallel maps random 4 KiB ranges of a fully cached
// image from GOMAXPROCS goroutines, under the metadata lock's write side
// (as every read did before the shared path) and under its read side (the
// shared path): the lock and cache cost alone, without the pread.
func BenchmarkMapRuns4KParallel(b *testing.B) {
	const size = 256 << 20
	im := benchImage(b, "cluster_size=65536", size, true)
	for _, shared := range []bool{false, true} {
		name := "exclusive"
		if shared {
			name = "shared"
		}
		b.Run(name, func(b *testing.B) {
			var seed atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewSource(seed.Add(1)))
				var stack [16]run
				for pb.Next() {
					off := rng.Int63n(size/4096) * 4096
					var err error
					if shared {
						im.s.mu.RLock()
						_, err = im.mapRunsIn(off, 4096, stack[:0], true)
						im.s.mu.RUnlock()
					} else {
						im.s.mu.Lock()
						_, err = im.mapRuns(off, 4096, stack[:0])
						im.s.mu.Unlock()
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
