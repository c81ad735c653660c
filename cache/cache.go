// Package cache is a bounded LRU cache of fixed-size blocks of a file, with
// dirty tracking and ordered write-back. It knows nothing of qcow2: callers
// give it a loader and a writer, and may register a hook that runs before
// any dirty block is written back (BeforeWriteBack): that is where the
// caller makes durable whatever the blocks point at ("flush A before B").
//
// The cache is not safe for concurrent use on its own; callers serialise
// access (the qcow2 image holds its metadata lock around every call). The
// one exception is LookupShared: any number of goroutines may call it at
// once, and read the blocks it returns, while no other method runs (the
// caller holds a read-write lock shared for LookupShared and exclusive for
// everything else). It touches no list and no map: a hit sets the block's
// referenced bit atomically, and eviction gives referenced blocks a
// second chance (CLOCK-style) before taking the least recently used one.
package cache

import (
	"container/list"
	"fmt"
	"sync/atomic"
)

// Block is one cached block. Data is owned by the cache; callers may modify
// it in place and must then call MarkDirty.
type Block struct {
	Key   uint64
	Data  []byte
	dirty bool
	elem  *list.Element
	// ref: found by LookupShared since eviction last passed over the
	// block; eviction then moves it to the front instead of dropping it.
	ref atomic.Bool
}

// Dirty reports whether the block has changes not yet written back.
func (b *Block) Dirty() bool { return b.dirty }

// Loader fills buf with the block at key.
type Loader func(key uint64, buf []byte) error

// Writer writes a dirty block back.
type Writer func(key uint64, buf []byte) error

// Cache is an LRU cache of blocks of one size.
type Cache struct {
	blockSize int
	capacity  int
	load      Loader
	write     Writer
	blocks    map[uint64]*Block
	lru       *list.List // front = most recently used
	nDirty    int

	// before runs ahead of every write-back pass (Flush or a dirty
	// eviction); if it fails nothing is written.
	before func() error

	free [][]byte // recycled buffers

	// Hits and Misses count Get and Lookup calls; LookupShared's hits are
	// not counted (a counter shared by concurrent readers would be one
	// more contended cache line on their fast path).
	Hits, Misses uint64
}

// New returns a cache holding at most capacity blocks of blockSize bytes.
// write may be nil for a read-only cache.
func New(capacity, blockSize int, load Loader, write Writer) *Cache {
	if capacity < 2 {
		capacity = 2
	}
	return &Cache{
		blockSize: blockSize,
		capacity:  capacity,
		load:      load,
		write:     write,
		blocks:    make(map[uint64]*Block),
		lru:       list.New(),
	}
}

// BlockSize returns the size of every block.
func (c *Cache) BlockSize() int { return c.blockSize }

// Len returns the number of cached blocks.
func (c *Cache) Len() int { return len(c.blocks) }

// BeforeWriteBack registers hook to run before dirty blocks are written
// back, whether by Flush or by an eviction. It is the caller's ordering
// point: it must make durable everything the blocks may point at (another
// cache's blocks, data written elsewhere) and return an error if it cannot,
// in which case the blocks stay dirty and the error is returned.
func (c *Cache) BeforeWriteBack(hook func() error) { c.before = hook }

// Get returns the block at key, loading it on a miss.
func (c *Cache) Get(key uint64) (*Block, error) {
	if b, ok := c.blocks[key]; ok {
		c.Hits++
		c.lru.MoveToFront(b.elem)
		return b, nil
	}
	c.Misses++
	buf, err := c.newBuf()
	if err != nil {
		return nil, err
	}
	if err := c.load(key, buf); err != nil {
		c.free = append(c.free, buf)
		return nil, err
	}
	return c.insert(key, buf), nil
}

// Lookup returns the block at key if it is cached (marking it recently
// used), or nil; it never loads.
func (c *Cache) Lookup(key uint64) *Block {
	b, ok := c.blocks[key]
	if !ok {
		return nil
	}
	c.Hits++
	c.lru.MoveToFront(b.elem)
	return b
}

