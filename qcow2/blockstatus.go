// Block status through the backing chain: Map (data, zeros, unallocated) and
// SeekData/SeekHole built on it.

package qcow2

import "fmt"

// Map describes the guest range [off, off+n) (clipped to the virtual size)
// as runs of data, zeros and unallocated space, looking through the backing
// chain. It feeds SEEK_DATA/SEEK_HOLE and `qcow2fs map`.
func (img *Image) Map(off, n int64) ([]Extent, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("invalid range %d+%d", off, n)
	}
	if off >= img.size {
		return nil, nil
	}
	n = min(n, img.size-off)
	return img.blockStatus(off, n)
}

func (img *Image) blockStatus(off, n int64) ([]Extent, error) {
	s := img.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	runs, err := img.mapRuns(off, n, nil)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var out []Extent
	for _, r := range runs {
		switch r.kind {
		case kindNormal:
			out = appendExtent(out, Extent{Offset: r.off, Length: r.length, Kind: ExtentData, HostOffset: r.host})
		case kindCompressed:
			out = appendExtent(out, Extent{Offset: r.off, Length: r.length, Kind: ExtentData, HostOffset: -1, Compressed: true})
		case kindZero:
			out = appendExtent(out, Extent{Offset: r.off, Length: r.length, Kind: ExtentZero, HostOffset: -1})
		case kindUnallocated:
			if s.backing == nil {
				out = appendExtent(out, Extent{Offset: r.off, Length: r.length, Kind: ExtentUnallocated, HostOffset: -1})
				continue
			}
			bsize := s.backing.Size()
			o, l := r.off, r.length
			if o < bsize {
				bl := min(l, bsize-o)
				sub, err := s.backing.blockStatus(o, bl)
				if err != nil {
					return nil, err
				}
				for _, e := range sub {
					e.Depth++
					out = appendExtent(out, e)
				}
				o += bl
				l -= bl
			}
			if l > 0 {
				// Past the end of a shorter backing file: zeros.
				out = appendExtent(out, Extent{Offset: o, Length: l, Kind: ExtentZero, Depth: 1, HostOffset: -1})
			}
		}
	}
	return out, nil
}

func appendExtent(out []Extent, e Extent) []Extent {
	if k := len(out) - 1; k >= 0 {
		last := &out[k]
		if last.Kind == e.Kind && last.Depth == e.Depth && last.Compressed == e.Compressed &&
			last.Offset+last.Length == e.Offset &&
			(last.HostOffset < 0 && e.HostOffset < 0 || last.HostOffset >= 0 && last.HostOffset+last.Length == e.HostOffset) {
			last.Length += e.Length
			return out
		}
	}
	return append(out, e)
}

// SeekData returns the first offset >= off that is not a hole (data at any
// depth of the chain), or -1 if there is none before the end.
func (img *Image) SeekData(off int64) (int64, error) {
	return img.seek(off, true)
}

// SeekHole returns the first offset >= off inside a hole (zero or
// unallocated), or the virtual size if there is none.
func (img *Image) SeekHole(off int64) (int64, error) {
	return img.seek(off, false)
}

func (img *Image) seek(off int64, wantData bool) (int64, error) {
	// Walk in chunks of a few L2 tables' worth so huge sparse images stay fast.
	chunk := img.s.g.l2Entries << img.s.g.clusterBits
	chunk = max(chunk, 64<<20)
	for off < img.size {
		exts, err := img.Map(off, chunk)
		if err != nil {
			return 0, err
		}
		for _, e := range exts {
			if (e.Kind == ExtentData) == wantData {
				return max(e.Offset, off), nil
			}
		}
		off += chunk
		off -= off % chunk // align subsequent chunks
	}
	if wantData {
		return -1, nil
	}
	return img.size, nil
}
