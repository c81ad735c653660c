// Persistent dirty bitmaps: the bitmaps header extension, the bitmap
// directory and the bitmap tables. This is the one decoder for everything
// that reads them (info, check, the refcount walker). It accepts exactly
// what QEMU accepts when it opens an image (qcow2_read_extensions,
// bitmap_list_load, check_dir_entry, load_bitmap), so an image QEMU
// refuses is refused here too, with QEMU's wording. Every size and offset
// is untrusted: bounds are checked without overflow, and no buffer is
// larger than what the file holds.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"github.com/qcow2fs/qcow2fs/internal/imgtext"
	"io"
	"strings"
	"syscall"
)

// Limits of QEMU's bitmap support (block/qcow2.h, block/qcow2-bitmap.c).
const (
	maxBitmaps           = 65535              // QCOW2_MAX_BITMAPS
	maxBitmapDirSize     = 1024 * maxBitmaps  // QCOW2_MAX_BITMAP_DIRECTORY_SIZE
	maxBitmapTableSize   = 0x8000000          // BME_MAX_TABLE_SIZE (entries)
	maxBitmapPhysSize    = 0x20000000         // BME_MAX_PHYS_SIZE (bytes of bitmap data)
	minBitmapGranularity = 9                  // BME_MIN_GRANULARITY_BITS
	maxBitmapGranularity = 31                 // BME_MAX_GRANULARITY_BITS
	maxBitmapNameSize    = 1023               // BME_MAX_NAME_SIZE
	bitmapDirEntrySize   = 24                 // fixed part of a directory entry
	bitmapTypeDirty      = 1                  // BT_DIRTY_TRACKING_BITMAP
	bitmapFlagInUse      = 1 << 0             // BME_FLAG_IN_USE
	bitmapFlagAuto       = 1 << 1             // BME_FLAG_AUTO
	bitmapReservedFlags  = 0xfffffffc         // BME_RESERVED_FLAGS
	bitmapEntryReserved  = 0xff000000000001fe // BME_TABLE_ENTRY_RESERVED_MASK
	bitmapEntryOffset    = 0x00fffffffffffe00 // BME_TABLE_ENTRY_OFFSET_MASK
	bitmapEntryAllOnes   = 1                  // BME_TABLE_ENTRY_FLAG_ALL_ONES
)

// qemuMaxLength is the largest offset QEMU's block layer accepts for a
// request (BDRV_MAX_LENGTH, 2^63 - 2^30): a read reaching past it fails
// with EIO, while a read past the end of the file returns zeros.
const qemuMaxLength = 1<<63 - 1<<30

// readMeta reads metadata at an untrusted offset the way QEMU does: zeros
// past the end of the file, EIO past qemuMaxLength.
func readMeta(f io.ReaderAt, buf []byte, off uint64) error {
	if off > qemuMaxLength || uint64(len(buf)) > qemuMaxLength-off {
		return fmt.Errorf("read of %d bytes at %#x: %w", len(buf), off, syscall.EIO)
	}
	return preadFull(f, buf, int64(off))
}

// bitmapsExt is the bitmaps header extension.
type bitmapsExt struct {
	count     uint32 // nb_bitmaps
	dirSize   uint64 // bitmap_directory_size
	dirOffset uint64 // bitmap_directory_offset
}

// bitmapInfo is one entry of the bitmap directory.
type bitmapInfo struct {
	name            string
	tableOffset     uint64
	tableSize       uint32 // entries
	flags           uint32
	granularityBits uint8
}

func (b *bitmapInfo) inUse() bool { return b.flags&bitmapFlagInUse != 0 }

// bitmaps is what loadBitmaps found: nothing (no extension, or the
// autoclear bit is clear and QEMU ignores the bitmaps), or a validated
// directory.
type bitmaps struct {
	ext  bitmapsExt
	list []bitmapInfo
}

