// A model test of concurrent writes, write-zeroes and discards at sector
// granularity on the same few clusters: each sector must hold the value of
// an op that no later op superseded.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrencyModel: goroutines issue random writes, write-zeroes and
// discards at sector granularity — many shorter than 4 KiB or than a
// subcluster — into the same few clusters, and the final image is judged
// against a model of concurrent sectors:
//
// Each op takes a sequence number when it starts and another when it
// completes. For one sector, an op X is superseded when another op Y on
// that sector started after X completed (Y came strictly later). The
// sector must hold the value of an op on it that is not superseded: with
// no overlap in time that is exactly "the last completed write wins"; ops
// that overlapped in time may land in either order. A sector no op touched
// keeps its initial content.
//
// Run under -race too (make test does).
func TestConcurrencyModel(t *testing.T) {
	needQEMU(t)
	for _, tc := range []struct {
		name    string
		opts    string
		backing bool
	}{
		{"64k", "cluster_size=65536", false},
		{"64k-extl2", "cluster_size=65536,extended_l2=on", false},
		{"64k-extl2-backing", "cluster_size=65536,extended_l2=on", true},
		{"4k-backing", "cluster_size=4096", true},
		{"16k-extl2-backing", "cluster_size=16384,extended_l2=on", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			total := 0
			for round := 0; round < 4; round++ {
				total += concurrencyRound(t, tc.opts, tc.backing, int64(round))
			}
			t.Logf("%s: %d ops judged", tc.name, total)
		})
	}
}

type modelOp struct {
	id         int
	kind       byte // 'w', 'z' (write-zeroes), 'd' (discard)
	first, n   int64
	start, end int64
}

// sectorTag is what op id writes into sector s.
func sectorTag(id int, s int64) []byte {
	b := bytes.Repeat([]byte{byte(id)}, 512)
	binary.BigEndian.PutUint32(b, uint32(id+1))
	binary.BigEndian.PutUint64(b[4:], uint64(s))
	return b
}

func concurrencyRound(t *testing.T, opts string, backing bool, seed int64) int {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	const size = 4 << 20
	args := []string{"create", "-q", "-f", "qcow2", "-o", opts}
	if backing {
		base := filepath.Join(dir, "base.qcow2")
		wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", base, fmt.Sprint(size))
		wrun(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x5a 0 %d", size), base)
		args = append(args, "-b", base, "-F", "qcow2")
	}
	wrun(t, "qemu-img", append(args, path, fmt.Sprint(size))...)
	im, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	initial := make([]byte, size)
	if _, err := im.ReadAt(initial, 0); err != nil {
		t.Fatal(err)
	}
	cs := im.ClusterSize()
	// Four clusters, a little past the start so an L2 slice boundary or
	// two may fall inside with small clusters.
	region0 := 3 * cs / 512
	regionSectors := 4 * cs / 512
	var seq atomic.Int64
	var mu sync.Mutex
	var ops []modelOp
	const writers, perWriter = 6, 150
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed*100 + int64(w)))
			for i := 0; i < perWriter; i++ {
				n := int64(1 + rng.Intn(16))
				if rng.Intn(8) == 0 {
					n = int64(1 + rng.Intn(int(min(regionSectors, 512))))
				}
				first := region0 + rng.Int63n(regionSectors-n+1)
				op := modelOp{first: first, n: n}
				switch k := rng.Intn(10); {
				case k < 6:
					op.kind = 'w'
				case k < 8:
					op.kind = 'z'
				default:
					op.kind = 'd'
				}
				mu.Lock()
				op.id = len(ops)
				ops = append(ops, op)
				mu.Unlock()
				var buf []byte
				if op.kind == 'w' {
					buf = make([]byte, 0, n*512)
					for s := first; s < first+n; s++ {
						buf = append(buf, sectorTag(op.id, s)...)
					}
				}
				start := seq.Add(1)
				var err error
				switch op.kind {
				case 'w':
					_, err = im.WriteAt(buf, first*512)
				case 'z':
					err = im.WriteZeroes(first*512, n*512)
				case 'd':
					err = im.Discard(first*512, n*512)
				}
				end := seq.Add(1)
				if err != nil {
					errs <- fmt.Errorf("op %d (%c %d+%d sectors): %w", op.id, op.kind, first, n, err)
					return
				}
				mu.Lock()
				ops[op.id].start, ops[op.id].end = start, end
				mu.Unlock()
				if rng.Intn(40) == 0 {
					if err := im.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if err := judgeSectors(got, initial, ops); err != nil {
		t.Fatalf("read by qcow2fs, before close: %v", err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path)
	if err := judgeSectors(qemuRaw(t, path), initial, ops); err != nil {
		t.Fatalf("read by QEMU after close: %v", err)
	}
	return len(ops)
}

// judgeSectors applies the model to every sector.
func judgeSectors(got, initial []byte, ops []modelOp) error {
	bySector := map[int64][]int{}
	for _, op := range ops {
		for s := op.first; s < op.first+op.n; s++ {
			bySector[s] = append(bySector[s], op.id)
		}
	}
	zero := make([]byte, 512)
	for s := int64(0); s < int64(len(got))/512; s++ {
		have := got[s*512 : s*512+512]
		on := bySector[s]
		if len(on) == 0 {
			if !bytes.Equal(have, initial[s*512:s*512+512]) {
				return fmt.Errorf("sector %d: no op touched it, but it changed", s)
			}
			continue
		}
		var latestStart int64
		for _, id := range on {
			latestStart = max(latestStart, ops[id].start)
		}
		ok := false
		var allowed []string
		for _, id := range on {
			op := ops[id]
			if op.end < latestStart {
				continue // superseded: an op on this sector began after it ended
			}
			allowed = append(allowed, fmt.Sprintf("%c#%d[%d,%d]", op.kind, id, op.start, op.end))
			if op.kind == 'w' && bytes.Equal(have, sectorTag(id, s)) || op.kind != 'w' && bytes.Equal(have, zero) {
				ok = true
				break
			}
		}
		if !ok {
			who := "unknown content"
			if id := int(binary.BigEndian.Uint32(have)) - 1; id >= 0 && id < len(ops) && bytes.Equal(have, sectorTag(id, s)) {
				op := ops[id]
				who = fmt.Sprintf("written by superseded op %c#%d[%d,%d]", op.kind, id, op.start, op.end)
			} else if bytes.Equal(have, zero) {
				who = "zeros"
			}
			return fmt.Errorf("sector %d holds %s; allowed: %v", s, who, allowed)
		}
	}
	return nil
}
