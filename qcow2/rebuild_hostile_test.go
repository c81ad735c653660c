// Tests that the refcount rebuild of a dirty image fails cleanly on hostile
// metadata (an error naming the file, nothing written) and still works on
// a sound image with a bitmap.

package qcow2

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDirtyRebuildHostile: the refcount rebuild of a dirty image (lazy
// refcounts) walks the metadata with check's walker, so hostile metadata
// makes the first write fail with an error naming the file, never a
// panic or an unbounded allocation, and nothing is written. A sound dirty
// image with a bitmap still rebuilds and takes the write.
func TestDirtyRebuildHostile(t *testing.T) {
	needQEMU(t)
	const near63 = 0x7fffffffffff0000
	cases := []struct {
		name  string
		patch func(h *hostile)
	}{
		{"refblock-unsigned-overflow", func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset)+8, 0xffffffffffff0000) }},
		{"refblock-bit63-only", func(h *hostile) { h.putU64(int64(h.h.RefcountTableOffset)+8, 1<<63) }},
		{"bitmap-dir-size-max", func(h *hostile) { h.putU64(h.ext+8, 1<<64-1) }},
		{"bitmap-count-max", func(h *hostile) { h.putU32(h.ext, 1<<32-1) }},
		{"bitmap-granularity-63", func(h *hostile) { h.put(h.dir+17, []byte{63}) }},
		{"bitmap-table-near-2^63-huge", func(h *hostile) { h.putU64(h.dir, near63); h.putU32(h.dir+8, 1<<32-1) }},
		{"bitmap-table-near-2^63", func(h *hostile) { h.putU64(h.dir, near63) }},
		// Was: a count array as large as the offset (2^55 / 4 KiB entries).
		{"l2-entry-far-past-eof", func(h *hostile) { h.putU64(h.l2EntryOff(0, 5), oflagCopied|1<<55) }},
		{"sound", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			mtQemuCreate(t, path, 64<<20, "cluster_size=4096,lazy_refcounts=on")
			runCombined(t, dir, "qemu-img", "bitmap", "--add", "-g", "512", path, "b0")
			mtIO(t, path, "write -P 1 0 64k")
			// qemu-io's abort leaves the image dirty, refcounts unwritten.
			_ = exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 2 32M 64k", "-c", "write -P 3 8k 4k", "-c", "abort", path).Run()
			h := newHostile(t, path)
			if h.h.IncompatibleFeatures&IncompatDirty == 0 || h.ext < 0 {
				t.Fatal("test setup: image not dirty or without bitmaps")
			}
			if c.patch != nil {
				c.patch(h)
				if code, out := qemuCheckVerdict(t, path); code == 0 {
					t.Fatalf("test setup: qemu-img check finds the patched image clean:\n%s", out)
				}
			}
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			alloc := ms.TotalAlloc
			err = func() (err error) {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("panic: %v", r)
					}
				}()
				img, err := Open(path, OpenOptions{Warn: func(string) {}})
				if err != nil {
					return err
				}
				defer img.Close()
				_, err = img.WriteAt(bytes.Repeat([]byte{9}, 4096), 1<<20)
				return err
			}()
			runtime.ReadMemStats(&ms)
			if n := ms.TotalAlloc - alloc; n > allocLimit {
				t.Errorf("allocated %d MiB", n>>20)
			}
			if c.patch == nil {
				if err != nil {
					t.Fatalf("write to a sound dirty image: %v", err)
				}
				// The bitmaps are kept (b0 stays in use: qemu-io's abort
				// left it so), nothing leaks.
				if code, out := qemuCheckVerdict(t, path); code != 0 {
					t.Fatalf("qemu-img check after the rebuild and write: exit %d\n%s", code, out)
				}
				return
			}
			if err == nil {
				t.Fatal("write to a dirty image with hostile metadata succeeded")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error does not name the file: %v", err)
			}
			t.Logf("refused: %v", err)
			after, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !bytes.Equal(before, after) {
				t.Error("the refused rebuild changed the file")
			}
		})
	}
}
