// Table tests of the geometry: guest offsets split into cluster ranges and
// the L1/L2 index arithmetic.

package qcow2

import "testing"

func TestSplitRange(t *testing.T) {
	g := newGeometry(16, false)
	cases := []struct {
		off, n int64
		want   []piece
	}{
		{0, 0, nil},
		{0, 65536, []piece{{0, 0, 65536, 0}}},
		{100, 10, []piece{{0, 100, 10, 0}}},
		{65530, 12, []piece{{0, 65530, 6, 0}, {1, 0, 6, 6}}},
		{65536*3 - 1, 65536 + 2, []piece{{2, 65535, 1, 0}, {3, 0, 65536, 1}, {4, 0, 1, 65537}}},
	}
	for _, c := range cases {
		var got []piece
		g.splitRange(c.off, c.n, func(p piece) bool { got = append(got, p); return true })
		if len(got) != len(c.want) {
			t.Fatalf("split(%d,%d) = %v, want %v", c.off, c.n, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("split(%d,%d)[%d] = %v, want %v", c.off, c.n, i, got[i], c.want[i])
			}
		}
	}
}

func TestGeometry(t *testing.T) {
	for _, tc := range []struct {
		bits    uint
		ext     bool
		entries int64
		subBits uint
		l1For1G int64
	}{
		{9, false, 64, 9, (1 << 30) / (64 * 512)},
		{16, false, 8192, 16, 2},
		{16, true, 4096, 11, 4},
		{21, false, 262144, 21, 1},
		{12, true, 256, 7, (1 << 30) / (256 * 4096)},
	} {
		g := newGeometry(tc.bits, tc.ext)
		if g.l2Entries != tc.entries || g.subclusterBits != tc.subBits || g.l1EntriesFor(1<<30) != tc.l1For1G {
			t.Errorf("bits=%d ext=%v: entries %d subBits %d l1 %d", tc.bits, tc.ext, g.l2Entries, g.subclusterBits, g.l1EntriesFor(1<<30))
		}
		c := int64(12345)
		if g.l1Index(c)*g.l2Entries+g.l2Index(c) != c {
			t.Errorf("l1/l2 index do not recompose %d", c)
		}
	}
}
