// The internal snapshot table: parsing and encoding it within QEMU's limits,
// keeping bad entries (marked unusable) as QEMU does, and listing snapshots.

package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

const (
	snapshotHeaderLen  = 40
	maxSnapshotExtra   = 1024     // QCOW_MAX_SNAPSHOT_EXTRA_DATA
	maxSnapshotTableSz = 64 << 20 // QCOW_MAX_SNAPSHOTS_SIZE
)

// snapshot is one entry of the snapshot table, with its extra data kept
// verbatim for rewrites.
type snapshot struct {
	L1TableOffset uint64
	L1Size        uint32
	ID            string
	Name          string
	DateSec       uint32
	DateNsec      uint32
	VMClockNsec   uint64
	VMStateSize   uint32
	Extra         []byte

	// Not on disk; set when the image is opened (snapshotProblem). problem
	// says why the snapshot cannot be shown or applied, "" if it can;
	// badL1 means its L1 table cannot even be read, so nothing may walk
	// it (an entry with a bad disk size only still holds references).
	problem string
	badL1   bool
}

// diskSize is the snapshot's virtual disk size (extra data, or the image's).
func (sn *snapshot) diskSize(imageSize uint64) uint64 {
	if len(sn.Extra) >= 16 {
		return binary.BigEndian.Uint64(sn.Extra[8:])
	}
	return imageSize
}

func (sn *snapshot) info(imageSize uint64) SnapshotInfo {
	size := sn.diskSize(imageSize)
	si := SnapshotInfo{ID: sn.ID, Name: sn.Name, DateSec: sn.DateSec, DateNsec: sn.DateNsec,
		VMClockNsec: sn.VMClockNsec, VMStateSize: uint64(sn.VMStateSize), ICount: ^uint64(0),
		Problem: sn.problem}
	if size <= math.MaxInt64 {
		si.DiskSize = int64(size) // (a size past that is only in Problem)
	}
	if len(sn.Extra) >= 8 {
		si.VMStateSize = binary.BigEndian.Uint64(sn.Extra[0:])
	}
	if len(sn.Extra) >= 24 {
		si.ICount = binary.BigEndian.Uint64(sn.Extra[16:])
	}
	return si
}

