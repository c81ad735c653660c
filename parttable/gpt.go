// GPT (UEFI spec 5.3.2): the primary header with the backup as fallback,
// 512- and 4096-byte sectors, and the entry array checked by its CRC32.

package parttable

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"
)

// GPT header (UEFI spec 5.3.2), little endian:
//
//	0  signature "EFI PART"     8
//	8  revision                 4
//	12 header size              4
//	16 header CRC32             4  (computed with this field zeroed)
//	20 reserved                 4
//	24 my LBA                   8
//	32 alternate LBA            8
//	40 first usable LBA         8
//	48 last usable LBA          8
//	56 disk GUID               16
//	72 partition entry LBA      8
//	80 number of entries        4
//	84 size of an entry         4
//	88 entry array CRC32        4
//
// A partition entry: type GUID (16), unique GUID (16), first LBA (8), last
// LBA (8, inclusive), attributes (8), name (72 bytes of UTF-16LE).
const (
	gptHeaderMin   = 92
	gptMaxEntries  = 16384   // the spec's minimum is 128; anything near this is hostile
	gptMaxArrayLen = 4 << 20 // bytes
)

var gptSignature = []byte("EFI PART")

type gptHeader struct {
	myLBA, altLBA uint64
	firstUsable   uint64
	lastUsable    uint64
	diskGUID      [16]byte
	entryLBA      uint64
	numEntries    uint32
	entrySize     uint32
	entryArrayCRC uint32
	sectorSize    int
}

// readGPT reads the primary GPT header (at LBA 1), falling back to the
// backup header (at the last LBA) when the primary is damaged. It tries
// 512-byte sectors first, then 4096 (disks with 4 KiB logical sectors).
func readGPT(r io.ReaderAt, size int64) (*Table, error) {
	var firstErr error
	for _, ss := range []int{512, 4096} {
		if size < int64(ss)*3 {
			continue
		}
		h, warn, err := findGPTHeader(r, size, ss)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		t, err := readGPTEntries(r, size, h)
		if err != nil {
			return nil, err
		}
		if warn != "" {
			t.Warnings = append([]string{warn}, t.Warnings...)
		}
		return t, nil
	}
	return nil, fmt.Errorf("protective MBR but no valid GPT: %w", firstErr)
}

func findGPTHeader(r io.ReaderAt, size int64, ss int) (*gptHeader, string, error) {
	buf := make([]byte, ss)
	primary := func() (*gptHeader, error) {
		if err := readFull(r, buf, int64(ss)); err != nil {
			return nil, err
		}
		return parseGPTHeader(buf, ss, 1, size)
	}
	h, perr := primary()
	if perr == nil {
		return h, "", nil
	}
	last := uint64(size/int64(ss)) - 1
	if err := readFull(r, buf, int64(last)*int64(ss)); err != nil {
		return nil, "", fmt.Errorf("primary GPT header: %v; backup: %v", perr, err)
	}
	h, berr := parseGPTHeader(buf, ss, last, size)
	if berr != nil {
		return nil, "", fmt.Errorf("primary GPT header: %v; backup GPT header: %v", perr, berr)
	}
	return h, fmt.Sprintf("primary GPT header damaged (%v); using the backup header", perr), nil
}