// bitmapsExtension decodes the bitmaps extension and checks it as QEMU
// does when it opens the image. ok is false when there are no bitmaps to
// consider: no extension, or the autoclear bit is clear (a program without
// bitmap support wrote the image; QEMU then ignores the bitmaps, whose
// clusters leak).
func (s *fileState) bitmapsExtension() (ext bitmapsExt, ok bool, err error) {
	be := binary.BigEndian
	for _, e := range s.exts {
		if e.Type != ExtBitmaps {
			continue
		}
		// QEMU checks the length first, whatever the autoclear bit says.
		if len(e.Data) != 24 {
			return bitmapsExt{}, false, formatErr(s.path, "bitmaps_ext: Invalid extension length (%d bytes, not 24)", len(e.Data))
		}
		if s.hdr.AutoclearFeatures&AutoclearBitmaps == 0 {
			continue
		}
		if r := be.Uint32(e.Data[4:]); r != 0 {
			return bitmapsExt{}, false, formatErr(s.path, "bitmaps_ext: Reserved field is not zero (%#x)", r)
		}
		x := bitmapsExt{count: be.Uint32(e.Data), dirSize: be.Uint64(e.Data[8:]), dirOffset: be.Uint64(e.Data[16:])}
		switch {
		case x.count > maxBitmaps:
			return bitmapsExt{}, false, formatErr(s.path, "bitmaps_ext: Image has %d bitmaps, exceeding the supported maximum of %d", x.count, maxBitmaps)
		case x.count == 0:
			return bitmapsExt{}, false, formatErr(s.path, "found bitmaps extension with zero bitmaps")
		case x.dirOffset&uint64(s.g.clusterSize-1) != 0:
			return bitmapsExt{}, false, formatErr(s.path, "bitmaps_ext: invalid bitmap directory offset %#x (not cluster aligned)", x.dirOffset)
		case x.dirSize > maxBitmapDirSize:
			return bitmapsExt{}, false, formatErr(s.path, "bitmaps_ext: bitmap directory size (%d) exceeds the maximum supported size (%d)", x.dirSize, maxBitmapDirSize)
		}
		ext, ok = x, true // a later extension overrides, as in QEMU
	}
	return ext, ok, nil
}

// loadBitmaps reads the bitmap directory and checks it, and the tables of
// the bitmaps not in use, as QEMU does when it opens the image: an error
// means QEMU refuses the image.
func (s *fileState) loadBitmaps() (*bitmaps, error) {
	ext, ok, err := s.bitmapsExtension()
	if err != nil || !ok {
		return nil, err
	}
	list, err := s.readBitmapDirectory(ext)
	if err != nil {
		return nil, err
	}
	bm := &bitmaps{ext: ext, list: list}
	seen := map[string]bool{}
	var scratch []byte
	for i := range list {
		b := &list[i]
		// QEMU names its in-memory bitmaps with the C string of the name.
		name, _, _ := strings.Cut(b.name, "\x00")
		switch {
		case seen[name] && b.inUse():
			continue // QEMU skips an in-use bitmap whose name it already has
		case seen[name]:
			return nil, formatErr(s.path, "Bitmap already exists: %s", imgtext.Escape(name))
		}
		seen[name] = true
		if b.inUse() {
			continue // the data is known stale: QEMU does not load it
		}
		if err := s.forBitmapTable(b, &scratch, nil); err != nil {
			return nil, formatErr(s.path, "Could not read bitmap_table table from image for bitmap '%s': %v", imgtext.Escape(b.name), err)
		}
		if want := s.bitmapTableSizeFor(b.granularityBits); uint64(b.tableSize) != want {
			return nil, formatErr(s.path, "Could not read bitmap '%s' from image: bitmap table has %d entries, the disk size needs %d", imgtext.Escape(b.name), b.tableSize, want)
		}
	}
	return bm, nil
}

// diskLength is the virtual size as QEMU's bdrv_getlength gives it
// (whole sectors).
func (s *fileState) diskLength() uint64 { return (s.hdr.Size + 511) &^ 511 }

// bitmapTableSizeFor is the number of bitmap table entries (clusters of
// bitmap data) a bitmap of the whole disk with the given granularity has.
func (s *fileState) bitmapTableSizeFor(granularityBits uint8) uint64 {
	bits := (s.diskLength() + 1<<granularityBits - 1) >> granularityBits
	perCluster := uint64(s.g.clusterSize) * 8
	return (bits + perCluster - 1) / perCluster
}

