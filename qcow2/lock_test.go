// Tests that qcow2fs's image locks and QEMU's exclude each other both ways.

package qcow2

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLockingWithQEMU checks that qcow2fs and QEMU exclude each other both ways.
func TestLockingWithQEMU(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "l.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "16M")

	// We hold it read-write: qemu-img info without -U and qemu-io refuse.
	im, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "info", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Errorf("qemu-img info on a writable-open image: err=%v out=%s", err, out)
	}
	if out, err := exec.Command("qemu-img", "info", "-U", path).CombinedOutput(); err != nil {
		t.Errorf("qemu-img info -U: %v %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-c", "write 0 4k", path).CombinedOutput(); err == nil {
		t.Errorf("qemu-io wrote to an image we hold: %s", out)
	}
	// A second writer or reader of ours refuses too; force-share works.
	if _, err := Open(path, OpenOptions{}); !errors.Is(err, ErrLocked) {
		t.Errorf("second writable open: %v", err)
	}
	if _, err := Open(path, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-only open beside a writer: %v", err)
	}
	fs, err := Open(path, OpenOptions{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Errorf("force-share open: %v", err)
	} else {
		fs.Close()
	}
	im.Close()

	// A read-only open keeps writers out but lets readers in.
	ro, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "info", path).CombinedOutput(); err != nil {
		t.Errorf("qemu-img info beside a read-only open: %v %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-c", "write 0 4k", path).CombinedOutput(); err == nil {
		t.Errorf("qemu-io wrote to an image open read-only: %s", out)
	}
	ro.Close()

	// QEMU holds it writable: we refuse.
	cmd := exec.Command("qemu-io", "-c", "sleep 20000", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Wait until qemu-io holds its write lock (byte 101), without taking
	// any lock ourselves, so we never race it for the image.
	probe, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		held, err := lockHeld(int(probe.Fd()), lockPermBase+1)
		if err != nil {
			t.Fatal(err)
		}
		if held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu-io never took its write lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	im, err = Open(path, OpenOptions{})
	if err == nil {
		im.Close()
		t.Fatal("opened an image qemu-io holds writable")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("want a lock error naming the file, got %v", err)
	}
	if _, err := Open(path, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-only open beside qemu-io's writer: %v", err)
	}
}
