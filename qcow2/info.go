// Image.Info: the description of an image and its backing chain that
// `qcow2fs info` prints.

package qcow2

import "sort"

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
		BitmapDetails: s.bitmapDetails(),
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
