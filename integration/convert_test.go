// Tests of convert beside mounts: a read-write mounted source and a target
// a mount uses are refused; a read-only mounted source converts.

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConvertRefusedWhileMounted: convert refuses a source mounted
// read-write (its reader locks conflict; the error names the mount) and a
// target that a mount uses (left untouched); a read-only mounted source
// converts.
func TestConvertRefusedWhileMounted(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	qemuCreate(t, img, "8M", "", "", "")
	run(t, "qemu-io", "-c", "write -P 7 1M 300k", img)
	target := filepath.Join(dir, "out.qcow2")
	mnt := mkdir(t, dir, "mnt")

	mountQcow2fs(t, mnt, nil, img)
	r := execute("", qcow2fsBin, "convert", img, target)
	if r.Code != 1 || !strings.Contains(r.Stderr, img+" is mounted read-write at "+mnt) ||
		!strings.Contains(r.Stderr, "qcow2fs unmount "+mnt) || strings.Count(r.Stderr, "\n") != 1 {
		t.Errorf("convert of a rw-mounted image: want exit 1 naming the mount: %s", r)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("refused convert left %s: %v", target, err)
	}
	unmountQcow2fs(t, mnt, img)

	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	run(t, qcow2fsBin, "convert", "-c", img, target)
	other := filepath.Join(dir, "other.qcow2")
	qemuCreate(t, other, "8M", "", "", "")
	before, _ := os.ReadFile(img)
	r = execute("", qcow2fsBin, "convert", other, img)
	if r.Code != 1 || !strings.Contains(r.Stderr, "qcow2fs mount at "+mnt) {
		t.Errorf("convert onto a mounted image: want exit 1 naming the mount: %s", r)
	}
	if after, _ := os.ReadFile(img); string(after) != string(before) {
		t.Errorf("a refused convert changed the mounted image")
	}
	unmountQcow2fs(t, mnt, img)
	run(t, "qemu-img", "check", target)
	run(t, "qemu-img", "compare", img, target)
}
