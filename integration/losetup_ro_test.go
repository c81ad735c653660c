// Tests that an ext4 image mounted --ro works as a read-only loop device for
// blkid, fsck.ext4 and the kernel's ext4.

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestLosetupReadOnlyExt4: an image holding ext4 (whole device, no partition
// table: this kernel has no partition parsers) mounted --ro works as a
// read-only loop device that blkid, fsck.ext4 and the kernel's ext4 accept.
func TestLosetupReadOnlyExt4(t *testing.T) {
	requireTools(t, "losetup", "mkfs.ext4", "fsck.ext4", "blkid")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	fsDir := mkdir(t, dir, "fs")

	// The files ext4 will hold, put in at mkfs time with -d.
	content := mkdir(t, dir, "content")
	want := writeRandomFile(t, filepath.Join(content, "random.bin"), 5, 3<<20+123)
	mkdir(t, content, "sub")
	if err := os.WriteFile(filepath.Join(content, "sub", "hello.txt"), []byte("hello from qcow2fs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "ext4.raw")
	run(t, "mkfs.ext4", "-q", "-F", "-L", "qcow2fs-test", "-d", content, raw, "64M")
	img := k.Path("ext4")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
	before := testenv.HashTree(t, k.Dir)

	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	dev := loopAttach(t, filepath.Join(mnt, "ext4.raw"), "-r")

	if typ := strings.TrimSpace(run(t, "blkid", "-o", "value", "-s", "TYPE", dev)); typ != "ext4" {
		t.Fatalf("blkid %s: TYPE %q, want ext4", dev, typ)
	}
	if r := execute("", "fsck.ext4", "-fn", dev); r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn %s is not clean: %s", dev, r)
	}
	mountDev(t, dev, fsDir, "ro")
	got, err := os.ReadFile(filepath.Join(fsDir, "random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("random.bin read back through ext4 differs from what mkfs put in")
	}
	if b, err := os.ReadFile(filepath.Join(fsDir, "sub", "hello.txt")); err != nil || string(b) != "hello from qcow2fs\n" {
		t.Errorf("sub/hello.txt: %q, %v", b, err)
	}

	run(t, "umount", fsDir)
	loopDetach(t, dev)
	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}
