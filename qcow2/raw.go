// rawLayer: a raw file as a layer of a backing chain (read, block status,
// info).

package qcow2

import (
	"fmt"
	"os"
)

// rawLayer is a raw backing file.
type rawLayer struct {
	path string
	f    *os.File
	size int64
}

func openRaw(path string, opts OpenOptions) (*rawLayer, error) {
	f, err := openNoAtime(path, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	if err := opts.checkFile(path, f, false); err != nil {
		f.Close()
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: backing file is not a regular file", path)
	}
	return &rawLayer{path: path, f: f, size: st.Size()}, nil
}

func (r *rawLayer) Size() int64 { return r.size }

func (r *rawLayer) readAt(p []byte, off int64) error {
	if off >= r.size {
		clear(p)
		return nil
	}
	if err := preadFull(r.f, p, off); err != nil {
		return fmt.Errorf("read backing file %s at %#x: %w", r.path, off, err)
	}
	return nil
}

func (r *rawLayer) blockStatus(off, n int64) ([]Extent, error) {
	var out []Extent
	if off < r.size {
		l := min(n, r.size-off)
		out = append(out, Extent{Offset: off, Length: l, Kind: ExtentData, HostOffset: off})
		off += l
		n -= l
	}
	if n > 0 {
		out = append(out, Extent{Offset: off, Length: n, Kind: ExtentZero, HostOffset: -1})
	}
	return out, nil
}

func (r *rawLayer) Info() *Info {
	return &Info{Filename: r.path, Format: "raw", VirtualSize: r.size, ActualSize: allocatedBytes(r.f)}
}

func (r *rawLayer) Close() error { return r.f.Close() }
