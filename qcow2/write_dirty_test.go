// Tests that a dirty image left by a killed lazy-refcounts writer gets its
// refcounts rebuilt before the first write allocates.

package qcow2

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestDirtyImageRepairedBeforeWrite: an image left dirty by a killed writer
// with lazy refcounts has stale refcounts; the first write must rebuild them
// so that new allocations do not land on used clusters.
func TestDirtyImageRepairedBeforeWrite(t *testing.T) {
	needQEMU(t)
	for _, opts := range []string{"lazy_refcounts=on,cluster_size=4096", "lazy_refcounts=on,cluster_size=512,refcount_bits=1"} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "d.qcow2")
			wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, "16M")
			// qemu-io's abort leaves the image dirty with refcounts unwritten.
			exec.Command("qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 8M 1M", "-c", "abort", path).Run()
			if err := exec.Command("qemu-img", "check", path).Run(); err == nil {
				t.Fatal("expected qemu-img check to find the dirty image's stale refcounts")
			}
			want := qemuRaw(t, path)
			var warned bool
			im, err := Open(path, OpenOptions{Warn: func(string) { warned = true }})
			if err != nil {
				t.Fatal(err)
			}
			buf := bytes.Repeat([]byte{0x33}, 2<<20)
			if _, err := im.WriteAt(buf, 12<<20); err != nil {
				t.Fatal(err)
			}
			copy(want[12<<20:], buf)
			if _, err := im.WriteAt(buf[:5000], 1<<20+77); err != nil {
				t.Fatal(err)
			}
			copy(want[1<<20+77:], buf[:5000])
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			if !warned {
				t.Error("no warning about the rebuilt refcounts")
			}
			qemuCheck(t, path)
			if d := diffAt(qemuRaw(t, path), want); d != "" {
				t.Fatal(d)
			}
		})
	}
}
