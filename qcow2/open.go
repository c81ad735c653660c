// Opening an image: the header and every table it points at are validated
// against the spec and QEMU's limits before anything is trusted; then the
// backing chain and the external data file, each checked against the
// opener's rights (OpenOptions.checkFile). A malformed image is a
// FormatError naming the file and the problem.

package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/qcow2fs/qcow2fs/cache"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// maxChainDepth is the most images a backing chain may hold, the top one
// included (QEMU sets no limit; a chain this deep is almost certainly a
// mistake or hostile, and every layer holds files and caches open).
const maxChainDepth = 64

// Open opens a qcow2 image and its backing chain.
func Open(path string, opts OpenOptions) (*Image, error) {
	return openChain(path, opts, nil)
}

func openChain(path string, opts OpenOptions, seen map[string]bool) (*Image, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if seen == nil {
		seen = map[string]bool{}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if seen[real] {
		return nil, formatErr(abs, "backing chain loops back to this file")
	}
	if len(seen) >= maxChainDepth {
		return nil, formatErr(abs, "backing chain deeper than %d images (the limit)", maxChainDepth)
	}
	seen[real] = true
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := openNoAtime(abs, flag)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", abs, err)
	}
	if err := opts.checkFile(abs, f, !opts.ReadOnly); err != nil {
		f.Close()
		return nil, err
	}
	if opts.ForceShare && !opts.ReadOnly {
		f.Close()
		return nil, fmt.Errorf("%s: force-share needs a read-only open", abs)
	}
	if !opts.ForceShare {
		// Writers hold read+write and share neither write nor resize;
		// readers (also backing files) just refuse concurrent writers.
		perm, unshared := permConsistentRead, permWrite|permResize
		if !opts.ReadOnly {
			perm |= permWrite | permWriteUnchanged
		}
		if err := lockImage(f, abs, perm, unshared); err != nil {
			f.Close()
			return nil, err
		}
	}
	hf := wrapHostFile(abs, osFile{f})
	s := &fileState{path: abs, f: hf, dataF: hf, ro: opts.ReadOnly, warn: opts.Warn, refs: 1}
	if s.warn == nil {
		s.warn = func(string) {}
	}
	img, err := s.open(opts, seen)
	if err != nil {
		s.closeFiles()
		return nil, err
	}
	return img, nil
}

