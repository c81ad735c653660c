// Regression test for write-zeroes and discard straddling two subclusters:
// both parts are zeroed, whatever the first one held.

package qcow2

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

// TestZeroStraddlingSubclusters: a write-zeroes or discard that covers the
// end of one subcluster and the start of the next, and no whole subcluster,
// must zero both parts, also when the first subcluster already reads as
// zeros and the second holds data (only the first one's kind used to be
// looked at, and the whole range skipped).
func TestZeroStraddlingSubclusters(t *testing.T) {
	needQEMU(t)
	for _, backing := range []bool{false, true} {
		for _, discard := range []bool{false, true} {
			name := fmt.Sprintf("backing=%v/discard=%v", backing, discard)
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "z.qcow2")
				const size = 1 << 20
				under := make([]byte, size) // what shows where the image holds nothing
				args := []string{"create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=65536"}
				if backing {
					base := filepath.Join(dir, "base.qcow2")
					wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", base, fmt.Sprint(size))
					wrun(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x5a 0 %d", size), base)
					under = bytes.Repeat([]byte{0x5a}, size)
					args = append(args, "-b", base, "-F", "qcow2")
				}
				wrun(t, "qemu-img", append(args, path, fmt.Sprint(size))...)
				im, err := Open(path, OpenOptions{})
				if err != nil {
					t.Fatal(err)
				}
				want := append([]byte(nil), under...)
				// Subcluster 1 (2 KiB subclusters) reads as zeros: a zero
				// subcluster over the backing file, unallocated without one.
				if backing {
					if err := im.WriteZeroes(2048, 2048); err != nil {
						t.Fatal(err)
					}
					clear(want[2048:4096])
				}
				// Subcluster 2 holds data.
				data := bytes.Repeat([]byte{0xaa}, 2048)
				if _, err := im.WriteAt(data, 4096); err != nil {
					t.Fatal(err)
				}
				copy(want[4096:], data)
				// Zero the last 512 bytes of subcluster 1 and the first
				// 1536 of subcluster 2.
				op := im.WriteZeroes
				if discard {
					op = im.Discard
				}
				if err := op(3584, 2048); err != nil {
					t.Fatal(err)
				}
				clear(want[3584:5632])
				got := make([]byte, size)
				if _, err := im.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if d := diffAt(got, want); d != "" {
					t.Errorf("read back: %s", d)
				}
				if err := im.Close(); err != nil {
					t.Fatal(err)
				}
				qemuCheck(t, path)
				if d := diffAt(qemuRaw(t, path), want); d != "" {
					t.Errorf("qemu-img reads: %s", d)
				}
			})
		}
	}
}
