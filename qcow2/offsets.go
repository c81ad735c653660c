// Cluster arithmetic: tiny pure functions and one range splitter that turns a
// guest byte range into per-cluster pieces.

package qcow2

const (
	l1EntryOffsetMask  = 0x00fffffffffffe00 // bits 9-55: L2 table offset
	l2EntryOffsetMask  = 0x00fffffffffffe00 // bits 9-55: standard cluster host offset
	oflagCopied        = uint64(1) << 63    // QCOW_OFLAG_COPIED
	oflagCompressed    = uint64(1) << 62    // QCOW_OFLAG_COMPRESSED
	oflagZero          = uint64(1)          // bit 0 of a standard descriptor: all zeros (v3)
	refTableOffsetMask = 0xfffffffffffffe00 // bits 9-63
)

// geometry holds the derived sizes of one image.
type geometry struct {
	clusterBits    uint
	clusterSize    int64
	l2EntrySize    int64 // 8 or 16 (extended L2)
	l2Entries      int64 // entries per L2 table
	subclusterBits uint  // log2 of subcluster size
	subclusters    int   // subclusters per cluster (1 without extended L2)
	// dataFile is set for images with an external data file, where host
	// offset 0 is a valid data location (see l2Entry.kind).
	dataFile bool
}

func newGeometry(clusterBits uint, extL2 bool) geometry {
	g := geometry{clusterBits: clusterBits, clusterSize: 1 << clusterBits, l2EntrySize: 8, subclusters: 1}
	if extL2 {
		g.l2EntrySize = 16
		g.subclusters = 32
	}
	g.l2Entries = g.clusterSize / g.l2EntrySize
	g.subclusterBits = clusterBits
	if extL2 {
		g.subclusterBits = clusterBits - 5
	}
	return g
}

// clusterIndex returns the guest cluster number holding off.
func (g *geometry) clusterIndex(off int64) int64 { return off >> g.clusterBits }

// inCluster returns off's offset inside its cluster.
func (g *geometry) inCluster(off int64) int64 { return off & (g.clusterSize - 1) }

// l1Index returns the L1 index of guest cluster c.
func (g *geometry) l1Index(c int64) int64 { return c / g.l2Entries }

// l2Index returns the L2 index of guest cluster c.
func (g *geometry) l2Index(c int64) int64 { return c % g.l2Entries }

// l1EntriesFor returns the number of L1 entries needed for a virtual size.
func (g *geometry) l1EntriesFor(size int64) int64 {
	perL2 := g.l2Entries << g.clusterBits
	return (size + perL2 - 1) / perL2
}

// alignUp rounds n up to a multiple of the cluster size.
func (g *geometry) alignUp(n int64) int64 { return (n + g.clusterSize - 1) &^ (g.clusterSize - 1) }

// piece is one cluster's share of a guest byte range.
type piece struct {
	cluster int64 // guest cluster index
	skip    int64 // offset inside the cluster
	length  int64
	bufOff  int64 // offset of this piece in the caller's buffer
}

// splitRange cuts [off, off+n) into per-cluster pieces and calls fn for each
// until fn returns false.
func (g *geometry) splitRange(off, n int64, fn func(p piece) bool) {
	var done int64
	for done < n {
		cur := off + done
		skip := g.inCluster(cur)
		l := min(g.clusterSize-skip, n-done)
		if !fn(piece{cluster: g.clusterIndex(cur), skip: skip, length: l, bufOff: done}) {
			return
		}
		done += l
	}
}
