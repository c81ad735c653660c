// The two ends of convert: its sources (a qcow2 image with its chain, one
// of its internal snapshots, or a raw file, each with block status) and its
// targets (a new qcow2 image, written through writeRun and the compressed
// writer, or a raw file), behind the small interfaces the pipeline in
// maint_convert.go drives.

package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// convSource is what Convert reads: a qcow2 image (or snapshot view) or
// a raw file.
type convSource interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	Map(off, n int64) ([]Extent, error)
	Files() []string
	Close() error
}

// snapView is a snapshot view that also closes the image it came from.
// Its size is the image's current virtual size, as qemu-img convert -l
// takes it: past the snapshot's own disk size it reads as zeros (the
// view's Map stops at its size, and what Map does not cover is zeros).
type snapView struct {
	*Image
	parent *Image
}

func (v snapView) Size() int64 { return max(v.Image.Size(), v.parent.Size()) }

func (v snapView) Close() error {
	err := v.Image.Close()
	if e := v.parent.Close(); err == nil {
		err = e
	}
	return err
}

// rawSource is a raw file read with SEEK_DATA/SEEK_HOLE block status.
type rawSource struct {
	path string
	f    *os.File
	size int64
}

func openRawSource(path string) (*rawSource, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	f, err := openNoAtime(abs, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", abs, err)
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s: not a regular file", abs)
	}
	if err == nil {
		err = lockImage(f, abs, permConsistentRead, permWrite|permResize)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawSource{path: abs, f: f, size: st.Size()}, nil
}

func (r *rawSource) Size() int64 { return r.size }

func (r *rawSource) Files() []string { return []string{r.path} }

func (r *rawSource) Close() error { return r.f.Close() }

func (r *rawSource) ReadAt(p []byte, off int64) (int, error) {
	n := len(p)
	if off+int64(n) > r.size {
		clear(p[max(0, r.size-off):])
		p = p[:max(0, r.size-off)]
	}
	if len(p) > 0 {
		if err := preadFull(r.f, p, off); err != nil {
			return 0, fmt.Errorf("read %s at %#x: %w", r.path, off, err)
		}
	}
	return n, nil
}

// Map reports the file's data and holes (holes as unallocated).
func (r *rawSource) Map(off, n int64) ([]Extent, error) {
	end := min(off+n, r.size)
	var out []Extent
	fd := int(r.f.Fd())
	for off < end {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			d = end
		} else if err != nil {
			return nil, fmt.Errorf("%s: SEEK_DATA: %w", r.path, err)
		}
		d = min(d, end)
		if d > off {
			out = append(out, Extent{Offset: off, Length: d - off, Kind: ExtentUnallocated, HostOffset: -1})
		}
		if d >= end {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("%s: SEEK_HOLE: %w", r.path, err)
		}
		h = min(h, end)
		out = append(out, Extent{Offset: d, Length: h - d, Kind: ExtentData, HostOffset: d})
		off = h
	}
	return out, nil
}

// openConvSource opens path read-only (reader locks) as format ("" probes).
func openConvSource(path, format, snapshot string) (convSource, error) {
	if format == "" {
		var err error
		if format, err = probeFormat(path); err != nil {
			return nil, err
		}
	}
	switch format {
	case "qcow2":
		img, err := Open(path, OpenOptions{ReadOnly: true})
		if err != nil {
			return nil, err
		}
		if snapshot == "" {
			return img, nil
		}
		v, err := img.OpenSnapshot(snapshot)
		if err != nil {
			img.Close()
			return nil, err
		}
		return snapView{v, img}, nil
	case "raw":
		if snapshot != "" {
			return nil, fmt.Errorf("%s: a raw file has no snapshots", path)
		}
		return openRawSource(path)
	}
	return nil, fmt.Errorf("%s: format %q is not supported (qcow2 and raw are)", path, format)
}

// convTarget is where the writer puts the jobs.
type convTarget interface {
	writeData(p []byte, off int64) error
	writeZeroes(off, n int64) error
	storeCompressed(cc CompressedCluster) error
	compress(off int64, p []byte) (CompressedCluster, error)
	// startWriteback starts writing what is dirty in the page cache to
	// disk, without waiting; close still syncs.
	startWriteback()
	close() error
}

type qcow2Out struct{ img *Image }

func (t qcow2Out) writeData(p []byte, off int64) error { return t.img.writeRun(p, off) }

func (t qcow2Out) writeZeroes(off, n int64) error { return t.img.WriteZeroes(off, n) }

func (t qcow2Out) storeCompressed(cc CompressedCluster) error {
	return t.img.StoreCompressed(cc)
}

func (t qcow2Out) compress(off int64, p []byte) (CompressedCluster, error) {
	return t.img.CompressCluster(off, p)
}

func (t qcow2Out) close() error { return t.img.Close() }

func (t qcow2Out) startWriteback() {
	s := t.img.s
	startWriteback(s.f)
	if s.dataF != s.f {
		startWriteback(s.dataF)
	}
}

type rawOut struct {
	path string
	f    *os.File
}

func (t rawOut) writeData(p []byte, off int64) error {
	if _, err := t.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %s at %#x: %w", t.path, off, err)
	}
	return nil
}

func (t rawOut) writeZeroes(off, n int64) error { return errors.New("raw target: no zero writes") }

func (t rawOut) startWriteback() { startWriteback(osFile{t.f}) }

func (t rawOut) storeCompressed(CompressedCluster) error {
	return errors.New("raw target: no compression")
}

func (t rawOut) compress(int64, []byte) (CompressedCluster, error) {
	return CompressedCluster{}, errors.New("raw target: no compression")
}

func (t rawOut) close() error {
	err := t.f.Sync()
	if e := t.f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("%s: %w", t.path, err)
	}
	return nil
}
