// Helpers that mount and unmount qcow2fs (through the CLI or a foreground
// daemon the test can kill), attach loop devices and mount them.

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

const fuseType = "fuse.qcow2fs"

// mountQcow2fs runs `qcow2fs mount [flags] IMAGE... MNT`, which must return
// with the mount ready, and arranges for it to go away after the test.
func mountQcow2fs(t *testing.T, mnt string, flags []string, images ...string) {
	t.Helper()
	args := append([]string{"mount"}, flags...)
	args = append(args, images...)
	args = append(args, mnt)
	r := execute("", qcow2fsBin, args...)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r.Code != 0 {
		t.Fatalf("qcow2fs %s: %s", strings.Join(args, " "), r)
	}
	m, ok := mounts.Find(mnt)
	if !ok {
		t.Fatalf("qcow2fs mount returned 0 but %s is not a mount point", mnt)
	}
	if m.FSType != fuseType {
		t.Fatalf("%s is mounted as %q, want %q", mnt, m.FSType, fuseType)
	}
}

// unmountQcow2fs runs `qcow2fs unmount MNT` and asserts it is the suspend
// point the design promises: the mount is gone and no process still holds any
// of the image files open (so qemu-img may open them right away). files may
// name directories: then no file under them may be open.
func unmountQcow2fs(t *testing.T, mnt string, files ...string) {
	t.Helper()
	r := execute("", qcow2fsBin, "unmount", mnt)
	if r.Code != 0 {
		t.Fatalf("qcow2fs unmount %s: %s", mnt, r)
	}
	if _, ok := mounts.Find(mnt); ok {
		t.Fatalf("qcow2fs unmount %s returned 0 but the mount is still there", mnt)
	}
	if h := mounts.OpenUnder(files...); len(h) > 0 {
		t.Fatalf("qcow2fs unmount %s returned while the image is still open: %s", mnt, strings.Join(h, "; "))
	}
}

// forceUnmount removes a mount left behind by a failed test; a no-op when
// the test unmounted it itself.
func forceUnmount(t *testing.T, mnt string) {
	if _, ok := mounts.Find(mnt); !ok {
		return
	}
	t.Logf("cleanup: %s still mounted, unmounting", mnt)
	if r := execute("", qcow2fsBin, "unmount", mnt); r.Code == 0 {
		if _, ok := mounts.Find(mnt); !ok {
			return
		}
	}
	quietRun("fusermount3", "-u", "-z", mnt)
}

// daemon is a `qcow2fs mount --foreground` process the test started itself,
// so it can kill it.
type daemon struct {
	Cmd  *exec.Cmd
	Log  string // file holding its stdout and stderr
	done chan struct{}
}

// startForeground starts `qcow2fs mount --foreground [flags] IMAGE... MNT`
// and waits for the mount to appear.
func startForeground(t *testing.T, mnt string, flags []string, images ...string) *daemon {
	t.Helper()
	args := append([]string{"mount", "--foreground"}, flags...)
	args = append(args, images...)
	args = append(args, mnt)
	logPath := mnt + ".log"
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	d := &daemon{Cmd: exec.Command(qcow2fsBin, args...), Log: logPath, done: make(chan struct{})}
	d.Cmd.Stdout, d.Cmd.Stderr = logFile, logFile
	if err := d.Cmd.Start(); err != nil {
		t.Fatalf("start qcow2fs %s: %v", strings.Join(args, " "), err)
	}
	go func() { _ = d.Cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		forceUnmount(t, mnt)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.Cmd.Process.Kill()
			<-d.done
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for {
		if m, ok := mounts.Find(mnt); ok && m.FSType == fuseType {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("qcow2fs %s exited before mounting (%v):\n%s", strings.Join(args, " "), d.Cmd.ProcessState, d.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qcow2fs %s: no mount after 20s:\n%s", strings.Join(args, " "), d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.Log)
	return string(b)
}

// exited reports whether the daemon process has ended.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// loopAttach attaches file to a free loop device with the given extra
// losetup flags and detaches it after the test.
func loopAttach(t *testing.T, file string, flags ...string) string {
	t.Helper()
	args := append([]string{"--find", "--show"}, flags...)
	args = append(args, file)
	dev := strings.TrimSpace(run(t, "losetup", args...))
	backing := loopBackingFile(dev)
	t.Cleanup(func() {
		// Only if it is still ours: once detached, the number may
		// belong to another program's device.
		if f := loopBackingFile(dev); f != "" && f == backing {
			t.Logf("cleanup: detaching %s", dev)
			quietRun("losetup", "-d", dev)
		}
	})
	return dev
}

// loopDetach detaches dev and waits until the kernel has let go of it.
func loopDetach(t *testing.T, dev string) {
	t.Helper()
	run(t, "losetup", "-d", dev)
	// Detaching is asynchronous while the device is still being closed.
	for i := 0; i < 100 && loopBackingFile(dev) != ""; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if f := loopBackingFile(dev); f != "" {
		t.Fatalf("%s still attached to %s after losetup -d", dev, f)
	}
}

// loopBackingFile returns the file behind a loop device, or "" when detached.
func loopBackingFile(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// mountDev mounts a block device and unmounts it after the test.
func mountDev(t *testing.T, dev, dir string, opts string) {
	t.Helper()
	args := []string{dev, dir}
	if opts != "" {
		args = []string{"-o", opts, dev, dir}
	}
	run(t, "mount", args...)
	t.Cleanup(func() {
		if _, ok := mounts.Find(dir); ok {
			t.Logf("cleanup: unmounting %s", dir)
			quietRun("umount", dir)
			if _, ok := mounts.Find(dir); ok {
				quietRun("umount", "-l", dir)
			}
		}
	})
}