// readBitmapDirectory reads and decodes the bitmap directory
// (bitmap_list_load and check_dir_entry).
func (s *fileState) readBitmapDirectory(ext bitmapsExt) ([]bitmapInfo, error) {
	if ext.dirSize == 0 {
		return nil, formatErr(s.path, "Requested bitmap directory size is zero")
	}
	fsize, err := s.fileSize()
	if err != nil {
		return nil, err
	}
	// The directory may reach past the end of the file, where it reads
	// as zeros. An entry starting there is all zeros and invalid, and a
	// valid entry is at most 24+1023 bytes (+7 of padding): the buffer
	// never needs to reach further than that past the end of the file.
	avail := uint64(0)
	if ext.dirOffset < uint64(fsize) {
		avail = uint64(fsize) - ext.dirOffset
	}
	if ext.dirOffset > qemuMaxLength || ext.dirSize > qemuMaxLength-ext.dirOffset {
		return nil, formatErr(s.path, "Failed to read bitmap directory at %#x: %v", ext.dirOffset, syscall.EIO)
	}
	n := min(ext.dirSize, avail+2048)
	dir := make([]byte, n)
	if err := readMeta(s.f, dir, ext.dirOffset); err != nil {
		return nil, formatErr(s.path, "Failed to read bitmap directory: %v", err)
	}
	be := binary.BigEndian
	var list []bitmapInfo
	off := uint64(0)
	for off < ext.dirSize {
		if off+bitmapDirEntrySize > ext.dirSize {
			return nil, formatErr(s.path, "Broken bitmap directory (entry %d at %d does not fit in %d bytes)", len(list), off, ext.dirSize)
		}
		if len(list) == int(ext.count) {
			return nil, formatErr(s.path, "More bitmaps found than specified in header extension (%d)", ext.count)
		}
		if off+bitmapDirEntrySize > n {
			// Past the part read, which is zeros: an invalid entry.
			return nil, formatErr(s.path, "Bitmap '' doesn't satisfy the constraints (directory entry %d lies past the end of the file)", len(list))
		}
		e := dir[off:]
		b := bitmapInfo{
			tableOffset:     be.Uint64(e),
			tableSize:       be.Uint32(e[8:]),
			flags:           be.Uint32(e[12:]),
			granularityBits: e[17],
		}
		typ := e[16]
		nameSize := uint64(be.Uint16(e[18:]))
		extraSize := uint64(be.Uint32(e[20:]))
		next := (off + bitmapDirEntrySize + nameSize + extraSize + 7) &^ 7
		if extraSize != 0 {
			// Refused either way; the message is QEMU's, which sizes the
			// entry in a C int: a huge extra size wraps to a small one.
			size := (int64(int32(uint32(bitmapDirEntrySize+nameSize+extraSize))) + 7) &^ 7
			if int64(off)+size <= int64(ext.dirSize) {
				return nil, formatErr(s.path, "Bitmap extra data is not supported (directory entry %d: %d bytes)", len(list), extraSize)
			}
		}
		if next > ext.dirSize || extraSize != 0 {
			return nil, formatErr(s.path, "Broken bitmap directory (entry %d at %d ends at %d, past its %d bytes)", len(list), off, next, ext.dirSize)
		}
		// A name reaching past the part read is longer than any valid one
		// (see above); the check below rejects it.
		nameStart := off + bitmapDirEntrySize
		b.name = string(dir[nameStart:min(nameStart+nameSize, n)])
		if why := s.bitmapEntryProblem(&b, typ, nameSize); why != "" {
			return nil, formatErr(s.path, "Bitmap '%s' doesn't satisfy the constraints (%s)", imgtext.Escape(b.name), why)
		}
		list = append(list, b)
		off = next
	}
	if len(list) != int(ext.count) {
		return nil, formatErr(s.path, "Less bitmaps found than specified in header extension (%d of %d)", len(list), ext.count)
	}
	return list, nil
}

// bitmapEntryProblem says what is wrong with a directory entry, or "" (QEMU's check_dir_entry).
func (s *fileState) bitmapEntryProblem(b *bitmapInfo, typ uint8, nameSize uint64) string {
	cs := uint64(s.g.clusterSize)
	switch {
	case b.tableSize == 0:
		return "empty bitmap table"
	case b.tableOffset == 0:
		return "bitmap table at offset 0"
	case b.tableOffset%cs != 0:
		return fmt.Sprintf("bitmap table offset %#x not cluster aligned", b.tableOffset)
	case b.tableSize > maxBitmapTableSize:
		return fmt.Sprintf("bitmap table of %d entries, more than %d", b.tableSize, maxBitmapTableSize)
	case b.granularityBits > maxBitmapGranularity || b.granularityBits < minBitmapGranularity:
		return fmt.Sprintf("granularity bits %d outside %d..%d", b.granularityBits, minBitmapGranularity, maxBitmapGranularity)
	case b.flags&bitmapReservedFlags != 0:
		return fmt.Sprintf("reserved flags %#x", b.flags&bitmapReservedFlags)
	case nameSize > maxBitmapNameSize:
		return fmt.Sprintf("name of %d bytes, more than %d", nameSize, maxBitmapNameSize)
	case typ != bitmapTypeDirty:
		return fmt.Sprintf("type %d, not a dirty tracking bitmap", typ)
	}
	// Within the limits above, none of this overflows: table bytes <=
	// 2^29 here, then << 3 << 31 <= 2^63.
	phys := uint64(b.tableSize) * cs
	if phys > maxBitmapPhysSize {
		return fmt.Sprintf("%d bytes of bitmap data, more than %d", phys, maxBitmapPhysSize)
	}
	if !b.inUse() && s.diskLength() > phys*8<<b.granularityBits {
		return fmt.Sprintf("bitmap table of %d entries too small for the disk", b.tableSize)
	}
	return ""
}

