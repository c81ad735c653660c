// Package parttable reads the partition table of a disk image: MBR (with
// extended and logical partitions) and GPT. It only parses; it never
// writes, and it trusts nothing it reads (every offset is checked against
// the disk size, every loop and count is bounded).
//
// Partitions are numbered the way Linux numbers them, so that the file
// vm-p5.raw is what /dev/loop0p5 would be after partx -a: MBR primary
// partitions keep their slot number (1-4, gaps allowed), logical partitions
// count from 5 in the order of the EBR chain, and GPT partitions keep their
// entry index + 1. Extended (container) partitions are listed but hold no
// file system of their own.
package parttable

import (
	"errors"
	"fmt"
	"io"
)

// Scheme is the kind of partition table.
type Scheme string

const (
	MBR Scheme = "mbr" // DOS / MS-DOS partition table
	GPT Scheme = "gpt" // GUID partition table
)

// Partition is one entry of the table. Offsets and sizes are in bytes.
type Partition struct {
	Number   int    `json:"number"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	Type     string `json:"type"`                // MBR: "0x83"; GPT: the type GUID
	TypeName string `json:"type-name,omitempty"` // "Linux filesystem", ... when known
	Name     string `json:"name,omitempty"`      // GPT partition name
	UUID     string `json:"uuid,omitempty"`      // GPT unique partition GUID
	Bootable bool   `json:"bootable,omitempty"`  // MBR boot indicator 0x80
	// Extended marks an MBR extended partition: a container of logical
	// partitions, not a file system.
	Extended bool `json:"extended,omitempty"`
	// Truncated is set when the table says the partition runs past the end
	// of the disk; Size was cut at the disk's end (as Linux does).
	Truncated bool `json:"truncated,omitempty"`
}

// Table is a parsed partition table.
type Table struct {
	Scheme     Scheme `json:"scheme"`
	SectorSize int    `json:"sector-size"`
	// DiskID is the MBR disk signature ("0x1234abcd") or the GPT disk GUID.
	DiskID     string      `json:"disk-id"`
	Partitions []Partition `json:"partitions"`
	// Warnings lists oddities that did not stop the parse (a damaged
	// primary GPT header with a good backup, an EBR chain that loops, ...).
	Warnings []string `json:"warnings,omitempty"`
}

// Data returns the partitions that hold data: every one but the extended
// containers.
func (t *Table) Data() []Partition {
	var out []Partition
	for _, p := range t.Partitions {
		if !p.Extended {
			out = append(out, p)
		}
	}
	return out
}

// ErrNoTable is returned by Read when the disk has no partition table.
var ErrNoTable = errors.New("no partition table")

// Read parses the partition table of a disk of size bytes. It returns
// ErrNoTable when there is none, and a descriptive error when there is one
// but it is unusable.
func Read(r io.ReaderAt, size int64) (*Table, error) {
	if size < 2*512 {
		return nil, ErrNoTable
	}
	sector0 := make([]byte, 512)
	if err := readFull(r, sector0, 0); err != nil {
		return nil, fmt.Errorf("read sector 0: %w", err)
	}
	mbr, ok := parseMBRSector(sector0)
	if !ok {
		return nil, ErrNoTable
	}
	if mbr.protective() {
		return readGPT(r, size)
	}
	return readMBR(r, size, mbr)
}

// readFull reads exactly len(p) bytes at off.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// clip fits a partition of sectors [start, start+count) into a disk of
// size bytes. ok is false when nothing of it lies on the disk.
func clip(start, count uint64, sectorSize int, size int64) (off, n int64, truncated, ok bool) {
	ss := uint64(sectorSize)
	disk := uint64(size)
	if count == 0 || start > disk/ss {
		return 0, 0, false, false
	}
	o := start * ss
	if o >= disk {
		return 0, 0, false, false
	}
	l := count * ss
	if count > (disk-o)/ss || l > disk-o {
		l, truncated = disk-o, true
	}
	return int64(o), int64(l), truncated, true
}
