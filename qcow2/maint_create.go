// Image creation (qemu-img create -f qcow2). As QEMU does, a minimal valid
// image is written first (header, refcount table, one refcount block,
// virtual size 0), then it is opened and grown to its size like a resize,
// preallocated through the writer, and given its backing file.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CreateOptions are the settings of a new image (qemu-img create -o ...).
type CreateOptions struct {
	// Size is the virtual size in bytes, rounded up to a multiple of 512;
	// 0 with a backing file takes the backing file's size.
	Size int64
	// ClusterSize is a power of two from 512 to 2 MiB (default 64 KiB).
	ClusterSize int64
	// Version is 2 (compat=0.10) or 3 (compat=1.1, the default).
	Version       int
	LazyRefcounts bool
	// ExtendedL2 needs version 3 and clusters of at least 16 KiB.
	ExtendedL2 bool
	// RefcountBits is a power of two from 1 to 64 (default 16; other
	// widths need version 3).
	RefcountBits int
	// CompressionType is "zlib" (default) or "zstd" (version 3).
	CompressionType string
	// Preallocation is "off" (default), "metadata" (every cluster mapped),
	// "falloc" (also space reserved) or "full" (also zeros written).
	Preallocation string
	// DataFile names an external data file (created, or resized to Size);
	// relative to the image's directory. Version 3.
	DataFile string
	// DataFileRaw keeps the data file a valid raw image (implies at least
	// metadata preallocation).
	DataFileRaw bool
	// BackingFile and BackingFormat ("qcow2" or "raw"; "" probes it) name a
	// backing file, relative to the image's directory when not absolute.
	BackingFile   string
	BackingFormat string
	// Progress, when set, is called during preallocation.
	Progress func(done, total int64)
}

// Create makes a new qcow2 image at path (replacing an existing file that
// no other process holds open).
func Create(path string, o CreateOptions) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := o.normalize(abs); err != nil {
		return err
	}
	if o.BackingFile != "" {
		b, err := openLayer(resolveRelative(abs, o.BackingFile), o.BackingFormat, OpenOptions{ReadOnly: true}, map[string]bool{})
		if err != nil {
			return fmt.Errorf("%s: backing file: %w", abs, err)
		}
		if o.BackingFormat == "" {
			o.BackingFormat = layerFormat(b)
		}
		if o.Size == 0 {
			o.Size = b.Size()
		}
		b.Close()
	}
	o.Size = (o.Size + 511) &^ 511
	g := newGeometry(uint(bits.TrailingZeros64(uint64(o.ClusterSize))), o.ExtendedL2)
	if o.Size < 0 || g.l1EntriesFor(o.Size)*8 > maxL1Bytes {
		return fmt.Errorf("%s: size %d too large for %d-byte clusters (QEMU's L1 table limit)", abs, o.Size, o.ClusterSize)
	}
	if o.DataFile != "" {
		if err := createDataFile(resolveRelative(abs, o.DataFile), o.Size); err != nil {
			return fmt.Errorf("%s: %w", abs, err)
		}
	}
	if err := writeEmptyImage(abs, &o); err != nil {
		return err
	}
	m, err := openMaint(abs)
	if err != nil {
		return err
	}
	if err := m.close(m.finishCreate(&o)); err != nil {
		return err
	}
	// The new names durable too: a live external snapshot sends fsynced
	// writes into the new image at once, and a crash must not lose the
	// file they live in.
	dirs := []string{filepath.Dir(abs)}
	if o.DataFile != "" {
		dirs = append(dirs, filepath.Dir(resolveRelative(abs, o.DataFile)))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("%s: %w", abs, err)
		}
	}
	return nil
}