// bitmapTableChunk is how many table entries forBitmapTable reads at once.
const bitmapTableChunk = 4096

// forBitmapTable reads the table of bitmap b, checks every entry (QEMU's
// bitmap_table_load), and only then calls fn, if not nil, for each entry
// that points at a data cluster or has the all-ones flag (index i,
// dataOffset 0 for all ones). The table is read in chunks into
// *scratch (kept for the next call), and only the part inside the file
// (the rest reads as zeros: no data clusters).
func (s *fileState) forBitmapTable(b *bitmapInfo, scratch *[]byte, fn func(i, dataOffset uint64)) error {
	bytes := uint64(b.tableSize) * 8
	if b.tableOffset > qemuMaxLength || bytes > qemuMaxLength-b.tableOffset {
		return fmt.Errorf("bitmap table at %#x: %w", b.tableOffset, syscall.EIO)
	}
	fsize, err := s.fileSize()
	if err != nil {
		return err
	}
	inFile := uint64(0) // entries inside the file
	if b.tableOffset < uint64(fsize) {
		inFile = min(uint64(b.tableSize), (uint64(fsize)-b.tableOffset+7)/8)
	}
	if need := int(min(inFile, bitmapTableChunk) * 8); cap(*scratch) < need {
		*scratch = make([]byte, need)
	}
	buf := (*scratch)[:min(inFile, bitmapTableChunk)*8]
	cs := uint64(s.g.clusterSize)
	for pass := 0; pass < 2; pass++ {
		if pass == 1 && fn == nil {
			break
		}
		for i := uint64(0); i < inFile; i += bitmapTableChunk {
			chunk := buf[:min(inFile-i, bitmapTableChunk)*8]
			if err := readMeta(s.f, chunk, b.tableOffset+i*8); err != nil {
				return err
			}
			for j := 0; j < len(chunk); j += 8 {
				e := binary.BigEndian.Uint64(chunk[j:])
				off := e & bitmapEntryOffset
				if pass == 1 {
					if off != 0 || e&bitmapEntryAllOnes != 0 {
						fn(i+uint64(j/8), off)
					}
					continue
				}
				switch {
				case e&bitmapEntryReserved != 0:
					return fmt.Errorf("bitmap table entry %d (%#x) has reserved bits set: %w", i+uint64(j/8), e, syscall.EINVAL)
				case off != 0 && e&bitmapEntryAllOnes != 0:
					return fmt.Errorf("bitmap table entry %d (%#x) has both a data offset and the all-ones flag: %w", i+uint64(j/8), e, syscall.EINVAL)
				case off%cs != 0:
					return fmt.Errorf("bitmap table entry %d points at unaligned offset %#x: %w", i+uint64(j/8), off, syscall.EINVAL)
				}
			}
		}
	}
	return nil
}

// bitmapNames lists the persistent bitmaps as qemu-img info does: none
// when QEMU would ignore or refuse them.
func (s *fileState) bitmapNames() []string {
	bm, err := s.loadBitmaps()
	if err != nil || bm == nil {
		return nil
	}
	names := make([]string, len(bm.list))
	for i, b := range bm.list {
		names[i] = b.name
	}
	return names
}

// hasBitmapsExtension reports whether the image carries bitmaps QEMU
// would consider (the extension with the autoclear bit set), valid or not.
func (s *fileState) hasBitmapsExtension() bool {
	_, ok, err := s.bitmapsExtension()
	return ok || err != nil
}

// bitmapDetails lists the persistent bitmaps with their flags ("in-use",
// "auto", in qemu-img info's order) and granularity: none when QEMU would
// ignore or refuse them.
func (s *fileState) bitmapDetails() []BitmapInfo {
	bm, err := s.loadBitmaps()
	if err != nil || bm == nil {
		return nil
	}
	out := make([]BitmapInfo, len(bm.list))
	for i, b := range bm.list {
		flags := []string{}
		if b.flags&bitmapFlagInUse != 0 {
			flags = append(flags, "in-use")
		}
		if b.flags&bitmapFlagAuto != 0 {
			flags = append(flags, "auto")
		}
		out[i] = BitmapInfo{Name: b.name, Granularity: int64(1) << b.granularityBits, Flags: flags}
	}
	return out
}
