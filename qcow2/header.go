// The on-disk QCOW2 header (v2 and v3): spec constants, the fixed fields,
// header extensions kept verbatim, and the feature name table.

package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Spec constants (docs/interop/qcow2.txt).
const (
	Magic = 0x514649fb // "QFI\xfb"

	headerV2Len = 72
	headerV3Len = 104

	// Incompatible feature bits.
	IncompatDirty        = 1 << 0
	IncompatCorrupt      = 1 << 1
	IncompatDataFile     = 1 << 2
	IncompatCompression  = 1 << 3
	IncompatExtendedL2   = 1 << 4
	incompatKnown        = IncompatDirty | IncompatCorrupt | IncompatDataFile | IncompatCompression | IncompatExtendedL2
	CompatLazyRefcounts  = 1 << 0
	AutoclearBitmaps     = 1 << 0
	AutoclearDataFileRaw = 1 << 1
	autoclearKnown       = AutoclearBitmaps | AutoclearDataFileRaw

	// Header extension types.
	ExtEnd          = 0x00000000
	ExtBackingFmt   = 0xe2792aca
	ExtFeatureTable = 0x6803f857
	ExtBitmaps      = 0x23852875
	ExtCrypto       = 0x0537be77
	ExtDataFile     = 0x44415441

	CompressionZlib = 0
	CompressionZstd = 1

	// Limits QEMU applies (block/qcow2.h).
	minClusterBits    = 9
	maxClusterBits    = 21
	maxL1Bytes        = 32 << 20 // QCOW_MAX_L1_SIZE
	maxRefTableBytes  = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	maxSnapshots      = 65536
	maxBackingNameLen = 1023
	maxExtensionsLen  = 1 << 20
)

// Header mirrors the on-disk QCOW2 header (all fields, v2 and v3).
type Header struct {
	Magic                 uint32
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	// Version 3 fields (v2 images get the defaults below).
	IncompatibleFeatures uint64
	CompatibleFeatures   uint64
	AutoclearFeatures    uint64
	RefcountOrder        uint32
	HeaderLength         uint32
	CompressionType      uint8
}

// Extension is one header extension, kept verbatim so that a header
// rewrite preserves extensions this implementation does not understand.
type Extension struct {
	Type uint32
	Data []byte
}

// FeatureName is one entry of the feature name table extension.
type FeatureName struct {
	Type uint8 // 0 incompatible, 1 compatible, 2 autoclear
	Bit  uint8
	Name string
}

// parseHeader decodes the fixed header from buf (at least 72 bytes).
func parseHeader(buf []byte) (Header, error) {
	var h Header
	if len(buf) < headerV2Len {
		return h, fmt.Errorf("file too short for a qcow2 header (%d bytes)", len(buf))
	}
	be := binary.BigEndian
	h.Magic = be.Uint32(buf[0:])
	if h.Magic != Magic {
		return h, fmt.Errorf("not a qcow2 image (bad magic %#08x)", h.Magic)
	}
	h.Version = be.Uint32(buf[4:])
	if h.Version != 2 && h.Version != 3 {
		return h, fmt.Errorf("unsupported qcow2 version %d", h.Version)
	}
	h.BackingFileOffset = be.Uint64(buf[8:])
	h.BackingFileSize = be.Uint32(buf[16:])
	h.ClusterBits = be.Uint32(buf[20:])
	h.Size = be.Uint64(buf[24:])
	h.CryptMethod = be.Uint32(buf[32:])
	h.L1Size = be.Uint32(buf[36:])
	h.L1TableOffset = be.Uint64(buf[40:])
	h.RefcountTableOffset = be.Uint64(buf[48:])
	h.RefcountTableClusters = be.Uint32(buf[56:])
	h.NbSnapshots = be.Uint32(buf[60:])
	h.SnapshotsOffset = be.Uint64(buf[64:])
	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = headerV2Len
		return h, nil
	}
	if len(buf) < headerV3Len {
		return h, fmt.Errorf("file too short for a qcow2 v3 header (%d bytes)", len(buf))
	}
	h.IncompatibleFeatures = be.Uint64(buf[72:])
	h.CompatibleFeatures = be.Uint64(buf[80:])
	h.AutoclearFeatures = be.Uint64(buf[88:])
	h.RefcountOrder = be.Uint32(buf[96:])
	h.HeaderLength = be.Uint32(buf[100:])
	if h.HeaderLength < headerV3Len {
		return h, fmt.Errorf("invalid header_length %d", h.HeaderLength)
	}
	if h.HeaderLength%8 != 0 {
		// The spec requires it; an odd length would misalign the
		// header extensions that follow.
		return h, fmt.Errorf("invalid header_length %d (not a multiple of 8)", h.HeaderLength)
	}
	if h.HeaderLength > 104 {
		if len(buf) < 105 {
			return h, fmt.Errorf("file too short for header_length %d", h.HeaderLength)
		}
		h.CompressionType = buf[104]
	}
	return h, nil
}

