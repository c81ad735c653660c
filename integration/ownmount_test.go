// Tests of mounting onto the image's own directory: the daemon works from
// descriptors opened before the mount and never deadlocks on itself.

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestMountOntoImageDirectory: `cd /images && qcow2fs mount vm.qcow2 .`
// covers the image's own directory with the mount. The daemon must work
// from descriptors opened before the mount: a stat or statfs of a path
// under the mount point would come back to the daemon itself and deadlock
// it. The mount serves (ls, stat, df, reads, writes, vm.info, status) and
// unmounts cleanly, leaving a clean image with the writes in it.
func TestMountOntoImageDirectory(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	imgDir := mkdir(t, dir, "images")
	k := newImageKit(t, imgDir)
	img := k.Path("vm")
	qemuCreate(t, img, "8M", "cluster_size=65536", "", "")
	qemuIO(t, img, k.Rand(0, 1<<20), k.Rand(5<<20, 300<<10))
	run(t, "qemu-img", "snapshot", "-c", "S", img)
	want := qemuRawOf(t, img, filepath.Join(dir, "want.raw"))
	t.Cleanup(func() { cleanupMount(t, imgDir) })

	const limit = 15 * time.Second
	mnt := []string{imgDir}
	// Exactly the user's command line: a relative image, "." as the mount point.
	mustBounded(t, 30*time.Second, mnt, imgDir, qcow2fsBin, "mount", "vm.qcow2", ".")
	if m, ok := mounts.Find(imgDir); !ok || m.FSType != fuseType {
		t.Fatalf("qcow2fs mount vm.qcow2 . returned 0 but %s is not a qcow2fs mount (%+v)", imgDir, m)
	}

	// Directory listing and the root's own attributes (stat of ".").
	ls := mustBounded(t, limit, mnt, imgDir, "ls", "-la", ".")
	for _, name := range []string{"vm.raw", "vm@S.raw", "vm.info"} {
		if !strings.Contains(ls, name) {
			t.Errorf("ls -la of the mount lacks %s:\n%s", name, ls)
		}
	}
	if strings.Contains(ls, "vm.qcow2") {
		t.Errorf("the image itself shows through the mount:\n%s", ls)
	}
	if got := strings.TrimSpace(mustBounded(t, limit, mnt, "", "stat", "-c", "%s", filepath.Join(imgDir, "vm.raw"))); got != "8388608" {
		t.Errorf("stat of vm.raw: size %s, want 8388608", got)
	}
	// statfs of the mount (df) and of a file in it.
	mustBounded(t, limit, mnt, "", "df", imgDir)
	mustBounded(t, limit, mnt, "", "stat", "-f", filepath.Join(imgDir, "vm.raw"))
	if info := mustBounded(t, limit, mnt, imgDir, "cat", "vm.info"); !strings.Contains(info, "virtual size") {
		t.Errorf("vm.info does not describe the image:\n%s", info)
	}
	mustBounded(t, limit, mnt, "", "cmp", filepath.Join(imgDir, "vm.raw"), want)

	// A write through the mount, made durable, read back.
	payload := filepath.Join(dir, "payload.bin")
	writeRandomFile(t, payload, 77, 200<<10)
	mustBounded(t, limit, mnt, "", "dd", "if="+payload, "of="+filepath.Join(imgDir, "vm.raw"),
		"bs=4k", "seek=600", "conv=notrunc,fsync", "status=none")
	mustBounded(t, limit, mnt, "", "dd", "if="+payload, "of="+want, "bs=4k", "seek=600", "conv=notrunc", "status=none")
	mustBounded(t, limit, mnt, "", "cmp", filepath.Join(imgDir, "vm.raw"), want)

	// The other commands see it serving.
	if st := mustBounded(t, limit, mnt, "", qcow2fsBin, "status"); !strings.Contains(st, imgDir) || !strings.Contains(st, "serving") {
		t.Errorf("qcow2fs status does not show %s serving:\n%s", imgDir, st)
	}

	mustBounded(t, 30*time.Second, mnt, "", qcow2fsBin, "unmount", imgDir)
	if _, ok := mounts.Find(imgDir); ok {
		t.Fatalf("%s still mounted after qcow2fs unmount", imgDir)
	}
	if h := mounts.OpenUnder(img); len(h) > 0 {
		t.Errorf("the image is still open after unmount: %s", strings.Join(h, "; "))
	}
	if _, err := os.Stat(img); err != nil {
		t.Fatalf("the image is not back in sight after unmount: %v", err)
	}
	qemuCheckClean(t, img)
	qemuCompareRaw(t, want, img)
}
