// Commit (qemu-img commit) and rebase (qemu-img rebase), and the header
// rewrite that changes an image's backing file.

package qcow2

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// copyChunk is the unit in which guest data is copied.
const copyChunk = 1 << 20

// Commit writes the data the image at path holds itself (its own clusters,
// including zeroed ones) into its backing file, then empties the image so
// that every cluster reads through to the backing file again. Internal
// snapshots of the image are kept.
//
// The copy runs with the image locked against writers and the backing file
// opened read-write (locked); if the second step (emptying) cannot run, the
// chain still reads the same.
func Commit(path string, opts ...MaintenanceOptions) error {
	progress := progressOf(opts)
	if err := commitCopy(path, progress); err != nil {
		return err
	}
	m, err := openMaint(path)
	if err != nil {
		return fmt.Errorf("%s: data committed to the backing file, but emptying the image failed: %w", path, err)
	}
	return m.close(m.empty())
}

// commitTarget is the backing file being written by a commit.
type commitTarget interface {
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64) error
	Close() error
}

func commitCopy(path string, progress func(done, total int64)) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	// Hold the image's writer locks (as the second step will) while it is
	// read through an unlocked open: that open lets the backing file be
	// opened read-write as well.
	hold, err := openNoAtime(abs, os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("open %s: %w", abs, err)
	}
	defer hold.Close()
	if err := lockImage(hold, abs, permConsistentRead|permWrite|permWriteUnchanged, permWrite|permResize); err != nil {
		return err
	}
	top, err := Open(abs, OpenOptions{ReadOnly: true, ForceShare: true})
	if err != nil {
		return err
	}
	defer top.Close()
	s := top.s
	var dst commitTarget
	switch b := s.backing.(type) {
	case nil:
		return fmt.Errorf("%s: image has no backing file to commit to", abs)
	case *Image:
		base, err := Open(b.Path(), OpenOptions{})
		if err != nil {
			return err
		}
		if base.s.hasValidBitmaps() {
			base.Close()
			return fmt.Errorf("%s: backing file %s has persistent dirty bitmaps, which this tool does not update; use qemu-img commit", abs, b.Path())
		}
		if base.size < top.size {
			m := &maint{img: base, s: base.s, w: base.w}
			base.s.mu.Lock()
			err = base.w.prepare()
			if err == nil {
				err = m.resize(top.size, false)
			}
			base.s.mu.Unlock()
			if err != nil {
				base.Close()
				return err
			}
		}
		dst = base
	case *rawLayer:
		raw, err := openRawTarget(b.path, top.size)
		if err != nil {
			return err
		}
		dst = raw
	default:
		return fmt.Errorf("%s: cannot commit to a backing file of type %T", abs, b)
	}
	if err := copyOwnData(top, dst, progress); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// ownRuns describes [off, off+n) as img's own layer maps it: data, zeros,
// or unallocated (what the backing chain shows through).
func (img *Image) ownRuns(off, n int64) ([]run, error) {
	img.s.mu.Lock()
	defer img.s.mu.Unlock()
	if img.s.closed {
		return nil, ErrClosed
	}
	return img.mapRuns(off, n, nil)
}

// copyOwnData copies every range top itself defines (data and zeros at
// depth 0) to dst.
func copyOwnData(top *Image, dst commitTarget, progress func(done, total int64)) error {
	size := top.size
	buf := make([]byte, copyChunk)
	const mapChunk = 256 << 20
	for off := int64(0); off < size; off += mapChunk {
		runs, err := top.ownRuns(off, min(mapChunk, size-off))
		if err != nil {
			return err
		}
		for _, r := range runs {
			switch r.kind {
			case kindZero:
				if err := dst.WriteZeroes(r.off, r.length); err != nil {
					return err
				}
			case kindNormal, kindCompressed:
				for o := r.off; o < r.off+r.length; o += copyChunk {
					n := min(copyChunk, r.off+r.length-o)
					if _, err := top.ReadAt(buf[:n], o); err != nil {
						return err
					}
					if _, err := dst.WriteAt(buf[:n], o); err != nil {
						return err
					}
				}
			}
		}
		progress(min(off+mapChunk, size), size)
	}
	return nil
}

// rawTarget is a raw backing file opened for a commit.
type rawTarget struct {
	path string
	f    *os.File
}