// parseGPTHeader checks the signature, the header CRC and that the header
// says it lives where it was found, as Linux's efi.c does.
func parseGPTHeader(b []byte, ss int, lba uint64, size int64) (*gptHeader, error) {
	le := binary.LittleEndian
	if !bytes.Equal(b[:8], gptSignature) {
		return nil, fmt.Errorf("no GPT signature at LBA %d", lba)
	}
	hsize := le.Uint32(b[12:])
	if hsize < gptHeaderMin || int(hsize) > ss {
		return nil, fmt.Errorf("GPT header size %d out of range", hsize)
	}
	hdr := append([]byte(nil), b[:hsize]...)
	want := le.Uint32(hdr[16:])
	binary.LittleEndian.PutUint32(hdr[16:], 0)
	if got := crc32.ChecksumIEEE(hdr); got != want {
		return nil, fmt.Errorf("GPT header CRC mismatch (%#08x, header says %#08x)", got, want)
	}
	h := &gptHeader{
		myLBA:         le.Uint64(b[24:]),
		altLBA:        le.Uint64(b[32:]),
		firstUsable:   le.Uint64(b[40:]),
		lastUsable:    le.Uint64(b[48:]),
		entryLBA:      le.Uint64(b[72:]),
		numEntries:    le.Uint32(b[80:]),
		entrySize:     le.Uint32(b[84:]),
		entryArrayCRC: le.Uint32(b[88:]),
		sectorSize:    ss,
	}
	copy(h.diskGUID[:], b[56:72])
	sectors := uint64(size / int64(ss))
	switch {
	case h.myLBA != lba:
		return nil, fmt.Errorf("GPT header at LBA %d says it is at LBA %d", lba, h.myLBA)
	case h.firstUsable > h.lastUsable || h.lastUsable >= sectors:
		return nil, fmt.Errorf("GPT usable range %d..%d does not fit the disk (%d sectors)", h.firstUsable, h.lastUsable, sectors)
	case h.entrySize < 128 || h.entrySize%8 != 0 || h.entrySize > 4096:
		return nil, fmt.Errorf("GPT entry size %d invalid", h.entrySize)
	case h.numEntries == 0 || h.numEntries > gptMaxEntries || uint64(h.numEntries)*uint64(h.entrySize) > gptMaxArrayLen:
		return nil, fmt.Errorf("GPT entry count %d invalid", h.numEntries)
	case h.entryLBA >= sectors || (uint64(h.numEntries)*uint64(h.entrySize)+uint64(ss)-1)/uint64(ss) > sectors-h.entryLBA:
		return nil, fmt.Errorf("GPT entry array at LBA %d lies past the end of the disk", h.entryLBA)
	}
	return h, nil
}

func readGPTEntries(r io.ReaderAt, size int64, h *gptHeader) (*Table, error) {
	arr := make([]byte, int(h.numEntries)*int(h.entrySize))
	if err := readFull(r, arr, int64(h.entryLBA)*int64(h.sectorSize)); err != nil {
		return nil, fmt.Errorf("read GPT entries: %w", err)
	}
	if got := crc32.ChecksumIEEE(arr); got != h.entryArrayCRC {
		return nil, fmt.Errorf("GPT partition entry array CRC mismatch (%#08x, header says %#08x)", got, h.entryArrayCRC)
	}
	t := &Table{Scheme: GPT, SectorSize: h.sectorSize, DiskID: formatGUID(h.diskGUID[:])}
	le := binary.LittleEndian
	for i := 0; i < int(h.numEntries); i++ {
		e := arr[i*int(h.entrySize):]
		typ := e[0:16]
		if allZero(typ) {
			continue // unused entry
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first {
			t.Warnings = append(t.Warnings, fmt.Sprintf("partition %d ends (LBA %d) before it starts (LBA %d); ignored", i+1, last, first))
			continue
		}
		off, n, trunc, ok := clip(first, last-first+1, h.sectorSize, size)
		if !ok {
			t.Warnings = append(t.Warnings, fmt.Sprintf("partition %d starts past the end of the disk; ignored", i+1))
			continue
		}
		tg := formatGUID(typ)
		t.Partitions = append(t.Partitions, Partition{
			Number:    i + 1,
			Start:     off,
			Size:      n,
			Type:      tg,
			TypeName:  gptTypeNames[tg],
			Name:      decodeName(e[56:128]),
			UUID:      formatGUID(e[16:32]),
			Truncated: trunc,
		})
	}
	return t, nil
}

// formatGUID prints a GUID as sfdisk and blkid do: the first three fields
// are stored little endian, the last two big endian.
func formatGUID(b []byte) string {
	le := binary.LittleEndian
	return strings.ToUpper(fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16]))
}

// decodeName turns the UTF-16LE name field into a string, up to the first NUL.
func decodeName(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// gptTypeNames names common GPT partition types (as fdisk does).
var gptTypeNames = map[string]string{
	"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
	"21686148-6449-6E6F-744E-656564454649": "BIOS boot",
	"0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
	"0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
	"E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
	"A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
	"933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
	"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
	"44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
	"B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
	"BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
	"EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
	"E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
	"DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery environment",
	"48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS/HFS+",
	"7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
	"516E7CB4-6ECF-11D6-8FF8-00022D09712B": "FreeBSD data",
}
