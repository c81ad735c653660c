// Table tests of L2 entry classification (standard and extended L2) and of
// compressed cluster descriptors.

package qcow2

import "testing"

func TestL2EntryKind(t *testing.T) {
	g := newGeometry(16, false)
	ge := newGeometry(16, true)
	cases := []struct {
		g    *geometry
		e    l2Entry
		sub  int
		want clusterKind
		bad  bool
	}{
		{&g, l2Entry{word: 0}, 0, kindUnallocated, false},
		{&g, l2Entry{word: 1}, 0, kindZero, false},
		{&g, l2Entry{word: 0x10000 | 1}, 0, kindZero, false},
		{&g, l2Entry{word: 0x10000 | oflagCopied}, 0, kindNormal, false},
		{&g, l2Entry{word: 0x10200}, 0, 0, true},
		{&g, l2Entry{word: oflagCompressed | 1234}, 0, kindCompressed, false},
		{&ge, l2Entry{word: 0x10000, bitmap: 1}, 0, kindNormal, false},
		{&ge, l2Entry{word: 0x10000, bitmap: 1}, 1, kindUnallocated, false},
		{&ge, l2Entry{word: 0, bitmap: 1 << 33}, 1, kindZero, false},
		{&ge, l2Entry{word: 0, bitmap: 1<<33 | 2}, 1, 0, true},
		{&ge, l2Entry{word: 0, bitmap: 4}, 2, 0, true},
	}
	for i, c := range cases {
		k, err := c.e.kind(c.g, c.sub)
		if (err != nil) != c.bad || (!c.bad && k != c.want) {
			t.Errorf("case %d: kind=%v err=%v, want %v bad=%v", i, k, err, c.want, c.bad)
		}
	}
}

func TestCompressedDescriptor(t *testing.T) {
	// 64 KiB clusters: x = 54.
	word := oflagCompressed | uint64(3)<<54 | 0x12345
	host, n := compressedDescriptor(word, 16)
	if host != 0x12345 || n != 4*512-0x145 {
		t.Fatalf("host %#x len %d", host, n)
	}
	// 2 MiB clusters: x = 49.
	word = oflagCompressed | uint64(0)<<49 | 0x200
	host, n = compressedDescriptor(word, 21)
	if host != 0x200 || n != 512 {
		t.Fatalf("host %#x len %d", host, n)
	}
}
