// Offline persistent-bitmap maintenance (qemu-img bitmap) and the dirty
// map of a bitmap (qcow2fs map --bitmap, backup --bitmap).

package qcow2

import (
	"fmt"
	"slices"
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// BitmapAction is one operation of BitmapUpdate.
type BitmapAction struct {
	Kind string // "add", "remove", "clear", "enable", "disable" or "merge"
	// merge: the source bitmap, in SourceFile (a qcow2 image, opened
	// read-only) or, when SourceFile is "", in the image itself.
	Source     string
	SourceFile string
}

// BitmapOptions are the settings of "add".
type BitmapOptions struct {
	Granularity int64 // 0: the cluster size, within 4 KiB..64 KiB (QEMU's default)
	Disabled    bool  // add it disabled (not updated by writes)
}

// DefaultBitmapGranularity is QEMU's default for an image of this cluster
// size: the cluster size, at least 4 KiB and at most 64 KiB.
func DefaultBitmapGranularity(clusterSize int64) int64 {
	return min(max(clusterSize, 4096), 65536)
}

// BitmapUpdate applies actions, in order, to bitmap name of the image at
// path (opened read-write, QEMU's writer locks held), and stores the
// result: new tables and directory, then the old clusters freed.
func BitmapUpdate(path, name string, actions []BitmapAction, o BitmapOptions) error {
	m, err := openMaint(path)
	if err != nil {
		return err
	}
	return m.close(m.bitmapUpdate(name, actions, o))
}

func (m *maint) bitmapUpdate(name string, actions []BitmapAction, o BitmapOptions) error {
	s := m.s
	if s.hdr.Version < 3 {
		return fmt.Errorf("%s: persistent bitmaps need a version 3 image (compat=1.1)", s.path)
	}
	set, err := s.loadBitmapSet()
	if err != nil {
		return err
	}
	if set == nil {
		set = &bitmapSet{}
	}
	cs := s.g.clusterSize
	find := func(set *bitmapSet, n string) (int, *dirtyBitmap) {
		for i, b := range set.list {
			if b.cName() == n {
				return i, b
			}
		}
		return -1, nil
	}
	var frees [][2]int64
	for _, a := range actions {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s: operation %s on bitmap %s failed: %s", s.path, a.Kind, imgtext.Quote(name), fmt.Sprintf(format, args...))
		}
		i, b := find(set, name)
		if a.Kind != "add" && b == nil {
			return fail("Dirty bitmap '%s' not found", imgtext.Escape(name))
		}
		usable := func() error {
			if !b.loaded {
				return fail("Bitmap '%s' is inconsistent and cannot be used", imgtext.Escape(name))
			}
			return nil
		}
		switch a.Kind {
		case "add":
			if b != nil {
				return fail("Bitmap already exists: %s", imgtext.Escape(name))
			}
			g := o.Granularity
			if g == 0 {
				g = DefaultBitmapGranularity(cs)
			}
			if g < 512 || g&(g-1) != 0 || g > 1<<maxBitmapGranularity {
				return fail("Granularity must be power of 2 and at least 512")
			}
			if name == "" || len(name) > maxBitmapNameSize || strings.IndexByte(name, 0) >= 0 {
				return fail("bitmap name must be 1 to %d bytes, without NUL", maxBitmapNameSize)
			}
			if len(set.list) >= maxBitmaps {
				return fail("image already has %d bitmaps", len(set.list))
			}
			gb := uint8(0)
			for int64(1)<<gb < g {
				gb++
			}
			ts := s.bitmapTableSizeFor(gb)
			if ts > maxBitmapTableSize || ts*uint64(cs) > maxBitmapPhysSize {
				return fail("Bitmap is too large for the image (granularity %d)", g)
			}
			nb := &dirtyBitmap{name: name, gran: gb, tableSize: uint32(ts), loaded: true,
				chunks: map[uint32]*bitmapChunk{}, rewrite: true}
			if !o.Disabled {
				nb.flags = bitmapFlagAuto
			}
			set.list = append(set.list, nb)
		case "remove":
			set.list = slices.Delete(set.list, i, i+1)
			frees = append(frees, s.bitmapClusters(b)...)
		case "clear":
			if err := usable(); err != nil {
				return err
			}
			clear(b.chunks)
			b.rewrite = true
		case "enable", "disable":
			if err := usable(); err != nil {
				return err
			}
			if a.Kind == "enable" {
				b.flags |= bitmapFlagAuto
			} else {
				b.flags &^= bitmapFlagAuto
			}
		case "merge":
			if err := usable(); err != nil {
				return err
			}
			src, err := m.mergeSource(a, find)
			if err != nil {
				return fail("%v", err)
			}
			src.forDirty(cs, s.diskLength(), func(off, n int64) { b.setRange(off, n, cs) })
			b.rewrite = true
		default:
			return fmt.Errorf("unknown bitmap operation %q", a.Kind)
		}
	}
	return m.w.storeBitmaps(set, false, frees)
}

