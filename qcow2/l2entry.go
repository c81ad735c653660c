// L2 entries decoded: the cluster kinds (standard and extended L2 with
// subclusters) and the compressed cluster descriptor.

package qcow2

import "fmt"

// clusterKind classifies a cluster (or subcluster) from its L2 entry.
type clusterKind uint8

const (
	kindUnallocated clusterKind = iota // read from the backing file, or zeros
	kindZero                           // reads as zeros
	kindNormal                         // data at a host offset
	kindCompressed                     // compressed cluster
)

// l2Entry is a decoded L2 entry: the standard 64-bit word and, with extended
// L2 entries, the subcluster bitmap word.
type l2Entry struct {
	word   uint64
	bitmap uint64
}

func (e l2Entry) compressed() bool { return e.word&oflagCompressed != 0 }
func (e l2Entry) copied() bool     { return e.word&oflagCopied != 0 }
func (e l2Entry) hostOffset() int64 {
	return int64(e.word & l2EntryOffsetMask)
}

// subAllocated / subZero read the extended-L2 bitmap of subcluster i.
func (e l2Entry) subAllocated(i int) bool { return e.bitmap&(1<<uint(i)) != 0 }
func (e l2Entry) subZero(i int) bool      { return e.bitmap&(1<<uint(32+i)) != 0 }

// kind classifies the cluster (standard L2) or subcluster i (extended L2).
func (e l2Entry) kind(g *geometry, i int) (clusterKind, error) {
	if e.compressed() {
		return kindCompressed, nil
	}
	host := e.hostOffset()
	if host&(g.clusterSize-1) != 0 {
		return 0, fmt.Errorf("L2 entry %#x: host offset %#x is not cluster-aligned", e.word, host)
	}
	// Offset 0 means "unallocated", except in an external data file, where
	// 0 is a valid offset; there every allocated cluster has refcount 1, so
	// QCOW_OFLAG_COPIED tells the two apart (as QEMU does).
	unallocated := host == 0 && !(g.dataFile && e.copied())
	if g.subclusters == 1 {
		if e.word&oflagZero != 0 {
			return kindZero, nil
		}
		if unallocated {
			return kindUnallocated, nil
		}
		return kindNormal, nil
	}
	a, z := e.subAllocated(i), e.subZero(i)
	switch {
	case a && z:
		return 0, fmt.Errorf("L2 entry %#x/%#x: subcluster %d both allocated and zero", e.word, e.bitmap, i)
	case a:
		if unallocated {
			return 0, fmt.Errorf("L2 entry %#x/%#x: subcluster %d allocated in an unallocated cluster", e.word, e.bitmap, i)
		}
		return kindNormal, nil
	case z:
		return kindZero, nil
	default:
		return kindUnallocated, nil
	}
}

// compressedDescriptor splits a compressed cluster descriptor into the host
// offset of the compressed data and an upper bound of its length.
func compressedDescriptor(word uint64, clusterBits uint) (host int64, length int64) {
	x := 62 - (clusterBits - 8)
	desc := word & (oflagCompressed - 1)
	host = int64(desc & (1<<x - 1))
	sectors := int64(desc >> x) // additional 512-byte sectors
	length = (sectors+1)*512 - host&511
	return host, length
}
