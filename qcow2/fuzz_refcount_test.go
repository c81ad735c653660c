// FuzzRefcountBlock: refcount entries of every width read back what was set
// without disturbing their neighbours.

package qcow2

import "testing"

// FuzzRefcountBlock: entries of every width read back what was set, and
// setting one entry never disturbs its neighbours.
func FuzzRefcountBlock(f *testing.F) {
	f.Add([]byte{0xff, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6}, uint8(4), uint16(3), uint64(7))
	f.Add(make([]byte, 64), uint8(0), uint16(9), uint64(1))
	f.Add(make([]byte, 64), uint8(6), uint16(1), uint64(1<<63))
	f.Fuzz(func(t *testing.T, block []byte, order uint8, idx uint16, v uint64) {
		order %= 7
		bits := uint64(1) << order
		n := int64(len(block)) * 8 / int64(bits)
		if n == 0 {
			return
		}
		i := int64(idx) % n
		if bits < 64 {
			v &= 1<<bits - 1
		}
		before := make([]uint64, n)
		for j := range before {
			before[j] = getRefcountEntry(block, int64(j), uint32(order))
		}
		setRefcountEntry(block, i, uint32(order), v)
		for j := int64(0); j < n; j++ {
			got := getRefcountEntry(block, j, uint32(order))
			want := before[j]
			if j == i {
				want = v
			}
			if got != want {
				t.Fatalf("order %d: entry %d = %d, want %d (set %d to %d)", order, j, got, want, i, v)
			}
		}
	})
}
