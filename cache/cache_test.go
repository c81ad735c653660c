// Unit tests of the block cache against a logging store: LRU eviction, dirty
// write-back and its hook's order, failures that keep data, drop and
// invalidate.

package cache

import (
	"errors"
	"fmt"
	"testing"
)

type store struct {
	data   map[uint64][]byte
	loads  int
	writes []string
	name   string
	log    *[]string
	fail   bool
}

func newStore(name string, log *[]string) *store {
	return &store{data: map[uint64][]byte{}, name: name, log: log}
}

func (s *store) load(key uint64, buf []byte) error {
	s.loads++
	copy(buf, s.data[key])
	return nil
}

func (s *store) write(key uint64, buf []byte) error {
	if s.fail {
		return errors.New("write failed")
	}
	s.data[key] = append([]byte(nil), buf...)
	*s.log = append(*s.log, fmt.Sprintf("%s:%d", s.name, key))
	return nil
}

func TestLRUEviction(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	st.data[1] = []byte{1}
	c := New(2, 4, st.load, st.write)
	for _, k := range []uint64{1, 2, 1, 3} { // 2 is least recently used when 3 arrives
		if _, err := c.Get(k); err != nil {
			t.Fatal(err)
		}
	}
	if c.Peek(2) != nil || c.Peek(1) == nil || c.Peek(3) == nil {
		t.Fatalf("wrong victim: has1=%v has2=%v has3=%v", c.Peek(1) != nil, c.Peek(2) != nil, c.Peek(3) != nil)
	}
	if st.loads != 3 || c.Hits != 1 || c.Misses != 3 {
		t.Fatalf("loads=%d hits=%d misses=%d", st.loads, c.Hits, c.Misses)
	}
	b, _ := c.Get(1)
	if b.Data[0] != 1 {
		t.Fatal("loaded content lost")
	}
}

func TestDirtyVictimWrittenBack(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(2, 4, st.load, st.write)
	b, _ := c.Put(10)
	b.Data[0] = 7
	c.MarkDirty(b)
	c.Get(11)
	c.Get(12) // evicts 10
	if got := st.data[10]; len(got) == 0 || got[0] != 7 {
		t.Fatalf("dirty victim not written: %v", got)
	}
	if c.NumDirty() != 0 {
		t.Fatalf("NumDirty = %d", c.NumDirty())
	}
}

func TestWriteBackHookOrder(t *testing.T) {
	var log []string
	ref := newStore("ref", &log)
	l2 := newStore("l2", &log)
	rc := New(4, 4, ref.load, ref.write)
	lc := New(2, 4, l2.load, l2.write)
	hooks := 0
	lc.BeforeWriteBack(func() error {
		hooks++
		if err := rc.Flush(); err != nil {
			return err
		}
		log = append(log, "barrier")
		return nil
	})
	b, _ := lc.Put(1)
	lc.MarkDirty(b)
	r, _ := rc.Put(5)
	rc.MarkDirty(r)
	if err := lc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := []string{"ref:5", "barrier", "l2:1"}
	if fmt.Sprint(log) != fmt.Sprint(want) {
		t.Fatalf("flush order %v, want %v", log, want)
	}
	// Nothing dirty: no hook.
	if err := lc.Flush(); err != nil || hooks != 1 {
		t.Fatalf("clean flush ran the hook (%d runs, %v)", hooks, err)
	}
	// An eviction of a dirty block runs the hook before writing it.
	log = nil
	b.Data[0] = 1
	lc.MarkDirty(b)
	lc.Get(2)
	lc.Get(3) // evicts 1 (dirty)
	want = []string{"barrier", "l2:1"}
	if fmt.Sprint(log) != fmt.Sprint(want) || hooks != 2 {
		t.Fatalf("eviction order %v (hook runs %d), want %v", log, hooks, want)
	}
}

func TestFailingHookWritesNothing(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(2, 4, st.load, st.write)
	fail := true
	c.BeforeWriteBack(func() error {
		if fail {
			return fmt.Errorf("barrier failed")
		}
		return nil
	})
	b, _ := c.Put(1)
	b.Data[0] = 7
	c.MarkDirty(b)
	if err := c.Flush(); err == nil {
		t.Fatal("flush succeeded although its hook failed")
	}
	c.Get(2)
	if _, err := c.Get(3); err == nil {
		t.Fatal("eviction succeeded although the hook failed")
	}
	if len(log) != 0 {
		t.Fatalf("blocks written although the hook failed: %v", log)
	}
	if p := c.Peek(1); p == nil || !p.Dirty() {
		t.Fatal("dirty block lost after a failed hook")
	}
	fail = false
	if err := c.Flush(); err != nil || st.data[1][0] != 7 {
		t.Fatalf("flush after recovery: %v", err)
	}
}

func TestFailedWriteBackKeepsData(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(2, 4, st.load, st.write)
	b, _ := c.Put(1)
	b.Data[0] = 9
	c.MarkDirty(b)
	c.Get(2)
	st.fail = true
	if _, err := c.Get(3); err == nil {
		t.Fatal("eviction of a dirty block whose write fails must report it")
	}
	if p := c.Peek(1); p == nil || !p.Dirty() || p.Data[0] != 9 {
		t.Fatal("dirty block lost after failed write-back")
	}
	st.fail = false
	if err := c.Flush(); err != nil || st.data[1][0] != 9 {
		t.Fatalf("flush after recovery: %v", err)
	}
}

func TestDropAndInvalidate(t *testing.T) {
	var log []string
	st := newStore("a", &log)
	c := New(4, 4, st.load, st.write)
	b, _ := c.Put(1)
	c.MarkDirty(b)
	c.Get(2)
	if err := c.Invalidate(); err == nil {
		t.Fatal("Invalidate with a dirty block must fail")
	}
	c.Drop(1)
	if c.NumDirty() != 0 || c.Len() != 0 {
		t.Fatalf("after drop: dirty=%d len=%d", c.NumDirty(), c.Len())
	}
	if len(log) != 0 {
		t.Fatalf("dropped block written: %v", log)
	}
}
