// Tests of refcount table growth under many allocations (QEMU checks the
// result) and of concurrent writers and readers on the same clusters.

package qcow2

import (
	"bytes"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"
)

// TestRefcountTableGrowth fills images whose refcount table must grow (and
// move) several times, then has QEMU check them.
func TestRefcountTableGrowth(t *testing.T) {
	needQEMU(t)
	for _, opts := range []string{
		"cluster_size=512,refcount_bits=64",
		"cluster_size=512,refcount_bits=1",
		"cluster_size=1024,refcount_bits=16,compat=0.10",
	} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "g.qcow2")
			const size = 24 << 20
			wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size))
			im, err := Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, size)
			rng := rand.New(rand.NewSource(1))
			rng.Read(want)
			for off := 0; off < size; off += 1 << 20 {
				if _, err := im.WriteAt(want[off:off+1<<20], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, path)
			if !bytes.Equal(qemuRaw(t, path), want) {
				t.Fatal("content differs")
			}
		})
	}
}

// TestConcurrentWrites races writers on the same unallocated clusters and
// readers against them; every byte must end as one writer's, never lost.
func TestConcurrentWrites(t *testing.T) {
	needQEMU(t)
	for _, opts := range []string{"cluster_size=65536", "cluster_size=65536,extended_l2=on", "cluster_size=4096"} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "c.qcow2")
			const size = 8 << 20
			wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size))
			im, err := Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// Each worker owns every 4th 4 KiB block, so all four race
			// on allocating the same clusters.
			const workers = 4
			var wg sync.WaitGroup
			errs := make(chan error, workers*2)
			for wk := 0; wk < workers; wk++ {
				wg.Add(2)
				go func(wk int) {
					defer wg.Done()
					buf := bytes.Repeat([]byte{byte(wk + 1)}, 4096)
					for blk := wk; blk < size/4096; blk += workers {
						if _, err := im.WriteAt(buf, int64(blk)*4096); err != nil {
							errs <- err
							return
						}
						if blk%97 == 0 {
							if err := im.Flush(); err != nil {
								errs <- err
								return
							}
						}
					}
				}(wk)
				go func(wk int) {
					defer wg.Done()
					// Readers see zeros or the owner's pattern, never garbage.
					buf := make([]byte, 4096)
					rng := rand.New(rand.NewSource(int64(wk)))
					for i := 0; i < 2000; i++ {
						blk := rng.Intn(size / 4096)
						if _, err := im.ReadAt(buf, int64(blk)*4096); err != nil {
							errs <- err
							return
						}
						owner := byte(blk%workers + 1)
						for _, b := range buf {
							if b != 0 && b != owner {
								errs <- fmt.Errorf("block %d: read %#x, owner writes %#x", blk, b, owner)
								return
							}
						}
					}
				}(wk)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, path)
			got := qemuRaw(t, path)
			for blk := 0; blk < size/4096; blk++ {
				want := byte(blk%workers + 1)
				for _, b := range got[blk*4096 : (blk+1)*4096] {
					if b != want {
						t.Fatalf("block %d: %#x, want %#x", blk, b, want)
					}
				}
			}
		})
	}
}
