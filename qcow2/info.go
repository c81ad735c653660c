package qcow2

import (
	"encoding/binary"
	"sort"
)

// Info describes the image and, through Backing, every layer of its chain.
func (img *Image) Info() *Info {
	s := img.s
	h := s.hdr
	in := &Info{
		Filename:      s.path,
		Format:        "qcow2",
		Version:       h.Version,
		VirtualSize:   img.size,
		ActualSize:    img.HostBytes(),
		ClusterSize:   s.g.clusterSize,
		RefcountBits:  1 << h.RefcountOrder,
		LazyRefcounts: h.CompatibleFeatures&CompatLazyRefcounts != 0,
		ExtendedL2:    s.extL2,
		Dirty:         h.IncompatibleFeatures&IncompatDirty != 0,
		Corrupt:       h.IncompatibleFeatures&IncompatCorrupt != 0,
		DataFile:      s.dataFileName,
		DataFileRaw:   s.rawExt,
		BackingFile:   s.backingName,
		BackingFormat: s.backingFmt,
		Bitmaps:       s.bitmapNames(),
		Snapshots:     img.Snapshots(),
	}
	if s.backingName != "" {
		in.BackingFullPath = s.backingPath
	}
	in.CompressionType = "zlib"
	if s.compr == CompressionZstd {
		in.CompressionType = "zstd"
	}
	for typ, bits := range []uint64{h.IncompatibleFeatures, h.CompatibleFeatures, h.AutoclearFeatures} {
		for b := uint8(0); b < 64; b++ {
			if bits&(1<<b) != 0 {
				name := builtinFeatureNames[[2]uint8{uint8(typ), b}]
				for _, fn := range s.featureNames {
					if fn.Type == uint8(typ) && fn.Bit == b && fn.Name != "" {
						name = fn.Name
					}
				}
				if name == "" {
					name = "unknown"
				}
				in.Features = append(in.Features, name)
			}
		}
	}
	sort.Strings(in.Features)
	if s.backing != nil {
		in.Backing = s.backing.Info()
	}
	return in
}

// bitmapNames reads the names from the bitmap directory, best effort.
func (s *shared) bitmapNames() []string {
	bd, ok := s.bitmapDirectory()
	if !ok {
		return nil
	}
	be := binary.BigEndian
	nb, dirSize, dirOff := bd.count, uint64(bd.size), uint64(bd.offset)
	if dirSize > 64<<20 || nb > 65535 {
		return nil
	}
	// Never allocate more than the file could hold (untrusted header).
	if fsize, err := s.fileSize(); err != nil || dirOff > uint64(fsize) || dirSize > uint64(fsize)-dirOff {
		return nil
	}
	dir := make([]byte, dirSize)
	if _, err := s.f.ReadAt(dir, int64(dirOff)); err != nil {
		return nil
	}
	var names []string
	for off := uint64(0); len(names) < int(nb) && off+24 <= dirSize; {
		// Directory entry: table offset (8), table size (4), flags (4),
		// type (1), granularity bits (1), name size (2), extra data size (4).
		nameSize := uint64(be.Uint16(dir[off+18:]))
		extraSize := uint64(be.Uint32(dir[off+20:]))
		start := off + 24 + extraSize
		if start+nameSize > dirSize {
			break
		}
		names = append(names, string(dir[start:start+nameSize]))
		off = (start + nameSize + 7) &^ 7
	}
	return names
}

// bitmapDir is what the bitmaps header extension says of the bitmap
// directory.
type bitmapDir struct {
	count        uint32 // nb_bitmaps
	size, offset int64  // bitmap_directory_size, bitmap_directory_offset
}

// bitmapDirectory decodes the bitmaps header extension, if there is one.
func (s *shared) bitmapDirectory() (bitmapDir, bool) {
	for _, e := range s.exts {
		if e.Type == ExtBitmaps && len(e.Data) >= 24 {
			be := binary.BigEndian
			return bitmapDir{count: be.Uint32(e.Data[0:]), size: int64(be.Uint64(e.Data[8:])),
				offset: int64(be.Uint64(e.Data[16:]))}, true
		}
	}
	return bitmapDir{}, false
}
