package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
)

const (
	snapshotHeaderLen  = 40
	maxSnapshotExtra   = 1024
	maxSnapshotTableSz = 64 << 20
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
}

// diskSize is the snapshot's virtual disk size (extra data, or the image's).
func (sn *snapshot) diskSize(imageSize uint64) uint64 {
	if len(sn.Extra) >= 16 {
		return binary.BigEndian.Uint64(sn.Extra[8:])
	}
	return imageSize
}

func (sn *snapshot) info(imageSize uint64) SnapshotInfo {
	si := SnapshotInfo{ID: sn.ID, Name: sn.Name, DiskSize: int64(sn.diskSize(imageSize)),
		DateSec: sn.DateSec, DateNsec: sn.DateNsec, VMClockNsec: sn.VMClockNsec,
		VMStateSize: uint64(sn.VMStateSize), ICount: ^uint64(0)}
	if len(sn.Extra) >= 8 {
		si.VMStateSize = binary.BigEndian.Uint64(sn.Extra[0:])
	}
	if len(sn.Extra) >= 24 {
		si.ICount = binary.BigEndian.Uint64(sn.Extra[16:])
	}
	return si
}

// parseSnapshotTable decodes n entries from r starting at off.
func parseSnapshotTable(r io.ReaderAt, off int64, n uint32, fileSize int64) ([]snapshot, error) {
	var out []snapshot
	start := off
	for i := uint32(0); i < n; i++ {
		if off-start > maxSnapshotTableSz {
			return nil, fmt.Errorf("snapshot table larger than %d bytes", maxSnapshotTableSz)
		}
		var hdr [snapshotHeaderLen]byte
		if off+snapshotHeaderLen > fileSize {
			return nil, fmt.Errorf("snapshot %d header at %#x runs past the end of the file", i, off)
		}
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			return nil, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		be := binary.BigEndian
		sn := snapshot{
			L1TableOffset: be.Uint64(hdr[0:]),
			L1Size:        be.Uint32(hdr[8:]),
			DateSec:       be.Uint32(hdr[16:]),
			DateNsec:      be.Uint32(hdr[20:]),
			VMClockNsec:   be.Uint64(hdr[24:]),
			VMStateSize:   be.Uint32(hdr[32:]),
		}
		idLen := int64(be.Uint16(hdr[12:]))
		nameLen := int64(be.Uint16(hdr[14:]))
		extraLen := int64(be.Uint32(hdr[36:]))
		if extraLen > maxSnapshotExtra {
			return nil, fmt.Errorf("snapshot %d: extra data too large (%d bytes)", i, extraLen)
		}
		body := extraLen + idLen + nameLen
		if off+snapshotHeaderLen+body > fileSize {
			return nil, fmt.Errorf("snapshot %d runs past the end of the file", i)
		}
		buf := make([]byte, body)
		// (Some ReaderAts report EOF even for an empty read at the end.)
		if n, err := r.ReadAt(buf, off+snapshotHeaderLen); err != nil && !(err == io.EOF && n == len(buf)) {
			return nil, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		sn.Extra = buf[:extraLen]
		sn.ID = string(buf[extraLen : extraLen+idLen])
		sn.Name = string(buf[extraLen+idLen:])
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

func (s *shared) loadSnapshots(fsize int64) error {
	if s.hdr.NbSnapshots == 0 {
		return nil
	}
	snaps, err := parseSnapshotTable(s.f, int64(s.hdr.SnapshotsOffset), s.hdr.NbSnapshots, fsize)
	if err != nil {
		return formatErr(s.path, "%v", err)
	}
	for i, sn := range snaps {
		if int64(sn.L1Size)*8 > maxL1Bytes {
			return formatErr(s.path, "snapshot %q: L1 table too large (%d entries)", sn.Name, sn.L1Size)
		}
		if err := s.checkTable(fmt.Sprintf("snapshot %q L1 table", sn.Name), sn.L1TableOffset, int64(sn.L1Size)*8, fsize); err != nil && sn.L1Size > 0 {
			return err
		}
		_ = i
	}
	s.snaps = snaps
	return nil
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
		return nil, fmt.Errorf("%s: no snapshot named %s", s.path, strconv.Quote(nameOrID))
	}
	if s.closed {
		return nil, ErrClosed
	}
	l1, err := s.readL1(int64(sn.L1TableOffset), int64(sn.L1Size))
	if err != nil {
		return nil, err
	}
	s.refs++
	return &Image{s: s, ro: true, size: int64(sn.diskSize(s.hdr.Size)), l1: l1,
		l1Offset: int64(sn.L1TableOffset), snapshot: sn.Name}, nil
}
