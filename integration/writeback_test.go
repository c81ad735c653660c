// The write-back cache mount (-o writeback_cache): buffered writes the
// kernel still holds reach the image at suspend and unmount, ext4 on a
// loop device without direct I/O stays whole, and the combinations that
// cannot work are refused.

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestWritebackCacheSuspendAndUnmount: a writer keeps the file open and
// never closes or execs (either makes the kernel write its pages back), so
// its write may sit only in the kernel's page cache; a suspend must get it
// into the image, as qemu-io reads it while suspended. After the resume,
// a write the same way must be in the image after unmount.
func TestWritebackCacheSuspendAndUnmount(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io", "bash")
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	mnt := mkdir(t, dir, "mnt")
	qemuCreate(t, img, "64M", "", "", "")
	mountQcow2fs(t, mnt, []string{"-o", "writeback_cache"}, img)
	raw := filepath.Join(mnt, "vm.raw")
	w1 := holdWriter(t, raw, "a1")
	// Registered after the writer's cleanup, so run before it: a writer
	// killed while suspended would wait for the resume to write back.
	t.Cleanup(func() {
		if suspendedState(mnt) {
			abortFuse(mnt)
		}
	})
	q2OK(t, mnt, "suspend", mnt)
	if out := run(t, "qemu-io", "-r", "-c", "read -P 0xa1 0 64k", img); strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("suspended, the image lacks a write acknowledged before the suspend:\n%s", out)
	}
	qemuCheckClean(t, img)
	q2OK(t, mnt, "resume", mnt)
	w1.stop()

	w2 := holdWriter(t, raw, "b2")
	w2.stop() // its exit closes the file: the kernel writes the pages back
	unmountQcow2fs(t, mnt, img)
	for _, c := range []string{"read -P 0xb2 0 64k", "read -P 0 64k 67043328"} {
		if out := run(t, "qemu-io", "-r", "-c", c, img); strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("after unmount, %q:\n%s", c, out)
		}
	}
	qemuCheckClean(t, img)
}

// heldWriter is a bash that wrote into a file and keeps it open.
type heldWriter struct {
	t   *testing.T
	cmd *exec.Cmd
}

// holdWriter starts bash writing 64 KiB of the byte hex at the start of
// path, and returns once the write returned. bash makes the file its
// standard output for good (no redirection around the write: undoing one
// closes a duplicate of the descriptor, and any close of a FUSE file
// writes its pages back), writes with the builtin printf, then execs sleep
// (the descriptor has no close-on-exec): the sleep shows the write is done.
func holdWriter(t *testing.T, path, hex string) *heldWriter {
	t.Helper()
	script := `exec 1<>"$1" && printf '\x` + hex + `%.0s' $(seq 65536) && exec sleep 600`
	cmd := exec.Command("bash", "-c", script, "bash", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &heldWriter{t: t, cmd: cmd}
	t.Cleanup(w.stop)
	comm := fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(comm); strings.TrimSpace(string(b)) == "sleep" {
			return w
		}
		if time.Now().After(deadline) {
			w.stop()
			t.Fatalf("bash writing %s: not done in a minute (%v)", path, w.cmd.ProcessState)
		}
	}
}

// stop kills the writer and waits for it (its descriptor is then closed).
func (w *heldWriter) stop() {
	if w.cmd.ProcessState == nil {
		w.cmd.Process.Kill()
		w.cmd.Wait()
	}
}

// TestWritebackCacheRefusals: writeback_cache with partition files or with
// direct I/O is a usage error naming both, and nothing is mounted.
func TestWritebackCacheRefusals(t *testing.T) {
	dir := testDir(t)
	img := filepath.Join(mkdir(t, dir, "img"), "vm.qcow2")
	mnt := mkdir(t, dir, "mnt")
	qemuCreate(t, img, "64M", "", "", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--writeback-cache", "--partitions"}, "partitions"},
		{[]string{"-o", "writeback_cache,direct_io"}, "direct_io"},
	} {
		args := append(append([]string{"mount"}, tc.args...), img, mnt)
		r := execute("", qcow2fsBin, args...)
		if r.Code != 2 || !strings.Contains(r.Stderr, "writeback_cache") || !strings.Contains(r.Stderr, tc.want) {
			t.Errorf("qcow2fs %s: want exit 2 naming writeback_cache and %s, got %s", strings.Join(args, " "), tc.want, r)
		}
		if _, ok := mounts.Find(mnt); ok {
			forceUnmount(t, mnt)
			t.Fatalf("qcow2fs %s mounted %s", strings.Join(args, " "), mnt)
		}
	}
}
