// Tests that a read-write mount keeps a QEMU-made bitmap: in use while
// mounted, stored at unmount, dirty exactly where written.

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountKeepsBitmaps: writes through a read-write mount keep a bitmap
// QEMU created: in use while mounted, stored at unmount (qemu-img check
// clean, not in use), and map --bitmap shows exactly the granules written.
func TestMountKeepsBitmaps(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	qemuCreate(t, img, "64M", "", "", "")
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	mnt := mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, nil, img)
	f, err := os.OpenFile(filepath.Join(mnt, "vm.raw"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for _, off := range []int64{0, 5 << 20, 5<<20 + 4096, 33<<20 - 100} {
		if _, err := f.WriteAt(buf[:100+off%4096], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out := run(t, "qemu-img", "info", "-U", img); !strings.Contains(out, "in-use") {
		t.Errorf("bitmap not flagged in use while mounted read-write:\n%s", out)
	}
	unmountQcow2fs(t, mnt, img)
	run(t, "qemu-img", "check", img)
	if out := run(t, "qemu-img", "info", img); strings.Contains(out, "in-use") || !strings.Contains(out, "b0") {
		t.Errorf("after unmount:\n%s", out)
	}
	var got []struct {
		Start, Length int64
		Dirty         bool
	}
	if err := json.Unmarshal([]byte(run(t, qcow2fsBin, "map", "--bitmap", "b0", "--output", "json", img)), &got); err != nil {
		t.Fatal(err)
	}
	var dirty [][2]int64
	for _, e := range got {
		if e.Dirty {
			dirty = append(dirty, [2]int64{e.Start, e.Length})
		}
	}
	want := [][2]int64{{0, 64 << 10}, {5 << 20, 64 << 10}, {33<<20 - 64<<10, 128 << 10}}
	if len(dirty) != len(want) {
		t.Fatalf("dirty runs %v, want %v", dirty, want)
	}
	for i := range want {
		if dirty[i] != want[i] {
			t.Fatalf("dirty runs %v, want %v", dirty, want)
		}
	}
}
