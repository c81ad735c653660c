// Tests of writeRun, convert's write path: one pwrite per contiguous host
// run, the same bytes and metadata as WriteAt, and the fallbacks.

package qcow2

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"
)

// countingFile records the sizes of the writes longer than min that
// reach a file (data writes; metadata writes are a table slice or less).
type countingFile struct {
	hostFile
	min   int
	mu    sync.Mutex
	sizes []int
}

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	if len(p) > c.min {
		c.mu.Lock()
		c.sizes = append(c.sizes, len(p))
		c.mu.Unlock()
	}
	return c.hostFile.WriteAt(p, off)
}

// TestWriteRun: convert's writeRun writes a run of fresh whole clusters
// with one pwrite (image file or external data file), sets every
// subcluster allocated with extended L2, and falls back to WriteAt for
// anything else (partial clusters, allocated or compressed ones) with the
// same result; qemu-img reads what was written and checks the image clean.
func TestWriteRun(t *testing.T) {
	needQEMU(t)
	const size = 8 << 20
	for _, tc := range []struct {
		name, opts string
		dataFile   bool
	}{
		{name: "64k", opts: "cluster_size=65536"},
		{name: "extended-l2", opts: "cluster_size=65536,extended_l2=on"},
		{name: "512", opts: "cluster_size=512"},
		{name: "data-file", opts: "cluster_size=4096", dataFile: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := tc.opts
			if tc.dataFile {
				opts += ",data_file=" + filepath.Join(dir, "t.data")
			}
			path := createImage(t, dir, "t.qcow2", size, opts)
			// Something there already: an allocated cluster, a
			// compressed one, a zero cluster, at 2 MiB.
			ops := []ioOp{write(0x11, 2<<20, 4096), zero(2<<20+128<<10, 64<<10)}
			if !tc.dataFile {
				ops = append(ops, ioOp{kind: 'c', pat: 0x22, off: 3 << 20, n: 64 << 10})
			}
			qemuIO(t, path, "qcow2", ops)
			want := qemuRaw(t, path)

			counters := map[string]*countingFile{}
			old := wrapHostFile
			wrapHostFile = func(p string, f hostFile) hostFile {
				c := &countingFile{hostFile: f, min: 4096}
				counters[filepath.Base(p)] = c
				return c
			}
			im, err := Open(path, OpenOptions{})
			wrapHostFile = old
			if err != nil {
				t.Fatal(err)
			}
			cs := im.ClusterSize()
			data := counters["t.qcow2"]
			if tc.dataFile {
				data = counters["t.data"]
			}
			rng := rand.New(rand.NewSource(1))
			put := func(off, n int64) {
				t.Helper()
				p := make([]byte, n)
				rng.Read(p)
				if err := im.writeRun(p, off); err != nil {
					t.Fatalf("writeRun %d+%d: %v", off, n, err)
				}
				copy(want[off:], p)
			}

			// A fresh 1 MiB run: one data write, or with tiny clusters
			// one between the refcount blocks that the run's own
			// allocation creates (every 256 clusters with 512 B ones;
			// writes of a few clusters are not counted).
			data.sizes = nil
			put(0, 1<<20)
			sum := 0
			for _, n := range data.sizes {
				sum += n
			}
			if sum < (1<<20)*9/10 || sum > 1<<20 || len(data.sizes) > 1+(1<<20)/int(cs)/64 {
				t.Errorf("fresh 1 MiB run written as %v, want one write of 1 MiB (a few with %d B clusters)", data.sizes, cs)
			}
			// Runs across what was there: allocated, zero, compressed
			// clusters; partial clusters; the end of the disk.
			put(2<<20-2*cs, 8*cs)
			put(2<<20+96<<10, 256<<10)
			put(3<<20-cs, 3*cs)
			put(4<<20+100, 5000)
			put(size-4*cs, 4*cs)
			put(0, 1<<20) // over its own allocation: in place
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, path)
			if got := qemuRaw(t, path); !bytes.Equal(got, want) {
				t.Fatalf("content after writeRun: %s", diffAt(got, want))
			}
		})
	}
}