// mergeSource finds the source bitmap of a merge.
func (m *maint) mergeSource(a BitmapAction, find func(*bitmapSet, string) (int, *dirtyBitmap)) (*dirtyBitmap, error) {
	s := m.s
	var set *bitmapSet
	if a.SourceFile == "" {
		var err error
		if set, err = s.loadBitmapSet(); err != nil {
			return nil, err
		}
	} else {
		img, err := Open(a.SourceFile, OpenOptions{ReadOnly: true, NoBacking: true, NoDataFile: true})
		if err != nil {
			return nil, err
		}
		defer img.Close()
		if img.s.diskLength() != s.diskLength() {
			return nil, fmt.Errorf("%s: disk size %d differs from %d", a.SourceFile, img.s.diskLength(), s.diskLength())
		}
		if set, err = img.s.loadBitmapSet(); err != nil {
			return nil, err
		}
	}
	var b *dirtyBitmap
	if set != nil {
		_, b = find(set, a.Source)
	}
	if b == nil {
		return nil, fmt.Errorf("Dirty bitmap '%s' not found", imgtext.Escape(a.Source))
	}
	if !b.loaded {
		return nil, fmt.Errorf("Bitmap '%s' is inconsistent and cannot be used", imgtext.Escape(a.Source))
	}
	return b, nil
}

// cName is the bitmap's name as QEMU uses it (up to the first NUL).
func (b *dirtyBitmap) cName() string {
	n, _, _ := strings.Cut(b.name, "\x00")
	return n
}

// bitmapClusters lists the clusters bitmap b holds (table and data), to
// free when it is removed. A bitmap found in use has its table read again;
// an unreadable table leaks rather than fails.
func (s *fileState) bitmapClusters(b *dirtyBitmap) [][2]int64 {
	cs := s.g.clusterSize
	if b.tableOffset == 0 {
		return nil // added in this session, never stored
	}
	out := [][2]int64{{int64(b.tableOffset), (int64(b.tableSize)*8 + cs - 1) / cs}}
	if b.loaded {
		for _, d := range b.data {
			out = append(out, [2]int64{int64(d), 1})
		}
		return out
	}
	info := bitmapInfo{name: b.name, tableOffset: b.tableOffset, tableSize: b.tableSize, flags: b.flags, granularityBits: b.gran}
	var scratch []byte
	var data [][2]int64
	if err := s.forBitmapTable(&info, &scratch, func(_, off uint64) {
		if off != 0 {
			data = append(data, [2]int64{int64(off), 1})
		}
	}); err != nil {
		return out[:0] // leak it all rather than free what may be wrong
	}
	return append(out, data...)
}

// forDirty calls fn for each run of dirty granules, in order, clipped to
// the disk length.
func (b *dirtyBitmap) forDirty(clusterSize int64, disk uint64, fn func(off, n int64)) {
	keys := make([]uint32, 0, len(b.chunks))
	for k := range b.chunks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	perChunk := uint64(clusterSize) * 8
	runStart, runEnd := uint64(0), uint64(0) // in bits
	emit := func() {
		if runEnd > runStart {
			off := runStart << b.gran
			if off < disk {
				end := min(runEnd<<b.gran, disk)
				fn(int64(off), int64(end-off))
			}
		}
	}
	add := func(from, to uint64) {
		if from == runEnd && runEnd > runStart {
			runEnd = to
			return
		}
		emit()
		runStart, runEnd = from, to
	}
	for _, k := range keys {
		c := b.chunks[k]
		base := uint64(k) * perChunk
		if c.ones {
			add(base, base+perChunk)
			continue
		}
		for i := uint64(0); i < perChunk; i++ {
			if c.bits[i/8] == 0 && i%8 == 0 {
				i += 7
				continue
			}
			if c.bits[i/8]&(1<<(i%8)) != 0 {
				add(base+i, base+i+1)
			}
		}
	}
	emit()
}

// BitmapExtent is a run of the disk a bitmap says is dirty or clean.
type BitmapExtent struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Dirty  bool  `json:"dirty"`
}

// BitmapExtents describes the whole disk as runs of dirty and clean
// granules of bitmap name (runs at the bitmap's granularity; the last may
// end at the disk's end).
func (img *Image) BitmapExtents(name string) ([]BitmapExtent, error) {
	s := img.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if img.snapshot != "" {
		return nil, fmt.Errorf("%s: bitmaps belong to the active image, not snapshot %s", s.path, imgtext.Quote(img.snapshot))
	}
	var b *dirtyBitmap
	if img.w != nil && img.w.bm != nil {
		for _, x := range img.w.bm.list {
			if x.cName() == name {
				b = x
			}
		}
	} else {
		set, err := s.loadBitmapSet()
		if err != nil {
			return nil, err
		}
		if set != nil {
			for _, x := range set.list {
				if x.cName() == name {
					b = x
				}
			}
		}
	}
	if b == nil {
		return nil, fmt.Errorf("%s: Dirty bitmap '%s' not found", s.path, imgtext.Escape(name))
	}
	if !b.loaded {
		return nil, fmt.Errorf("%s: bitmap '%s' is in use (inconsistent: the image was not closed cleanly); it cannot be used, only removed", s.path, imgtext.Escape(name))
	}
	disk := int64(s.hdr.Size)
	var out []BitmapExtent
	pos := int64(0)
	b.forDirty(s.g.clusterSize, uint64(disk), func(off, n int64) {
		if off > pos {
			out = append(out, BitmapExtent{Start: pos, Length: off - pos})
		}
		out = append(out, BitmapExtent{Start: off, Length: n, Dirty: true})
		pos = off + n
	})
	if pos < disk {
		out = append(out, BitmapExtent{Start: pos, Length: disk - pos})
	}
	return out, nil
}

// BitmapInfo is a persistent bitmap as qemu-img info lists it.
type BitmapInfo struct {
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
	Flags       []string `json:"flags"`
}
