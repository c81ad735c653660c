// Tests of a read-write mount's file under losetup, with and without direct
// I/O: mkfs.ext4, a tree copy, fsck and blkdiscard, data surviving a remount.

package integration

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copySources are real trees the loop-device test copies into ext4: files
// of all sizes, symlinks, hard links and directories (about 230 MiB on
// Debian); a generated tree of random files is copied too, so the test does
// not depend on what a machine happens to have installed.
var copySources = []string{"/usr/share/doc", "/usr/share/man"}

// TestLosetupReadWriteExt4: a read-write mount's file under losetup, with
// and without direct I/O, takes mkfs.ext4 (which discards the whole device
// first), a tree copy, fsck and blkdiscard; the data survives a full
// remount of the stack and the image stays clean.
func TestLosetupReadWriteExt4(t *testing.T) {
	requireTools(t, "losetup", "mkfs.ext4", "fsck.ext4", "blkdiscard", "diff", "cp")
	for _, dio := range []string{"on", "off"} {
		t.Run("direct-io="+dio, func(t *testing.T) { runLosetupRW(t, dio) })
	}
}

func runLosetupRW(t *testing.T, dio string) {
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	fsDir := mkdir(t, dir, "fs")
	img := k.Path("disk")
	qemuCreate(t, img, "2G", "", "", "")
	exposed := filepath.Join(mnt, "disk.raw")

	sources := []string{generatedTree(t, dir)}
	for _, s := range copySources {
		if _, err := os.Stat(s); err == nil {
			sources = append(sources, s)
		}
	}
	diffAll := func(when string) {
		t.Helper()
		for _, s := range sources {
			if r := execute("", "diff", "-r", "--no-dereference", s, filepath.Join(fsDir, filepath.Base(s))); r.Code != 0 {
				t.Fatalf("%s: the copy of %s differs: %s", when, s, r)
			}
		}
	}

	// Phase 1: mkfs, copy, compare, fsck.
	mountQcow2fs(t, mnt, nil, img)
	dev := loopAttach(t, exposed, "--direct-io="+dio)
	// losetup falls back to buffered I/O quietly when O_DIRECT fails.
	wantDIO := map[string]string{"on": "1", "off": "0"}[dio]
	if b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio")); err != nil || strings.TrimSpace(string(b)) != wantDIO {
		t.Fatalf("%s: loop/dio is %q (%v), want %s", dev, b, err, wantDIO)
	}
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mountDev(t, dev, fsDir, "")
	start := time.Now()
	run(t, "cp", append(append([]string{"-a"}, sources...), fsDir)...)
	run(t, "sync")
	t.Logf("copied %v in %v", sources, time.Since(start).Round(time.Millisecond))
	diffAll("before unmount")
	run(t, "umount", fsDir)
	if r := execute("", "fsck.ext4", "-fn", dev); r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn %s is not clean: %s", dev, r)
	}
	loopDetach(t, dev)
	unmountQcow2fs(t, mnt, k.Dir)
	qemuCheckClean(t, img)
	used := allocatedClusters(t, img)
	t.Logf("image holds %d clusters after the copy", used)

	// Phase 2: the whole stack anew, so nothing comes from a cache: the
	// files read back, then blkdiscard frees the clusters again.
	mountQcow2fs(t, mnt, nil, img)
	dev = loopAttach(t, exposed, "--direct-io="+dio)
	if r := execute("", "fsck.ext4", "-fn", dev); r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn %s after remount is not clean: %s", dev, r)
	}
	mountDev(t, dev, fsDir, "ro")
	diffAll("after remount")
	run(t, "umount", fsDir)
	run(t, "blkdiscard", dev)
	loopDetach(t, dev)
	unmountQcow2fs(t, mnt, k.Dir)
	qemuCheckClean(t, img)
	after := allocatedClusters(t, img)
	t.Logf("image holds %d clusters after blkdiscard", after)
	if after > used/10 {
		t.Errorf("blkdiscard of the whole device left %d of %d clusters allocated", after, used)
	}
}

// generatedTree makes a directory of pseudo-random files (about 64 MiB, some
// empty, some tiny, some of several MiB) with a symlink and a hard link.
func generatedTree(t *testing.T, dir string) string {
	t.Helper()
	root := mkdir(t, dir, "generated")
	r := rand.New(rand.NewSource(42))
	for i := 0; i < 120; i++ {
		sub := mkdir(t, root, fmt.Sprintf("d%02d", i%7))
		var n int
		switch i % 4 {
		case 0:
			n = r.Intn(100)
		case 1:
			n = r.Intn(64 << 10)
		case 2:
			n = r.Intn(512 << 10)
		default:
			n = r.Intn(4 << 20)
		}
		writeRandomFile(t, filepath.Join(sub, fmt.Sprintf("f%03d.bin", i)), int64(i), n)
	}
	if err := os.Symlink("d00/f000.bin", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "d01", "f001.bin"), filepath.Join(root, "hardlink")); err != nil {
		t.Fatal(err)
	}
	return root
}

// allocatedClusters returns how many guest clusters `qemu-img check` counts
// as allocated in img (qemu-img leaves the figure out when it is zero).
func allocatedClusters(t *testing.T, img string) int64 {
	t.Helper()
	r := execute("", "qemu-img", "check", "--output=json", img)
	var check struct {
		Allocated int64 `json:"allocated-clusters"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &check); err != nil {
		t.Fatalf("qemu-img check %s: %v: %s", img, err, r)
	}
	return check.Allocated
}