func (o *CreateOptions) normalize(path string) error {
	if o.ClusterSize == 0 {
		o.ClusterSize = 64 << 10
	}
	if o.Version == 0 {
		o.Version = 3
	}
	if o.RefcountBits == 0 {
		o.RefcountBits = 16
	}
	if o.CompressionType == "" {
		o.CompressionType = "zlib"
	}
	if o.Preallocation == "" {
		o.Preallocation = "off"
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
	}
	cs := o.ClusterSize
	switch {
	case o.Size < 0:
		return bad("negative size %d", o.Size)
	case cs < 512 || cs > 2<<20 || cs&(cs-1) != 0:
		return bad("cluster size must be a power of two between 512 and 2048k (got %d)", cs)
	case o.Version != 2 && o.Version != 3:
		return bad("unsupported version %d (compat 0.10 = 2, 1.1 = 3)", o.Version)
	case o.RefcountBits < 1 || o.RefcountBits > 64 || o.RefcountBits&(o.RefcountBits-1) != 0:
		return bad("refcount width must be a power of two and may not exceed 64 bits (got %d)", o.RefcountBits)
	case o.RefcountBits != 16 && o.Version < 3:
		return bad("different refcount widths than 16 bits require compatibility level 1.1 or above")
	case o.LazyRefcounts && o.Version < 3:
		return bad("lazy refcounts only supported with compatibility level 1.1 and above")
	case o.ExtendedL2 && o.Version < 3:
		return bad("extended L2 entries are only supported with compatibility level 1.1 and above")
	case o.ExtendedL2 && cs < 16<<10:
		return bad("extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	case o.CompressionType != "zlib" && o.CompressionType != "zstd":
		return bad("unknown compression type %q (zlib or zstd)", o.CompressionType)
	case o.CompressionType != "zlib" && o.Version < 3:
		return bad("non-zlib compression type is only supported with compatibility level 1.1 and above")
	case o.DataFile != "" && o.Version < 3:
		return bad("external data files are only supported with compatibility level 1.1 and above")
	case o.DataFileRaw && o.DataFile == "":
		return bad("data-file-raw requires data-file")
	case o.DataFileRaw && o.BackingFile != "":
		return bad("backing file and data-file-raw cannot be used at the same time")
	case o.BackingFormat != "" && o.BackingFormat != "qcow2" && o.BackingFormat != "raw":
		return bad("backing format %q is not supported (qcow2 and raw are)", o.BackingFormat)
	case o.BackingFormat != "" && o.BackingFile == "":
		return bad("backing format given without a backing file")
	}
	switch o.Preallocation {
	case "off", "metadata", "falloc", "full":
	default:
		return bad("invalid preallocation mode %q (off, metadata, falloc, full)", o.Preallocation)
	}
	if o.BackingFile != "" && o.Preallocation != "off" && !o.ExtendedL2 {
		return bad("backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	if o.DataFileRaw && o.Preallocation == "off" {
		// The data file must read right without the metadata, and the
		// metadata must map it 1:1.
		o.Preallocation = "metadata"
	}
	return nil
}

// createDataFile creates an external data file, or resizes an existing one
// (keeping what it holds), to size bytes.
func createDataFile(path string, size int64) error {
	if err := checkNamedFile(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("external data file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create external data file: %w", err)
	}
	defer f.Close()
	if err := lockImage(f, path, permWrite|permResize, permResize); err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("resize external data file %s: %w", path, err)
	}
	return nil
}

// qemuFeatureNames is the feature name table QEMU writes into v3 images.
var qemuFeatureNames = []FeatureName{
	{0, 0, "dirty bit"}, {0, 1, "corrupt bit"}, {0, 2, "external data file"},
	{0, 3, "compression type"}, {0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"}, {2, 1, "raw external data"},
}

func encodeFeatureTable(fns []FeatureName) []byte {
	out := make([]byte, 48*len(fns))
	for i, fn := range fns {
		out[i*48] = fn.Type
		out[i*48+1] = fn.Bit
		copy(out[i*48+2:i*48+48], fn.Name)
	}
	return out
}

// writeEmptyImage writes a valid image of virtual size 0: header (with its
// extensions), a one-cluster refcount table and one refcount block covering
// these three clusters. It holds QEMU's write and resize locks while doing
// so, so an image in use elsewhere is refused.
func writeEmptyImage(path string, o *CreateOptions) error {
	if err := checkNamedFile(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer f.Close()
	if err := lockImage(f, path, permWrite|permResize, permResize); err != nil {
		return err
	}
	cs := o.ClusterSize
	h := Header{
		Magic:                 Magic,
		Version:               uint32(o.Version),
		ClusterBits:           uint32(bits.TrailingZeros64(uint64(cs))),
		RefcountTableOffset:   uint64(cs),
		RefcountTableClusters: 1,
		RefcountOrder:         uint32(bits.TrailingZeros(uint(o.RefcountBits))),
		HeaderLength:          headerV2Len,
	}
	var exts []Extension
	if o.Version >= 3 {
		h.HeaderLength = 112
		if o.DataFile != "" {
			h.IncompatibleFeatures |= IncompatDataFile
			exts = append(exts, Extension{Type: ExtDataFile, Data: []byte(o.DataFile)})
		}
		if o.CompressionType == "zstd" {
			h.IncompatibleFeatures |= IncompatCompression
			h.CompressionType = CompressionZstd
		}
		if o.ExtendedL2 {
			h.IncompatibleFeatures |= IncompatExtendedL2
		}
		if o.LazyRefcounts {
			h.CompatibleFeatures |= CompatLazyRefcounts
		}
		if o.DataFileRaw {
			h.AutoclearFeatures |= AutoclearDataFileRaw
		}
		// The feature name table only where it fits (QEMU leaves it out
		// of small clusters too), counting the backing file's share.
		withTable := append(append([]Extension(nil), exts...), Extension{Type: ExtFeatureTable, Data: encodeFeatureTable(qemuFeatureNames)})
		need := int64(len(h.encode()) + len(encodeExtensions(withTable)) + len(o.BackingFile))
		if o.BackingFile != "" {
			need += 8 + int64(len(o.BackingFormat)+7)&^7
		}
		if need <= cs {
			exts = withTable
		}
	}
	first := append(h.encode(), encodeExtensions(exts)...)
	if int64(len(first)) > cs {
		return fmt.Errorf("%s: header extensions do not fit in a %d-byte cluster", path, cs)
	}
	buf := make([]byte, 3*cs)
	copy(buf, first)
	binary.BigEndian.PutUint64(buf[cs:], uint64(2*cs))
	for i := int64(0); i < 3; i++ {
		setRefcountEntry(buf[2*cs:], i, h.RefcountOrder, 1)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := fdatasync(f); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// finishCreate grows the empty image to its size, preallocates and sets the
// backing file.
func (m *maint) finishCreate(o *CreateOptions) error {
	if o.Size > 0 {
		if err := m.w.growL1(m.s.g.l1EntriesFor(o.Size)); err != nil {
			return err
		}
		if err := m.setSize(o.Size); err != nil {
			return err
		}
	}
	if o.Preallocation != "off" {
		if err := m.preallocate(o.Preallocation, o.BackingFile != "", o.Progress); err != nil {
			return err
		}
	}
	if o.BackingFile != "" {
		return m.w.setBacking(o.BackingFile, o.BackingFormat)
	}
	return nil
}

// preallocate maps every guest cluster to a host cluster of its own (in
// the external data file: at the same offset). Fresh clusters read as
// zeros; "falloc" also reserves their space, "full" writes the zeros. With
// a backing file (extended L2 only) the subclusters stay unallocated so the
// backing file still shows through.
func (m *maint) preallocate(mode string, backing bool, progress func(done, total int64)) error {
	s, w := m.s, m.w
	g := &s.g
	n := (m.img.size + g.clusterSize - 1) >> g.clusterBits
	if progress == nil {
		progress = func(int64, int64) {}
	}
	var hostStart, hostEnd int64 = -1, -1 // current contiguous host run (image file)
	flushRun := func() error {
		if hostStart < 0 || s.dataF != s.f {
			return nil
		}
		defer func() { hostStart = -1 }()
		return fillHost(s.f, s.path, mode, hostStart, hostEnd-hostStart)
	}
	for c := int64(0); c < n; c++ {
		host, _, err := w.allocDataCluster(c)
		if err != nil {
			return err
		}
		e := l2Entry{word: uint64(host) | oflagCopied}
		if g.subclusters > 1 && !backing {
			e.bitmap = 0xffffffff
		}
		if err := w.setL2(c, e); err != nil {
			return err
		}
		if host != hostEnd {
			if err := flushRun(); err != nil {
				return err
			}
			hostStart = host
		}
		hostEnd = host + g.clusterSize
		if c%4096 == 4095 {
			progress(c+1, n)
		}
	}
	if err := flushRun(); err != nil {
		return err
	}
	if s.dataF != s.f && n > 0 {
		if err := fillHost(s.dataF, s.dataFilePath, mode, 0, m.img.size); err != nil {
			return err
		}
	}
	// The whole file must exist: every L2 entry points inside it.
	if err := w.extendFile(); err != nil {
		return err
	}
	progress(n, n)
	return nil
}

// fillHost reserves ("falloc") or zero-fills ("full") a host range.
func fillHost(f hostFile, name, mode string, off, n int64) error {
	switch mode {
	case "falloc":
		of, ok := f.(osFile)
		if !ok {
			return nil
		}
		if err := unix.Fallocate(int(of.Fd()), 0, off, n); err != nil {
			return fmt.Errorf("preallocate %s: %w", name, err)
		}
	case "full":
		zeros := make([]byte, min(n, copyChunk))
		for done := int64(0); done < n; {
			l := min(int64(len(zeros)), n-done)
			if _, err := f.WriteAt(zeros[:l], off+done); err != nil {
				return fmt.Errorf("preallocate %s: %w", name, err)
			}
			done += l
		}
	}
	return nil
}