// LookupShared returns the block at key if it is cached, or nil; it never
// loads. Unlike every other method it may run concurrently with itself, in
// any number of goroutines, provided no other method runs meanwhile; the
// caller must only read the block's Data, and only until its shared
// section ends. A hit marks the block referenced (an atomic bit, set only
// when it was clear, so readers that keep hitting a block do not keep
// writing its cache line) rather than moving it in the LRU list.
func (c *Cache) LookupShared(key uint64) *Block {
	b := c.blocks[key]
	if b != nil && !b.ref.Load() {
		b.ref.Store(true)
	}
	return b
}

// Peek returns the block at key if it is cached, without loading it.
func (c *Cache) Peek(key uint64) *Block {
	return c.blocks[key]
}

// Put installs a block whose content the caller provides (a new table, say),
// replacing any cached copy. The returned block is zeroed; fill it and
// MarkDirty as needed.
func (c *Cache) Put(key uint64) (*Block, error) {
	if b, ok := c.blocks[key]; ok {
		clear(b.Data)
		c.lru.MoveToFront(b.elem)
		return b, nil
	}
	buf, err := c.newBuf()
	if err != nil {
		return nil, err
	}
	clear(buf)
	return c.insert(key, buf), nil
}

// MarkDirty records that b must be written back.
func (c *Cache) MarkDirty(b *Block) {
	if !b.dirty {
		b.dirty = true
		c.nDirty++
	}
}

// NumDirty returns the number of dirty blocks.
func (c *Cache) NumDirty() int { return c.nDirty }

// Drop forgets the block at key without writing it back (its cluster was
// freed).
func (c *Cache) Drop(key uint64) {
	b, ok := c.blocks[key]
	if !ok {
		return
	}
	if b.dirty {
		c.nDirty--
	}
	c.lru.Remove(b.elem)
	delete(c.blocks, key)
	c.free = append(c.free, b.Data)
}

// Flush writes back every dirty block, after the BeforeWriteBack hook.
func (c *Cache) Flush() error {
	if c.nDirty == 0 {
		return nil
	}
	if c.before != nil {
		if err := c.before(); err != nil {
			return err
		}
	}
	for e := c.lru.Back(); e != nil; e = e.Prev() {
		b := e.Value.(*Block)
		if b.dirty {
			if err := c.writeBack(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// Invalidate drops every clean block and returns an error if dirty ones remain.
func (c *Cache) Invalidate() error {
	for k, b := range c.blocks {
		if !b.dirty {
			c.Drop(k)
		}
	}
	if c.nDirty > 0 {
		return fmt.Errorf("cache: %d dirty blocks left", c.nDirty)
	}
	return nil
}

func (c *Cache) writeBack(b *Block) error {
	if c.write == nil {
		return fmt.Errorf("cache: dirty block %#x in a read-only cache", b.Key)
	}
	if err := c.write(b.Key, b.Data); err != nil {
		return err
	}
	b.dirty = false
	c.nDirty--
	return nil
}

func (c *Cache) insert(key uint64, buf []byte) *Block {
	b := &Block{Key: key, Data: buf}
	b.elem = c.lru.PushFront(b)
	c.blocks[key] = b
	return b
}

// newBuf returns a buffer for a new block, evicting the least recently used
// block when the cache is full: a block LookupShared found since eviction
// last looked at it gets a second chance (its bit is cleared and it moves to
// the front), so the loop ends within one pass. A dirty victim is written
// back first, with all other dirty blocks (after the dependency flush); if
// that fails the victim stays cached and dirty (nothing is lost) and the
// error is returned.
func (c *Cache) newBuf() ([]byte, error) {
	if len(c.blocks) >= c.capacity {
		for e := c.lru.Back(); e != nil; e = c.lru.Back() {
			b := e.Value.(*Block)
			if b.ref.Load() {
				b.ref.Store(false)
				c.lru.MoveToFront(e)
				continue
			}
			if b.dirty {
				// Write back every dirty block, not just the victim:
				// the hook (usually ending in an fdatasync) is then
				// paid once per cache-full of dirty blocks rather
				// than once per eviction.
				if err := c.Flush(); err != nil {
					return nil, err
				}
			}
			c.Drop(b.Key)
			break
		}
	}
	if n := len(c.free); n > 0 {
		buf := c.free[n-1]
		c.free = c.free[:n-1]
		return buf, nil
	}
	return make([]byte, c.blockSize), nil
}
