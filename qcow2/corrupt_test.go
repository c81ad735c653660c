package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRuntimeCorruption: metadata found inconsistent while the image is open
// read-write sets the corrupt bit, refuses further writes, keeps serving
// reads of healthy ranges, and QEMU sees the bit afterwards.
func TestRuntimeCorruption(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "4M")
	wrun(t, "qemu-io", "-c", "write -P 0x11 0 128k", path)
	// Make the second L2 entry's host offset unaligned.
	im, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	l2 := int64(im.l1[0] & l1EntryOffsetMask)
	im.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var e [8]byte
	f.ReadAt(e[:], l2+8)
	binary.BigEndian.PutUint64(e[:], binary.BigEndian.Uint64(e[:])+512)
	f.WriteAt(e[:], l2+8)
	f.Close()

	var warnings []string
	im, err = Open(path, OpenOptions{Warn: func(s string) { warnings = append(warnings, s) }})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := im.ReadAt(buf, 65536); err == nil {
		t.Fatal("read of the damaged cluster succeeded")
	}
	if _, err := im.ReadAt(buf, 0); err != nil || buf[0] != 0x11 {
		t.Fatalf("healthy range: %v %#x", err, buf[0])
	}
	if _, err := im.WriteAt(buf, 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("write after corruption: %v, want ErrCorrupt", err)
	}
	if len(warnings) == 0 || !strings.Contains(warnings[0], "corrupt") {
		t.Fatalf("no clear warning: %v", warnings)
	}
	im.Close()
	out, _ := exec.Command("qemu-img", "info", path).CombinedOutput()
	if !strings.Contains(string(out), "corrupt: true") {
		t.Fatalf("corrupt bit not set on disk:\n%s", out)
	}
	if _, err := Open(path, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("read-write open of a corrupt image: %v", err)
	}
}
