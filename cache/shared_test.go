// Tests of LookupShared, the cache's concurrent hit path: it never loads or
// counts, its hits give blocks a second chance at eviction, and (under
// -race) readers calling it under a shared lock while a writer loads,
// modifies, evicts, writes back and drops blocks under the exclusive lock
// never see a torn or misplaced block.

package cache

import (
	"encoding/binary"
	"math/rand"
	"sync"
	"testing"
)

func TestLookupSharedNeverLoads(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(4, 4, st.load, st.write)
	if b := c.LookupShared(1); b != nil {
		t.Fatal("LookupShared returned an uncached block")
	}
	c.Get(1)
	if b := c.LookupShared(1); b == nil || b.Key != 1 {
		t.Fatalf("LookupShared(1) = %v", b)
	}
	if st.loads != 1 || c.Hits != 0 || c.Misses != 1 || c.Len() != 1 {
		t.Fatalf("loads=%d hits=%d misses=%d len=%d", st.loads, c.Hits, c.Misses, c.Len())
	}
}

func TestLookupSharedSecondChance(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(2, 4, st.load, st.write)
	c.Get(1)
	c.Get(2) // LRU order: 2, 1
	if c.LookupShared(1) == nil {
		t.Fatal("1 not cached")
	}
	c.Get(3) // 1 is referenced: 2 goes
	if c.Peek(1) == nil || c.Peek(2) != nil || c.Peek(3) == nil {
		t.Fatalf("wrong victim: has1=%v has2=%v has3=%v", c.Peek(1) != nil, c.Peek(2) != nil, c.Peek(3) != nil)
	}
	c.Get(4) // 1's chance is spent and 3 is newer: 1 goes
	if c.Peek(1) != nil || c.Peek(3) == nil || c.Peek(4) == nil {
		t.Fatalf("wrong victim: has1=%v has3=%v has4=%v", c.Peek(1) != nil, c.Peek(3) != nil, c.Peek(4) != nil)
	}
	// Every block referenced: one pass clears the bits, then the
	// least recently used goes.
	c.LookupShared(3)
	c.LookupShared(4)
	c.Get(5)
	if c.Peek(3) != nil || c.Peek(4) == nil || c.Peek(5) == nil {
		t.Fatalf("wrong victim: has3=%v has4=%v has5=%v", c.Peek(3) != nil, c.Peek(4) != nil, c.Peek(5) != nil)
	}
}

// A dirty block that LookupShared keeps referenced is still written back
// when it is finally evicted.
func TestLookupSharedDirtyEviction(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(2, 4, st.load, st.write)
	b, _ := c.Put(10)
	b.Data[0] = 7
	c.MarkDirty(b)
	c.LookupShared(10)
	c.Get(11)
	c.Get(12) // 11 goes (10 was referenced)
	if c.Peek(10) == nil || c.NumDirty() != 1 {
		t.Fatalf("has10=%v dirty=%d", c.Peek(10) != nil, c.NumDirty())
	}
	c.Get(13) // now 10
	if got := st.data[10]; len(got) == 0 || got[0] != 7 || c.Peek(10) != nil {
		t.Fatalf("dirty victim not written: %v", got)
	}
}

// TestLookupSharedConcurrent is the concurrency model: readers under mu's
// read lock, a writer under its write lock. Each block holds its key in its
// first 8 bytes and one version byte repeated after; the writer rewrites
// whole blocks in place. A reader must always find the key it asked for
// and a single version throughout. Run with -race.
func TestLookupSharedConcurrent(t *testing.T) {
	const (
		keys    = 64
		bs      = 64
		readers = 4
		rounds  = 20000
	)
	var log []string
	st := newStore("a", &log)
	fill := func(buf []byte, key uint64, v byte) {
		binary.LittleEndian.PutUint64(buf, key)
		for i := 8; i < len(buf); i++ {
			buf[i] = v
		}
	}
	for k := uint64(0); k < keys; k++ {
		st.data[k] = make([]byte, bs)
		fill(st.data[k], k, 0)
	}
	c := New(keys/4, bs, st.load, st.write)
	hooks := 0
	c.BeforeWriteBack(func() error { hooks++; return nil })
	var mu sync.RWMutex
	version := map[uint64]byte{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var hits [readers]int
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := uint64(rng.Intn(keys))
				mu.RLock()
				if b := c.LookupShared(k); b != nil {
					hits[r]++
					got := binary.LittleEndian.Uint64(b.Data)
					v := b.Data[8]
					for i := 9; i < bs; i++ {
						if b.Data[i] != v {
							t.Errorf("key %d: torn block: byte %d is %d, byte 8 is %d", k, i, b.Data[i], v)
							break
						}
					}
					if got != k || b.Key != k {
						t.Errorf("asked for %d, got block %d holding %d", k, b.Key, got)
					}
				}
				mu.RUnlock()
			}
		}(r)
	}
	rng := rand.New(rand.NewSource(99))
	for i := 0; i < rounds; i++ {
		k := uint64(rng.Intn(keys))
		mu.Lock()
		switch op := rng.Intn(10); {
		case op < 6:
			if _, err := c.Get(k); err != nil {
				t.Fatal(err)
			}
		case op < 9:
			b, err := c.Get(k)
			if err != nil {
				t.Fatal(err)
			}
			version[k]++
			fill(b.Data, k, version[k])
			c.MarkDirty(b)
		default:
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	for k := uint64(0); k < keys; k++ {
		want := make([]byte, bs)
		fill(want, k, version[k])
		if string(st.data[k]) != string(want) {
			t.Errorf("key %d: store holds version %d, want %d", k, st.data[k][8], version[k])
		}
	}
	total := 0
	for _, h := range hits {
		total += h
	}
	if total == 0 {
		t.Error("no reader ever hit the cache")
	}
	if hooks == 0 {
		t.Error("no write-back ran")
	}
}
