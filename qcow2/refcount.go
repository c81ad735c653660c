// Refcount blocks hold 2^refcount_order-bit entries. Widths below 8 bits
// pack entries LSB-first inside each byte (as QEMU does); 8 to 64 bits are
// big-endian integers.

package qcow2

import (
	"encoding/binary"
	"fmt"
)

func getRefcountEntry(block []byte, i int64, order uint32) uint64 {
	switch order {
	case 0, 1, 2:
		bits := int64(1) << order
		perByte := 8 / bits
		shift := uint((i % perByte) * bits)
		return uint64(block[i/perByte]>>shift) & (1<<bits - 1)
	case 3:
		return uint64(block[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(block[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(block[i*4:]))
	default:
		return binary.BigEndian.Uint64(block[i*8:])
	}
}

func setRefcountEntry(block []byte, i int64, order uint32, v uint64) {
	switch order {
	case 0, 1, 2:
		bits := int64(1) << order
		perByte := 8 / bits
		shift := uint((i % perByte) * bits)
		mask := byte(1<<bits-1) << shift
		block[i/perByte] = block[i/perByte]&^mask | byte(v)<<shift&mask
	case 3:
		block[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(block[i*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(block[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(block[i*8:], v)
	}
}

// refcountTable is the in-memory view of the refcount structure of a writable
// image: the refcount table (entries = refcount block offsets) and the
// geometry of refcount blocks. Blocks themselves live in fileState.refBlocks.
type refcountTable struct {
	order       uint32
	perBlock    int64 // entries per refcount block
	maxRefcount uint64
	table       []uint64
	tableOffset int64
	tableDirty  map[int64]bool // table indexes to write back
}

func (s *fileState) loadRefcounts() (*refcountTable, error) {
	h := s.hdr
	cs := s.g.clusterSize
	r := &refcountTable{
		order:       h.RefcountOrder,
		perBlock:    cs * 8 >> h.RefcountOrder,
		maxRefcount: 1<<(1<<h.RefcountOrder) - 1,
		tableOffset: int64(h.RefcountTableOffset),
		tableDirty:  map[int64]bool{},
	}
	if h.RefcountOrder == 6 {
		r.maxRefcount = ^uint64(0)
	}
	raw := make([]byte, int64(h.RefcountTableClusters)*cs)
	if _, err := s.f.ReadAt(raw, r.tableOffset); err != nil {
		return nil, fmt.Errorf("read refcount table of %s: %w", s.path, err)
	}
	r.table = make([]uint64, len(raw)/8)
	for i := range r.table {
		r.table[i] = binary.BigEndian.Uint64(raw[i*8:])
		if off := r.table[i] & refTableOffsetMask; off&uint64(cs-1) != 0 {
			return nil, formatErr(s.path, "refcount table entry %d: block offset %#x is not cluster-aligned", i, off)
		}
	}
	return r, nil
}

// refcount returns the refcount of host cluster cl. Caller holds s.mu.
func (w *writer) refcount(cl int64) (uint64, error) {
	r := w.refTable
	bi := cl / r.perBlock
	if bi >= int64(len(r.table)) {
		return 0, nil
	}
	boff := int64(r.table[bi] & refTableOffsetMask)
	if boff == 0 {
		return 0, nil
	}
	blk, err := w.img.s.refBlocks.Get(uint64(boff))
	if err != nil {
		return 0, err
	}
	return getRefcountEntry(blk.Data, cl%r.perBlock, r.order), nil
}

// setRefcount sets the refcount of host cluster cl, creating refcount blocks
// (and growing the refcount table) as needed. Caller holds s.mu.
func (w *writer) setRefcount(cl int64, v uint64) error {
	r := w.refTable
	if v > r.maxRefcount {
		return fmt.Errorf("refcount of cluster %#x would overflow %d bits", cl<<w.img.s.g.clusterBits, 1<<r.order)
	}
	bi := cl / r.perBlock
	if bi >= int64(len(r.table)) {
		if err := w.growRefcountTable(bi, cl); err != nil {
			return err
		}
	}
	if r.table[bi]&refTableOffsetMask == 0 {
		if err := w.newRefcountBlock(bi, cl); err != nil {
			return err
		}
	}
	blk, err := w.img.s.refBlocks.Get(r.table[bi] & refTableOffsetMask)
	if err != nil {
		return err
	}
	setRefcountEntry(blk.Data, cl%r.perBlock, r.order, v)
	w.img.s.refBlocks.MarkDirty(blk)
	if v > 0 {
		w.noteUsed(cl)
	}
	if cl >= w.end {
		w.end = cl + 1
	}
	return nil
}

// newRefcountBlock creates the refcount block for block index bi inside the
// very range it describes: with no block, every cluster of the range is free.
// avoid is a cluster the caller is about to use.
func (w *writer) newRefcountBlock(bi, avoid int64) error {
	s := w.img.s
	r := w.refTable
	b := bi * r.perBlock
	if b == avoid {
		b++
	}
	blk, err := s.refBlocks.Put(uint64(b << s.g.clusterBits))
	if err != nil {
		return err
	}
	setRefcountEntry(blk.Data, b%r.perBlock, r.order, 1)
	s.refBlocks.MarkDirty(blk)
	// Make the block durable before the table points at it, and the table
	// entry durable before any L2 entry relies on it (new blocks are rare:
	// one per perBlock clusters of host space).
	if err := s.writeBlock(uint64(b<<s.g.clusterBits), blk.Data); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	r.table[bi] = uint64(b << s.g.clusterBits)
	r.tableDirty[bi] = true
	if err := w.writeRefcountTableEntries(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	w.noteUsed(b)
	if b >= w.end {
		w.end = b + 1
	}
	return nil
}

// growRefcountTable moves the refcount table to the end of the file with
// room for at least block index need, plus the refcount blocks that describe
// the new table's own clusters (placed after avoid). It is written out and the header switched
// over at once (then the old table is freed).
func (w *writer) growRefcountTable(need, avoid int64) error {
	s := w.img.s
	r := w.refTable
	cs := s.g.clusterSize
	perCluster := cs / 8
	entries := max(need+1, int64(len(r.table))) * 3 / 2
	var start, tableClusters, nBlocks int64
	var firstRange int64
	for {
		entries = (entries + perCluster - 1) / perCluster * perCluster
		tableClusters = entries / perCluster
		start = max(w.end, avoid+1) // avoid: the cluster the caller is allocating
		// New blocks go right after the table; count the ranges without a
		// block that [start, start+tableClusters+nBlocks) touches.
		nBlocks = 0
		for {
			firstRange = start / r.perBlock
			last := (start + tableClusters + nBlocks - 1) / r.perBlock
			missing := int64(0)
			for i := firstRange; i <= last; i++ {
				if i >= int64(len(r.table)) || r.table[i] == 0 {
					missing++
				}
			}
			if missing == nBlocks {
				break
			}
			nBlocks = missing
		}
		if last := (start + tableClusters + nBlocks - 1) / r.perBlock; last < entries && need < entries {
			break
		}
		entries *= 2
	}
	if entries*8 > maxRefTableBytes {
		return fmt.Errorf("%s: refcount table would exceed %d bytes", s.path, maxRefTableBytes)
	}
	newTable := make([]uint64, entries)
	copy(newTable, r.table)
	// Create the missing blocks after the table.
	next := start + tableClusters
	end := start + tableClusters + nBlocks
	for i := firstRange; i <= (end-1)/r.perBlock; i++ {
		if newTable[i] != 0 {
			continue
		}
		if _, err := s.refBlocks.Put(uint64(next << s.g.clusterBits)); err != nil {
			return err
		}
		newTable[i] = uint64(next << s.g.clusterBits)
		next++
	}
	oldTable, oldOffset, oldClusters := r.table, r.tableOffset, int64(s.hdr.RefcountTableClusters)
	r.table = newTable
	// Refcounts of the table and new blocks (all within existing blocks now).
	for cl := start; cl < end; cl++ {
		bi := cl / r.perBlock
		blk, err := s.refBlocks.Get(r.table[bi])
		if err != nil {
			r.table = oldTable
			return err
		}
		setRefcountEntry(blk.Data, cl%r.perBlock, r.order, 1)
		s.refBlocks.MarkDirty(blk)
	}
	w.end = end
	w.noteUsed(end - 1)
	// Write blocks, then the table, then switch the header.
	if err := s.refBlocks.Flush(); err != nil {
		return err
	}
	raw := make([]byte, entries*8)
	for i, v := range newTable {
		binary.BigEndian.PutUint64(raw[i*8:], v)
	}
	if _, err := s.f.WriteAt(raw, start<<s.g.clusterBits); err != nil {
		return fmt.Errorf("write refcount table of %s: %w", s.path, err)
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	s.hdr.RefcountTableOffset = uint64(start << s.g.clusterBits)
	s.hdr.RefcountTableClusters = uint32(tableClusters)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := s.syncMeta(); err != nil {
		return err
	}
	r.tableOffset = start << s.g.clusterBits
	r.tableDirty = map[int64]bool{}
	for cl := oldOffset >> s.g.clusterBits; cl < oldOffset>>s.g.clusterBits+oldClusters; cl++ {
		w.deferFree(cl, 1)
	}
	return nil
}

// writeRefcountTableEntries writes the dirty entries of the refcount table.
func (w *writer) writeRefcountTableEntries() error {
	r := w.refTable
	s := w.img.s
	for i := range r.tableDirty {
		s.metaUnsynced.Store(true)
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], r.table[i])
		if _, err := s.f.WriteAt(b[:], r.tableOffset+i*8); err != nil {
			return fmt.Errorf("write refcount table entry of %s: %w", s.path, err)
		}
	}
	clear(r.tableDirty)
	return nil
}
