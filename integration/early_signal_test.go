// A server told to stop (SIGTERM) the moment its mount appears unmounts and
// exits: the signal is caught from before the mount, never the default
// action that killed the process mid-start and left the mount behind.

package integration

import (
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestSignalRightAfterMount starts `qcow2fs mount -f` ten times and sends
// SIGTERM as soon as the mount shows in mountinfo. Before signals were
// caught ahead of the mount, 2 or 3 runs in 5 died by the signal's default
// action with go-fuse's poll-hack file of their own mount open, and hung
// for ever in their exit flushing it, the mount left with nobody serving.
func TestSignalRightAfterMount(t *testing.T) {
	requireTools(t, "qemu-img")
	dir := testDir(t)
	img := filepath.Join(dir, "s.qcow2")
	qemuCreate(t, img, "64M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	for i := range 10 {
		cmd := exec.Command(qcow2fsBin, "mount", "-f", img, mnt)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, ok := mounts.Find(mnt); ok {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("run %d: qcow2fs mount -f exited before mounting: %v", i, err)
			default:
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("run %d: no mount after 20 s", i)
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				t.Fatalf("run %d: the server died by signal %v instead of unmounting (%v)", i, ws.Signal(), err)
			}
		case <-time.After(20 * time.Second):
			abortFuse(mnt)
			cmd.Process.Kill()
			<-done
			t.Fatalf("run %d: the server did not exit within 20 s of SIGTERM", i)
		}
		if _, ok := mounts.Find(mnt); ok {
			forceUnmount(t, mnt)
			t.Fatalf("run %d: the server exited and left its mount behind", i)
		}
	}
}