func openRawTarget(path string, size int64) (*rawTarget, error) {
	f, err := openNoAtime(path, os.O_RDWR)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := lockImage(f, path, permConsistentRead|permWrite|permWriteUnchanged|permResize, permWrite|permResize); err != nil {
		f.Close()
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && st.Size() < size {
		err = f.Truncate(size)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resize %s: %w", path, err)
	}
	return &rawTarget{path: path, f: f}, nil
}

func (r *rawTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := r.f.WriteAt(p, off)
	if err != nil {
		err = fmt.Errorf("write %s: %w", r.path, err)
	}
	return n, err
}

func (r *rawTarget) WriteZeroes(off, n int64) error {
	if punchHole(r.f, off, n) == nil {
		return nil
	}
	zeros := make([]byte, min(n, copyChunk))
	for done := int64(0); done < n; {
		l := min(int64(len(zeros)), n-done)
		if _, err := r.WriteAt(zeros[:l], off+done); err != nil {
			return err
		}
		done += l
	}
	return nil
}

func (r *rawTarget) Close() error {
	err := fdatasync(r.f)
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	return nil
}

// empty drops every active L1 entry: all guest clusters read through to the
// backing file again.
func (m *maint) empty() error {
	for i := range m.img.l1 {
		if err := m.w.dropL1Entry(int64(i)); err != nil {
			return err
		}
	}
	return nil
}

// Rebase changes the image's backing file to newBacking (format newFormat;
// "" probes it; newBacking "" removes the backing file). Unless unsafe, the
// guest content is kept: wherever the image does not define a range itself
// and the old chain's content differs from the new backing file's, the old
// content is first copied into the image. With unsafe only the name
// changes. A relative newBacking is relative to the image's directory.
func Rebase(path, newBacking, newFormat string, unsafe bool, opts ...MaintenanceOptions) error {
	// An unsafe rebase only rewrites the name: the old backing file need
	// not exist (that is what -u is for).
	m, err := openMaintWith(path, OpenOptions{skipBacking: unsafe})
	if err != nil {
		return err
	}
	return m.close(m.rebase(newBacking, newFormat, unsafe, progressOf(opts)))
}

func (m *maint) rebase(newBacking, newFormat string, unsafe bool, progress func(done, total int64)) error {
	s := m.s
	if newBacking != "" && s.rawExt {
		return fmt.Errorf("%s: an image with a raw external data file (data_file_raw) cannot have a backing file", s.path)
	}
	if newFormat != "" && newFormat != "qcow2" && newFormat != "raw" {
		return fmt.Errorf("%s: backing format %q is not supported (qcow2 and raw are)", s.path, newFormat)
	}
	if !unsafe {
		var nb layer
		if newBacking != "" {
			p := resolveRelative(s.path, newBacking)
			seen := map[string]bool{}
			if real, err := filepath.EvalSymlinks(s.path); err == nil {
				seen[real] = true
			}
			l, err := openLayer(p, newFormat, OpenOptions{ReadOnly: true}, seen)
			if err != nil {
				return fmt.Errorf("%s: open new backing file: %w", s.path, err)
			}
			defer l.Close()
			nb = l
			if newFormat == "" {
				newFormat = layerFormat(l)
			}
		}
		if err := m.unlocked(func() error { return m.copyDiffering(nb, progress) }); err != nil {
			return err
		}
		if err := m.w.flushLocked(); err != nil {
			return err
		}
	} else if newBacking != "" && newFormat == "" {
		f, err := probeFormat(resolveRelative(s.path, newBacking))
		if err != nil {
			return fmt.Errorf("%s: backing format must be specified (%v)", s.path, err)
		}
		newFormat = f
	}
	return m.w.setBacking(newBacking, newFormat)
}

func layerFormat(l layer) string {
	if _, ok := l.(*rawLayer); ok {
		return "raw"
	}
	return "qcow2"
}

// copyDiffering copies, wherever the image does not define the content
// itself, the old chain's bytes into the image where they differ from nb's
// (nil: zeros). Sectors of 512 bytes are compared, as qemu-img rebase does.
func (m *maint) copyDiffering(nb layer, progress func(done, total int64)) error {
	img, s := m.img, m.s
	size := img.size
	oldBuf := make([]byte, copyChunk)
	newBuf := make([]byte, copyChunk)
	const mapChunk = 256 << 20
	for off := int64(0); off < size; off += mapChunk {
		runs, err := img.ownRuns(off, min(mapChunk, size-off))
		if err != nil {
			return err
		}
		for _, r := range runs {
			if r.kind != kindUnallocated {
				continue // the image's own content
			}
			for o := r.off; o < r.off+r.length; o += copyChunk {
				n := min(copyChunk, r.off+r.length-o)
				ob, nbuf := oldBuf[:n], newBuf[:n]
				if s.backing != nil {
					if err := s.backing.readAt(ob, o); err != nil {
						return err
					}
				} else {
					clear(ob)
				}
				if nb != nil {
					if err := nb.readAt(nbuf, o); err != nil {
						return err
					}
				} else {
					clear(nbuf)
				}
				if err := writeDiffering(img, ob, nbuf, o); err != nil {
					return err
				}
			}
		}
		progress(min(off+mapChunk, size), size)
	}
	return nil
}

// writeDiffering writes the runs of 512-byte sectors where old and new
// differ, from old, at guest offset off.
func writeDiffering(img *Image, old, new []byte, off int64) error {
	const sector = 512
	n := int64(len(old))
	for i := int64(0); i < n; {
		end := min(i+sector, n)
		if bytes.Equal(old[i:end], new[i:end]) {
			i = end
			continue
		}
		j := end
		for j < n {
			e := min(j+sector, n)
			if bytes.Equal(old[j:e], new[j:e]) {
				break
			}
			j = e
		}
		if _, err := img.WriteAt(old[i:j], off+i); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// setBacking rewrites the header cluster with a new backing file name and
// format (name "" removes the backing file): fixed header, extensions kept
// verbatim except the backing format, the name right after them. Caller
// holds s.mu.
func (w *writer) setBacking(name, format string) error {
	s := w.img.s
	if len(name) > maxBackingNameLen {
		return fmt.Errorf("%s: backing file name longer than %d bytes", s.path, maxBackingNameLen)
	}
	var exts []Extension
	if name != "" && format != "" {
		exts = append(exts, Extension{Type: ExtBackingFmt, Data: []byte(format)})
	}
	for _, e := range s.exts {
		if e.Type != ExtBackingFmt {
			exts = append(exts, e)
		}
	}
	if err := w.writeHeaderArea(s.hdr, exts, name); err != nil {
		return err
	}
	s.backingName, s.backingFmt = name, format
	if name == "" {
		s.backingPath = ""
	} else {
		s.backingPath = resolveRelative(s.path, name)
	}
	return nil
}

// writeHeaderArea rewrites the header cluster: the fixed header hdr, the
// extensions exts, and the backing file name name right after them; the
// old area's bytes past the new one are cleared. It is synced before it
// returns, and s.hdr and s.exts then hold the new values. Caller holds s.mu.
func (w *writer) writeHeaderArea(hdr Header, exts []Extension, name string) error {
	s := w.img.s
	cs := s.g.clusterSize
	fixed := len(hdr.encode())
	extBytes := encodeExtensions(exts)
	hdr.BackingFileOffset, hdr.BackingFileSize = 0, 0
	if name != "" {
		hdr.BackingFileOffset = uint64(fixed + len(extBytes))
		hdr.BackingFileSize = uint32(len(name))
	}
	buf := append(append(hdr.encode(), extBytes...), name...)
	if int64(len(buf)) > cs {
		return fmt.Errorf("%s: header, extensions and backing file name do not fit in the first cluster (%d bytes)", s.path, cs)
	}
	// Clear what the old header area held past the new one.
	oldEnd := fixed + len(encodeExtensions(s.exts))
	if s.hdr.BackingFileOffset != 0 {
		oldEnd = max(oldEnd, int(s.hdr.BackingFileOffset)+int(s.hdr.BackingFileSize))
	}
	if pad := min(int64(oldEnd), cs) - int64(len(buf)); pad > 0 {
		buf = append(buf, make([]byte, pad)...)
	}
	if _, err := s.f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write header of %s: %w", s.path, err)
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.hdr = hdr
	s.exts = exts
	return nil
}
