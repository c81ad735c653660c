// Metadata overlap checks, as QEMU's qcow2 does before writes: a data
// cluster or L2 table whose host range overlaps the header, the active L1
// table, the refcount table or the snapshot table means the metadata is
// inconsistent. Writing through it would destroy the image, so the image is
// marked corrupt instead. The checks are a handful of comparisons.

package qcow2

// overlapsMetadata names the fixed metadata structure [off, off+n) of the
// image file overlaps, or "" if none.
func (img *Image) overlapsMetadata(off, n int64) string {
	return img.s.overlapsMetadata(off, n, img.l1Offset, int64(len(img.l1))*8)
}

// overlapsMetadata is overlapsMetadata for the L1 table at l1Off (l1Len
// bytes).
func (s *fileState) overlapsMetadata(off, n, l1Off, l1Len int64) string {
	h := &s.hdr
	over := func(start, length int64) bool {
		return length > 0 && off < start+length && start < off+n
	}
	cs := s.g.clusterSize
	switch {
	case over(0, cs):
		return "the header"
	case over(l1Off, l1Len):
		return "the active L1 table"
	case over(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs):
		return "the refcount table"
	case h.NbSnapshots > 0 && over(int64(h.SnapshotsOffset), snapshotTableSize(s.snaps)):
		return "the snapshot table"
	}
	return ""
}

func snapshotTableSize(snaps []snapshot) int64 {
	var n int64
	for _, sn := range snaps {
		n += (snapshotHeaderLen + int64(len(sn.Extra)+len(sn.ID)+len(sn.Name)) + 7) &^ 7
	}
	return n
}