// encode returns the fixed header in its on-disk form (HeaderLength bytes for
// v3, 72 for v2). Bytes past the known fields are zero.
func (h *Header) encode() []byte {
	n := int(h.HeaderLength)
	if h.Version == 2 {
		n = headerV2Len
	}
	buf := make([]byte, n)
	be := binary.BigEndian
	be.PutUint32(buf[0:], h.Magic)
	be.PutUint32(buf[4:], h.Version)
	be.PutUint64(buf[8:], h.BackingFileOffset)
	be.PutUint32(buf[16:], h.BackingFileSize)
	be.PutUint32(buf[20:], h.ClusterBits)
	be.PutUint64(buf[24:], h.Size)
	be.PutUint32(buf[32:], h.CryptMethod)
	be.PutUint32(buf[36:], h.L1Size)
	be.PutUint64(buf[40:], h.L1TableOffset)
	be.PutUint64(buf[48:], h.RefcountTableOffset)
	be.PutUint32(buf[56:], h.RefcountTableClusters)
	be.PutUint32(buf[60:], h.NbSnapshots)
	be.PutUint64(buf[64:], h.SnapshotsOffset)
	if h.Version >= 3 {
		be.PutUint64(buf[72:], h.IncompatibleFeatures)
		be.PutUint64(buf[80:], h.CompatibleFeatures)
		be.PutUint64(buf[88:], h.AutoclearFeatures)
		be.PutUint32(buf[96:], h.RefcountOrder)
		be.PutUint32(buf[100:], h.HeaderLength)
		if n > 104 {
			buf[104] = h.CompressionType
		}
	}
	return buf
}

// parseExtensions decodes the header extensions area that starts right
// after the fixed header. end is where the area must stop (the backing file
// name or the end of the first cluster).
func parseExtensions(buf []byte) ([]Extension, error) {
	var exts []Extension
	be := binary.BigEndian
	for off := 0; ; {
		if off+8 > len(buf) {
			return nil, fmt.Errorf("header extensions run past the first cluster")
		}
		typ := be.Uint32(buf[off:])
		length := uint64(be.Uint32(buf[off+4:]))
		off += 8
		if typ == ExtEnd {
			return exts, nil
		}
		if length > uint64(len(buf)-off) {
			return nil, fmt.Errorf("header extension %#x length %d runs past the first cluster", typ, length)
		}
		data := append([]byte(nil), buf[off:off+int(length)]...)
		exts = append(exts, Extension{Type: typ, Data: data})
		off += int((length + 7) &^ 7)
	}
}

// encodeExtensions is the inverse of parseExtensions, including the end marker.
func encodeExtensions(exts []Extension) []byte {
	var out []byte
	for _, e := range exts {
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[0:], e.Type)
		binary.BigEndian.PutUint32(hdr[4:], uint32(len(e.Data)))
		out = append(out, hdr[:]...)
		out = append(out, e.Data...)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
	}
	return append(out, make([]byte, 8)...)
}

func parseFeatureTable(data []byte) []FeatureName {
	var out []FeatureName
	for i := 0; i+48 <= len(data); i += 48 {
		name := data[i+2 : i+48]
		n := 0
		for n < len(name) && name[n] != 0 {
			n++
		}
		out = append(out, FeatureName{Type: data[i], Bit: data[i+1], Name: string(name[:n])})
	}
	return out
}

var builtinFeatureNames = map[[2]uint8]string{
	{0, 0}: "dirty",
	{0, 1}: "corrupt",
	{0, 2}: "external data file",
	{0, 3}: "compression type",
	{0, 4}: "extended L2 entries",
	{1, 0}: "lazy refcounts",
	{2, 0}: "bitmaps",
	{2, 1}: "raw external data",
}
