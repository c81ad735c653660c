// CLI tests of qcow2fs check's exit codes: on hand-patched hostile images,
// compared with qemu-img check's, and a panic exiting 1.

package main

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// patchU64/patchU32 write big-endian values into an image file.
func patchU64(t *testing.T, path string, off int64, v uint64) {
	testenv.PatchFile(t, path, off, binary.BigEndian.AppendUint64(nil, v))
}

func patchU32(t *testing.T, path string, off int64, v uint32) {
	testenv.PatchFile(t, path, off, binary.BigEndian.AppendUint32(nil, v))
}

func readU64(t *testing.T, path string, off int64) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(b[:])
}

// bitmapsExt returns the file offset of the bitmaps extension's data.
func bitmapsExt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := int(binary.BigEndian.Uint32(b[100:])); off+8 <= len(b); {
		typ, n := binary.BigEndian.Uint32(b[off:]), int(binary.BigEndian.Uint32(b[off+4:]))
		switch typ {
		case qcow2.ExtBitmaps:
			return int64(off + 8)
		case 0:
			t.Fatal("no bitmaps extension")
		}
		off += 8 + (n+7)&^7
	}
	t.Fatal("no bitmaps extension")
	return 0
}

func qemuCheckCode(t *testing.T, path string) (int, string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("qemu-img check: %v", err)
	}
	if ee != nil {
		return ee.ExitCode(), string(out)
	}
	return 0, string(out)
}

// TestCheckExitCodesVsQEMU: qcow2fs check exits as qemu-img check does on
// hostile images that used to crash it (a Go panic exits 2, the code for
// "corruptions found") or that it found clean although QEMU refuses them.
func TestCheckExitCodesVsQEMU(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testenv.Lacking(t, "qemu-img")
	}
	const near63 = 0x7fffffffffff0000
	cases := []struct {
		name   string
		bitmap bool
		patch  func(t *testing.T, path string, ext int64)
		code   int
		key    string
	}{
		{"refblock-unsigned-overflow", false, func(t *testing.T, p string, _ int64) {
			patchU64(t, p, int64(readU64(t, p, 48))+8, 0xffffffffffff0000)
		}, 2, "refcount block 1 is outside image"},
		{"bitmap-dir-size-max", true, func(t *testing.T, p string, ext int64) {
			patchU64(t, p, ext+8, 1<<64-1)
		}, 1, "exceeds the maximum supported size"},
		{"bitmap-count-max", true, func(t *testing.T, p string, ext int64) {
			patchU32(t, p, ext, 1<<32-1)
		}, 1, "4294967295 bitmaps"},
		{"bitmap-granularity-63", true, func(t *testing.T, p string, ext int64) {
			testenv.PatchFile(t, p, int64(readU64(t, p, ext+16))+17, []byte{63})
		}, 1, "doesn't satisfy the constraints"},
		{"bitmap-table-near-2^63-huge", true, func(t *testing.T, p string, ext int64) {
			dir := int64(readU64(t, p, ext+16))
			patchU64(t, p, dir, near63)
			patchU32(t, p, dir+8, 1<<32-1)
		}, 1, "doesn't satisfy the constraints"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "64M")
			var ext int64
			if c.bitmap {
				qemu(t, "qemu-img", "bitmap", "--add", img, "b0")
				ext = bitmapsExt(t, img)
			}
			qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", img)
			c.patch(t, img, ext)
			qcode, qout := qemuCheckCode(t, img)
			if qcode != c.code || !strings.Contains(qout, c.key) {
				t.Fatalf("test setup: qemu-img check exits %d (want %d), printing:\n%s", qcode, c.code, qout)
			}
			code, stdout, stderr := runCLI(t, "check", img)
			if code != qcode {
				t.Errorf("exit %d, qemu-img check %d\nstdout: %s\nstderr: %.2000s", code, qcode, stdout, stderr)
			}
			if !strings.Contains(stderr, c.key) {
				t.Errorf("stderr lacks %q:\n%.2000s", c.key, stderr)
			}
			if strings.Contains(stdout, "No errors") {
				t.Errorf("stdout says the image is clean:\n%s", stdout)
			}
			if code == 1 && !strings.Contains(stderr, img) {
				t.Errorf("the error does not name the image:\n%s", stderr)
			}
		})
	}
}

// TestCheckPanicExitsOne: an unexpected failure inside the check (here a
// panic) exits 1 with a message, never 2 ("corruptions found").
func TestCheckPanicExitsOne(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img.qcow2")
	if err := qcow2.Create(img, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	old := checkImage
	defer func() { checkImage = old }()
	checkImage = func(path string, o qcow2.CheckOptions) (*qcow2.CheckResult, error) {
		var table []int
		_ = table[len(path)] // an index out of range, as a bug would
		return nil, nil
	}
	code, stdout, stderr := runCLI(t, "check", img)
	if code != 1 {
		t.Errorf("exit %d after a panic, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, img) || !strings.Contains(stderr, "internal error") || !strings.Contains(stderr, "index out of range") {
		t.Errorf("stderr does not name the image and the failure: %q", stderr)
	}
	if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("the message is not one line: %q", stderr)
	}
}

// TestAnyPanicExitsOne: a panic in any command is a bug, reported on one
// line with exit code 1, never 2.
func TestAnyPanicExitsOne(t *testing.T) {
	commands["test-panic"] = func([]string) error { panic("boom\nsecond line") }
	defer delete(commands, "test-panic")
	code, _, stderr := runCLI(t, "test-panic")
	if code != 1 {
		t.Errorf("exit %d after a panic, want 1 (stderr %q)", code, stderr)
	}
	if !strings.Contains(stderr, "internal error") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("stderr %q: want one line naming an internal error", stderr)
	}
}