// parseSnapshotTable decodes n entries from r starting at off. A first pass
// reads only the fixed headers, so that a table over QEMU's 64 MiB limit
// (counted to the end of its last entry, as QEMU counts it) or running past
// the end of the file is refused before anything is allocated for it.
func parseSnapshotTable(r io.ReaderAt, off int64, n uint32, fileSize int64) ([]snapshot, error) {
	be := binary.BigEndian
	var hdr [snapshotHeaderLen]byte
	readHeader := func(i uint32, at int64) (body int64, err error) {
		if at > fileSize-snapshotHeaderLen {
			return 0, fmt.Errorf("snapshot %d header at %#x runs past the end of the file", i, at)
		}
		if _, err := r.ReadAt(hdr[:], at); err != nil {
			return 0, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		extraLen := int64(be.Uint32(hdr[36:]))
		if extraLen > maxSnapshotExtra {
			return 0, fmt.Errorf("snapshot %d: extra data too large (%d bytes, QEMU's limit is %d)", i, extraLen, maxSnapshotExtra)
		}
		return extraLen + int64(be.Uint16(hdr[12:])) + int64(be.Uint16(hdr[14:])), nil
	}
	at := off
	for i := uint32(0); i < n; i++ {
		body, err := readHeader(i, at)
		if err != nil {
			return nil, err
		}
		if end := at - off + snapshotHeaderLen + body; end > maxSnapshotTableSz {
			return nil, fmt.Errorf("snapshot table larger than %d bytes (QEMU's limit): snapshot %d of %d ends %d bytes into it", maxSnapshotTableSz, i, n, end)
		}
		if at+snapshotHeaderLen+body > fileSize {
			return nil, fmt.Errorf("snapshot %d runs past the end of the file", i)
		}
		at += (snapshotHeaderLen + body + 7) &^ 7
	}

	out := make([]snapshot, 0, n)
	var buf []byte // one entry at a time; only what is kept is copied out
	for i := uint32(0); i < n; i++ {
		body, err := readHeader(i, off)
		if err != nil {
			return nil, err
		}
		sn := snapshot{
			L1TableOffset: be.Uint64(hdr[0:]),
			L1Size:        be.Uint32(hdr[8:]),
			DateSec:       be.Uint32(hdr[16:]),
			DateNsec:      be.Uint32(hdr[20:]),
			VMClockNsec:   be.Uint64(hdr[24:]),
			VMStateSize:   be.Uint32(hdr[32:]),
		}
		idLen := int64(be.Uint16(hdr[12:]))
		extraLen := int64(be.Uint32(hdr[36:]))
		if int64(cap(buf)) < body {
			buf = make([]byte, max(body, 4096))
		}
		b := buf[:body]
		// (Some ReaderAts report EOF even for an empty read at the end.)
		if n, err := r.ReadAt(b, off+snapshotHeaderLen); err != nil && !(err == io.EOF && n == len(b)) {
			return nil, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		sn.Extra = append([]byte{}, b[:extraLen]...)
		sn.ID = string(b[extraLen : extraLen+idLen])
		sn.Name = string(b[extraLen+idLen:])
		out = append(out, sn)
		off += (snapshotHeaderLen + body + 7) &^ 7
	}
	return out, nil
}

// encodeSnapshotTable is the inverse of parseSnapshotTable.
func encodeSnapshotTable(snaps []snapshot) []byte {
	var out []byte
	be := binary.BigEndian
	for _, sn := range snaps {
		var hdr [snapshotHeaderLen]byte
		be.PutUint64(hdr[0:], sn.L1TableOffset)
		be.PutUint32(hdr[8:], sn.L1Size)
		be.PutUint16(hdr[12:], uint16(len(sn.ID)))
		be.PutUint16(hdr[14:], uint16(len(sn.Name)))
		be.PutUint32(hdr[16:], sn.DateSec)
		be.PutUint32(hdr[20:], sn.DateNsec)
		be.PutUint64(hdr[24:], sn.VMClockNsec)
		be.PutUint32(hdr[32:], sn.VMStateSize)
		be.PutUint32(hdr[36:], uint32(len(sn.Extra)))
		out = append(out, hdr[:]...)
		out = append(out, sn.Extra...)
		out = append(out, sn.ID...)
		out = append(out, sn.Name...)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

// loadSnapshots reads the snapshot table. A damaged table (past the end of
// the file, over QEMU's size limits) refuses the image, as QEMU does; one
// bad entry does not: QEMU opens such an image and serves the active disk,
// and so do we, with the entry kept (a rewrite of the table preserves it)
// but marked unusable.
func (s *fileState) loadSnapshots(fsize int64) error {
	if s.hdr.NbSnapshots == 0 {
		return nil
	}
	snaps, err := parseSnapshotTable(s.f, int64(s.hdr.SnapshotsOffset), s.hdr.NbSnapshots, fsize)
	if err != nil {
		return formatErr(s.path, "%v", err)
	}
	for i := range snaps {
		snaps[i].problem, snaps[i].badL1 = s.snapshotProblem(&snaps[i], fsize)
	}
	s.snaps = snaps
	return nil
}

// snapshotProblem says why a snapshot cannot be used, "" if it can; badL1
// when its L1 table cannot be read. The L1 checks are those of QEMU's
// check (an entry failing them is a corruption there too); the disk size
// must be one QEMU could apply with `qemu-img snapshot -a`.
func (s *fileState) snapshotProblem(sn *snapshot, fsize int64) (problem string, badL1 bool) {
	cs := uint64(s.g.clusterSize)
	off, length := sn.L1TableOffset, uint64(sn.L1Size)*8
	switch {
	case length > maxL1Bytes:
		return fmt.Sprintf("L1 table too large (%d entries, QEMU's limit is %d)", sn.L1Size, maxL1Bytes/8), true
	case off%cs != 0:
		return fmt.Sprintf("L1 table offset %#x is not cluster-aligned", off), true
	case length > 0 && (off > uint64(fsize) || off+length >= uint64(fsize)+cs):
		// (Up to a cluster past the end reads as zeros, as in QEMU.)
		return fmt.Sprintf("L1 table at %#x (+%d bytes) lies past the end of the file (%d bytes)", off, length, fsize), true
	}
	size := sn.diskSize(s.hdr.Size)
	if limit := maxApplicableSize(s.g); size > limit {
		return fmt.Sprintf("disk size %d is larger than QEMU can apply (%d bytes with %d-byte clusters)", size, limit, cs), false
	}
	if size%512 != 0 {
		return fmt.Sprintf("disk size %d is not a multiple of 512", size), false
	}
	return "", false
}

// maxApplicableSize is the largest virtual size QEMU can resize an image to
// (and so apply a snapshot of): the one its largest L1 table maps. It is
// at most 2^61, well inside int64.
func maxApplicableSize(g geometry) uint64 {
	return uint64(maxL1Bytes/8) * uint64(g.l2Entries) << g.clusterBits
}

// Snapshots lists the image's internal snapshots.
func (img *Image) Snapshots() []SnapshotInfo {
	img.s.mu.Lock()
	defer img.s.mu.Unlock()
	out := make([]SnapshotInfo, 0, len(img.s.snaps))
	for i := range img.s.snaps {
		out = append(out, img.s.snaps[i].info(img.s.hdr.Size))
	}
	return out
}

// OpenSnapshot returns a read-only view of the internal snapshot with the
// given name (or, failing that, ID). Close it when done; it shares the
// image's files and caches.
func (img *Image) OpenSnapshot(nameOrID string) (*Image, error) {
	s := img.s
	s.mu.Lock()
	defer s.mu.Unlock()
	var sn *snapshot
	for i := range s.snaps {
		if s.snaps[i].Name == nameOrID {
			sn = &s.snaps[i]
			break
		}
	}
	if sn == nil {
		for i := range s.snaps {
			if s.snaps[i].ID == nameOrID {
				sn = &s.snaps[i]
				break
			}
		}
	}
	if sn == nil {
		return nil, fmt.Errorf("%s: no snapshot named %s", s.path, imgtext.Quote(nameOrID))
	}
	if s.closed {
		return nil, ErrClosed
	}
	if sn.problem != "" {
		return nil, formatErr(s.path, "snapshot %s (ID %s) cannot be used: %s", imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), sn.problem)
	}
	l1, err := s.readL1(int64(sn.L1TableOffset), int64(sn.L1Size))
	if err != nil {
		return nil, err
	}
	s.refs++
	return &Image{s: s, ro: true, size: int64(sn.diskSize(s.hdr.Size)), l1: l1,
		l1Offset: int64(sn.L1TableOffset), snapshot: sn.Name}, nil
}
