// The MBR and the chain of EBRs holding the logical partitions of an
// extended partition, and the protective MBR that announces a GPT.

package parttable

import (
	"encoding/binary"
	"fmt"
	"io"
)

// The MBR: four 16-byte entries at 446, the signature 55 AA at 510. An entry
// is: boot indicator (1), CHS start (3), type (1), CHS end (3), LBA start
// (4, little endian), sector count (4). Only the LBA fields matter; CHS
// values are historical.
const (
	mbrEntriesOff = 446
	mbrEntrySize  = 16
	mbrSector     = 512
	// maxLogical bounds the EBR chain walk: Linux stops far earlier in
	// practice, and a hostile chain must not run forever.
	maxLogical = 256
)

type mbrEntry struct {
	boot  byte
	typ   byte
	start uint32 // in sectors
	count uint32
}

// empty: Linux and libblkid skip entries of zero size only (an entry of
// type 0 with a size still counts).
func (e mbrEntry) empty() bool { return e.count == 0 }

func isExtendedType(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

type mbrSectorData struct {
	entries [4]mbrEntry
	diskSig uint32
}

// protective reports a GPT protective MBR: an entry of type 0xEE.
func (m mbrSectorData) protective() bool {
	for _, e := range m.entries {
		if e.typ == 0xee {
			return true
		}
	}
	return false
}

// parseMBRSector decodes a 512-byte sector as an MBR or EBR. It rejects
// sectors without the 55 AA signature and (like Linux) sectors whose boot
// indicators are neither 0 nor 0x80 — a FAT boot sector with no table has
// code there.
func parseMBRSector(b []byte) (mbrSectorData, bool) {
	var m mbrSectorData
	if len(b) < mbrSector || b[510] != 0x55 || b[511] != 0xaa {
		return m, false
	}
	for i := range m.entries {
		e := b[mbrEntriesOff+i*mbrEntrySize:]
		if e[0] != 0 && e[0] != 0x80 {
			return m, false
		}
		m.entries[i] = mbrEntry{
			boot:  e[0],
			typ:   e[4],
			start: binary.LittleEndian.Uint32(e[8:]),
			count: binary.LittleEndian.Uint32(e[12:]),
		}
	}
	m.diskSig = binary.LittleEndian.Uint32(b[440:])
	return m, true
}

// readMBR lists the primary partitions and walks every extended
// partition's EBR chain for logical ones.
func readMBR(r io.ReaderAt, size int64, m mbrSectorData) (*Table, error) {
	t := &Table{Scheme: MBR, SectorSize: mbrSector, DiskID: fmt.Sprintf("0x%08x", m.diskSig)}
	any := false
	for _, e := range m.entries {
		if !e.empty() {
			any = true
		}
	}
	if !any {
		// A boot sector with a signature but no partition: a whole-disk
		// file system (or an empty table), nothing to split.
		return nil, ErrNoTable
	}
	next := 5
	for i, e := range m.entries {
		if e.empty() {
			continue
		}
		off, n, trunc, ok := clip(uint64(e.start), uint64(e.count), mbrSector, size)
		if !ok {
			t.Warnings = append(t.Warnings, fmt.Sprintf("partition %d starts past the end of the disk; ignored", i+1))
			continue
		}
		p := Partition{Number: i + 1, Start: off, Size: n, Type: fmt.Sprintf("0x%02x", e.typ),
			TypeName: mbrTypeNames[e.typ], Bootable: e.boot == 0x80, Truncated: trunc, Extended: isExtendedType(e.typ)}
		t.Partitions = append(t.Partitions, p)
		if p.Extended {
			next = t.readLogical(r, size, uint64(e.start), uint64(e.start)+uint64(e.count), next)
		}
	}
	return t, nil
}

// readLogical follows the EBR chain of the extended partition occupying
// sectors [extStart, extEnd). In each EBR the first data entry is a logical
// partition (relative to that EBR) and the first extended entry points to
// the next EBR (relative to the extended partition's start). It returns
// the next free partition number.
func (t *Table) readLogical(r io.ReaderAt, size int64, extStart, extEnd uint64, next int) int {
	seen := map[uint64]bool{}
	buf := make([]byte, mbrSector)
	ebr := extStart
	for n := 0; n < maxLogical; n++ {
		if seen[ebr] {
			t.Warnings = append(t.Warnings, fmt.Sprintf("EBR chain loops back to sector %d; stopped", ebr))
			return next
		}
		seen[ebr] = true
		if ebr >= extEnd || ebr > uint64(size)/mbrSector-1 {
			t.Warnings = append(t.Warnings, fmt.Sprintf("EBR at sector %d lies outside the extended partition or the disk; stopped", ebr))
			return next
		}
		if err := readFull(r, buf, int64(ebr*mbrSector)); err != nil {
			t.Warnings = append(t.Warnings, fmt.Sprintf("read EBR at sector %d: %v", ebr, err))
			return next
		}
		m, ok := parseMBRSector(buf)
		if !ok {
			if n > 0 { // the first EBR of an empty extended partition may be blank
				t.Warnings = append(t.Warnings, fmt.Sprintf("no valid EBR at sector %d; chain stopped", ebr))
			}
			return next
		}
		var link *mbrEntry
		for i := range m.entries {
			e := m.entries[i]
			if e.empty() {
				continue
			}
			if isExtendedType(e.typ) {
				if link == nil {
					link = &m.entries[i]
				}
				continue
			}
			// Usually only the first entry holds a logical partition, but
			// some systems use more; like Linux, take every data entry, and
			// trust the 3rd and 4th only when they stay inside the
			// extended partition (they sometimes hold garbage).
			start := ebr + uint64(e.start)
			if i >= 2 && (start < extStart || start+uint64(e.count) > extEnd) {
				continue
			}
			off, l, trunc, ok := clip(start, uint64(e.count), mbrSector, size)
			if !ok {
				t.Warnings = append(t.Warnings, fmt.Sprintf("logical partition %d starts past the end of the disk; ignored", next))
				next++
				continue
			}
			t.Partitions = append(t.Partitions, Partition{Number: next, Start: off, Size: l,
				Type: fmt.Sprintf("0x%02x", e.typ), TypeName: mbrTypeNames[e.typ], Bootable: e.boot == 0x80, Truncated: trunc})
			next++
		}
		if link == nil {
			return next
		}
		ebr = extStart + uint64(link.start)
	}
	t.Warnings = append(t.Warnings, fmt.Sprintf("more than %d logical partitions; the rest ignored", maxLogical))
	return next
}

// mbrTypeNames names the common MBR partition types (as fdisk does).
var mbrTypeNames = map[byte]string{
	0x01: "FAT12",
	0x04: "FAT16 <32M",
	0x05: "Extended",
	0x06: "FAT16",
	0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32",
	0x0c: "W95 FAT32 (LBA)",
	0x0e: "W95 FAT16 (LBA)",
	0x0f: "W95 Extended (LBA)",
	0x11: "Hidden FAT12",
	0x27: "Hidden NTFS WinRE",
	0x82: "Linux swap",
	0x83: "Linux",
	0x85: "Linux extended",
	0x8e: "Linux LVM",
	0xa5: "FreeBSD",
	0xa6: "OpenBSD",
	0xa9: "NetBSD",
	0xaf: "HFS / HFS+",
	0xee: "GPT",
	0xef: "EFI (FAT-12/16/32)",
	0xfd: "Linux raid autodetect",
}