func (s *fileState) open(opts OpenOptions, seen map[string]bool) (*Image, error) {
	fsize, err := s.fileSize()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", s.path, err)
	}
	buf := make([]byte, 512)
	n, err := s.f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read header of %s: %w", s.path, err)
	}
	h, err := parseHeader(buf[:n])
	if err != nil {
		return nil, formatErr(s.path, "%v", err)
	}
	s.hdr = h
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, formatErr(s.path, "cluster_bits %d outside the supported range %d..%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	cs := int64(1) << h.ClusterBits
	if int64(h.HeaderLength) > cs {
		return nil, formatErr(s.path, "header_length %d larger than a cluster", h.HeaderLength)
	}
	// Read the whole first cluster: extensions and the backing file name live there.
	first := make([]byte, cs)
	n, err = s.f.ReadAt(first, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read header of %s: %w", s.path, err)
	}
	first = first[:n]
	if int64(n) < int64(h.HeaderLength) {
		return nil, formatErr(s.path, "file truncated inside the header")
	}
	switch h.CryptMethod {
	case 0:
	case 1:
		return nil, formatErr(s.path, "AES-encrypted images are not supported")
	case 2:
		return nil, formatErr(s.path, "LUKS-encrypted images are not supported")
	default:
		return nil, formatErr(s.path, "unknown encryption method %d", h.CryptMethod)
	}

	// Extensions (v2 images may carry them too).
	extEnd := len(first)
	if h.BackingFileOffset != 0 && h.BackingFileOffset < uint64(extEnd) && h.BackingFileOffset > uint64(h.HeaderLength) {
		extEnd = int(h.BackingFileOffset)
	}
	if int(h.HeaderLength) < extEnd {
		s.exts, err = parseExtensions(first[h.HeaderLength:extEnd])
		if err != nil {
			return nil, formatErr(s.path, "%v", err)
		}
	}
	for _, e := range s.exts {
		switch e.Type {
		case ExtBackingFmt:
			s.backingFmt = cString(e.Data)
		case ExtFeatureTable:
			s.featureNames = parseFeatureTable(e.Data)
		case ExtDataFile:
			s.dataFileName = cString(e.Data)
		case ExtCrypto:
			return nil, formatErr(s.path, "encrypted images are not supported (encryption header present)")
		case ExtBitmaps:
			// Names are read lazily by Info; presence is enough here.
		}
	}

	if unknown := h.IncompatibleFeatures &^ incompatKnown; unknown != 0 {
		return nil, formatErr(s.path, "unsupported incompatible features: %s", s.featureList(0, unknown))
	}
	if h.IncompatibleFeatures&IncompatCorrupt != 0 {
		if !s.ro && !opts.repair {
			return nil, formatErr(s.path, "image is marked corrupt; open it read-only (--ro) or repair it (qemu-img check -r all)")
		}
		s.warn(fmt.Sprintf("%s: image is marked corrupt; reading it read-only", s.path))
	}
	if h.RefcountOrder > 6 {
		return nil, formatErr(s.path, "refcount_order %d too large (max 6)", h.RefcountOrder)
	}
	s.extL2 = h.IncompatibleFeatures&IncompatExtendedL2 != 0
	if s.extL2 && h.ClusterBits < 14 {
		return nil, formatErr(s.path, "extended L2 entries need clusters of at least 16 KiB (cluster_bits %d)", h.ClusterBits)
	}
	s.g = newGeometry(uint(h.ClusterBits), s.extL2)
	if h.IncompatibleFeatures&IncompatCompression != 0 {
		if h.HeaderLength <= 104 {
			return nil, formatErr(s.path, "compression type bit set but header too short for the compression_type field")
		}
		if h.CompressionType != CompressionZlib && h.CompressionType != CompressionZstd {
			return nil, formatErr(s.path, "unknown compression type %d", h.CompressionType)
		}
		if h.CompressionType == CompressionZlib {
			return nil, formatErr(s.path, "compression type bit set for zlib")
		}
	} else if h.CompressionType != CompressionZlib {
		return nil, formatErr(s.path, "compression type %d without the compression type feature bit", h.CompressionType)
	}
	s.compr = h.CompressionType
	if h.Size > 1<<62 {
		return nil, formatErr(s.path, "virtual size %d too large", h.Size)
	}

	// L1 table.
	if int64(h.L1Size)*8 > maxL1Bytes {
		return nil, formatErr(s.path, "L1 table too large (%d entries, QEMU's limit is %d)", h.L1Size, maxL1Bytes/8)
	}
	if need := s.g.l1EntriesFor(int64(h.Size)); int64(h.L1Size) < need {
		return nil, formatErr(s.path, "L1 table too small for the virtual size (%d entries, %d needed)", h.L1Size, need)
	}
	if err := s.checkTable("L1 table", h.L1TableOffset, int64(h.L1Size)*8, fsize); err != nil {
		return nil, err
	}
	// QEMU counts the disk in 512-byte sectors (total_sectors = size /
	// 512): a size that is not a multiple of 512 is rounded down, and its
	// header rewrites store the rounded size. Ours do too.
	s.hdr.Size = h.Size &^ 511
	// Refcount table.
	if int64(h.RefcountTableClusters)*cs > maxRefTableBytes {
		return nil, formatErr(s.path, "refcount table too large (%d clusters)", h.RefcountTableClusters)
	}
	if err := s.checkTable("refcount table", h.RefcountTableOffset, int64(h.RefcountTableClusters)*cs, fsize); err != nil {
		return nil, err
	}
	if h.RefcountTableClusters == 0 {
		return nil, formatErr(s.path, "image has no refcount table")
	}
	// Snapshot table location (entries are parsed below).
	if h.NbSnapshots > maxSnapshots {
		return nil, formatErr(s.path, "too many snapshots (%d)", h.NbSnapshots)
	}
	if h.NbSnapshots > 0 {
		if err := s.checkTable("snapshot table", h.SnapshotsOffset, 1, fsize); err != nil {
			return nil, err
		}
	}

	// Backing file name.
	if h.BackingFileOffset != 0 {
		if h.BackingFileSize > maxBackingNameLen {
			return nil, formatErr(s.path, "backing file name too long (%d bytes)", h.BackingFileSize)
		}
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if end > uint64(len(first)) || h.BackingFileOffset > uint64(len(first)) {
			return nil, formatErr(s.path, "backing file name lies outside the first cluster")
		}
		s.backingName = string(first[h.BackingFileOffset:end])
	}

	// Caches.
	cacheBytes := opts.CacheSize
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheSize
	}
	slice := l2SliceSize(s.g)
	s.l2c = cache.New(int(cacheBytes/slice), int(slice), s.loadBlock, s.writeBlock)
	zEntries := int(max(4, (4<<20)/cs)) // decompressed clusters
	s.zc = cache.New(zEntries, int(cs), s.loadCompressed, nil)
	s.refBlocks = cache.New(int(max(4, (2<<20)/cs)), int(cs), s.loadBlock, s.writeBlock)
	// The writer registers the L2 cache's write-back hook (see
	// writer.beforeL2WriteBack): refcounts and data before mappings.

	// External data file.
	if h.IncompatibleFeatures&IncompatDataFile != 0 {
		if s.dataFileName == "" {
			return nil, formatErr(s.path, "image needs an external data file but names none")
		}
		if opts.NoDataFile {
			return nil, formatErr(s.path, "image uses external data file %s and external files are disabled", imgtext.Quote(s.dataFileName))
		}
		s.dataFilePath = resolveRelative(s.path, s.dataFileName)
		if err := checkNamedFile(s.dataFilePath); err != nil {
			return nil, formatErr(s.path, "external data file: %s", imgtext.EscapePath(err.Error()))
		}
		flag := os.O_RDWR
		if s.ro {
			flag = os.O_RDONLY
		}
		df, err := openNoAtime(s.dataFilePath, flag)
		if err != nil {
			return nil, formatErr(s.path, "open external data file: %s", imgtext.EscapePath(err.Error()))
		}
		if err := opts.below(s).checkFileAs(RoleDataFile, s.dataFilePath, df, !s.ro); err != nil {
			df.Close()
			return nil, fmt.Errorf("%s: external data file: %w", s.path, err)
		}
		if !opts.ForceShare {
			perm := permConsistentRead
			if !s.ro {
				perm |= permWrite | permWriteUnchanged
			}
			if err := lockImage(df, s.dataFilePath, perm, permWrite|permResize); err != nil {
				df.Close()
				return nil, err
			}
		}
		s.dataF = wrapHostFile(s.dataFilePath, osFile{df})
		s.g.dataFile = true
		s.rawExt = h.AutoclearFeatures&AutoclearDataFileRaw != 0
	} else if s.dataFileName != "" {
		return nil, formatErr(s.path, "external data file name present without the external data file feature")
	}

	// Snapshots.
	if err := s.loadSnapshots(fsize); err != nil {
		return nil, err
	}

	// Backing chain.
	if s.backingName != "" && opts.skipBacking {
		// Metadata-only maintenance: the backing file may be gone.
	} else if s.backingName != "" && opts.NoBacking {
		// The top layer alone: unallocated space reads as zeros, and no
		// file named inside the image is opened. Writing would copy zeros
		// where the backing file's data belongs, so only read-only.
		if !s.ro {
			return nil, formatErr(s.path, "image has backing file %s: backing files are disabled, which is only allowed read-only", imgtext.Quote(s.backingName))
		}
		s.warn(fmt.Sprintf("%s: backing file %s not opened (backing disabled): unallocated space reads as zeros", s.path, imgtext.Quote(s.backingName)))
	} else if s.backingName != "" {
		s.backingPath = resolveRelative(s.path, s.backingName)
		bopts := opts.below(s)
		bopts.ReadOnly = true
		b, err := openLayer(s.backingPath, s.backingFmt, bopts, seen)
		if err != nil {
			var deeper *backingError
			if errors.As(err, &deeper) {
				// Name the top and the file that failed, not all
				// those between.
				deeper.top = s.path
				deeper.depth++
				return nil, deeper
			}
			return nil, &backingError{top: s.path, depth: 1, err: err}
		}
		s.backing = b
	}

	// Active L1 table.
	l1, err := s.readL1(int64(h.L1TableOffset), int64(h.L1Size))
	if err != nil {
		return nil, err
	}
	img := &Image{s: s, ro: s.ro, size: int64(s.hdr.Size), l1: l1, l1Offset: int64(h.L1TableOffset)}
	if !s.ro {
		img.w = newWriter(img)
		if err := img.w.init(); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func (s *fileState) checkTable(what string, off uint64, length int64, fsize int64) error {
	if off%uint64(s.g.clusterSize) != 0 || off == 0 && length > 0 {
		return formatErr(s.path, "%s offset %#x is not cluster-aligned", what, off)
	}
	if off > uint64(fsize) || uint64(length) > uint64(fsize)-off {
		return formatErr(s.path, "%s at %#x (+%d bytes) lies past the end of the file (%d bytes)", what, off, length, fsize)
	}
	return nil
}

// readL1 reads an L1 table whose place was checked (entries past the end of
// the file, inside its last cluster, read as zeros, as in QEMU).
func (s *fileState) readL1(off, entries int64) ([]uint64, error) {
	raw := make([]byte, entries*8)
	if err := preadFull(s.f, raw, off); err != nil {
		return nil, fmt.Errorf("read L1 table of %s at %#x: %w", s.path, off, err)
	}
	l1 := make([]uint64, entries)
	for i := range l1 {
		l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	return l1, nil
}

// resolveRelative resolves a file name stored in an image against the
// image's directory, as QEMU does.
func resolveRelative(imagePath, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(imagePath), name)
}

// probeFormat says whether path holds a qcow2 image (its magic) or is taken
// as raw, as QEMU probes a file named without a format.
func probeFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var m [4]byte
	if n, _ := f.ReadAt(m[:], 0); n == 4 && binary.BigEndian.Uint32(m[:]) == Magic {
		return "qcow2", nil
	}
	return "raw", nil
}

// openLayer opens a backing file read-only as qcow2 or raw.
func openLayer(path, format string, opts OpenOptions, seen map[string]bool) (layer, error) {
	if err := checkNamedFile(path); err != nil {
		return nil, err
	}
	if format == "" {
		var err error
		if format, err = probeFormat(path); err != nil {
			return nil, err
		}
	}
	switch format {
	case "qcow2":
		return openChain(path, opts, seen)
	case "raw":
		return openRaw(path, opts)
	default:
		return nil, fmt.Errorf("%s: backing format %s is not supported (qcow2 and raw are)", path, imgtext.Quote(format))
	}
}

// backingError is a failure to open a file of the backing chain. However
// deep, the message names the top image and the file that failed, not
// every file in between (a chain may hold 64 images, each named by up to a
// KiB in the image above it), and the failure text, which quotes names
// written in images, is escaped and bounded.
type backingError struct {
	top   string
	depth int // 1: the top image's backing file, 2: that file's, ...
	err   error
}

func (e *backingError) Error() string {
	where := "backing file"
	if e.depth > 1 {
		where = fmt.Sprintf("backing chain, image %d", e.depth+1)
	}
	return fmt.Sprintf("%s: %s: %s", e.top, where, imgtext.EscapePath(e.err.Error()))
}

func (e *backingError) Unwrap() error { return e.err }

// checkFile hands a file just opened to OpenOptions.CheckFile: the image
// Open was called on, or a backing file (opts from below).
func (o OpenOptions) checkFile(path string, f *os.File, write bool) error {
	role := RoleImage
	if len(o.namedBy) > 0 {
		role = RoleBacking
	}
	return o.checkFileAs(role, path, f, write)
}

func (o OpenOptions) checkFileAs(role, path string, f *os.File, write bool) error {
	if o.CheckFile == nil {
		return nil
	}
	return o.CheckFile(OpenedFile{Role: role, Path: path, File: f, Write: write, NamedBy: o.namedBy})
}

// below returns the options for the files s names: the same, with s added
// to the chain of images that lead to them.
func (o OpenOptions) below(s *fileState) OpenOptions {
	if o.CheckFile == nil {
		return o
	}
	st, err := s.f.Stat()
	if err != nil {
		st = nil
	}
	o.namedBy = append(append([]Namer(nil), o.namedBy...), Namer{Path: s.path, Stat: st})
	return o
}
