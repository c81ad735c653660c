// Tests of corruption found at run time: the corrupt bit is set and writes
// refused, overlapping metadata is caught before any write, and an absurdly
// deep backing chain is refused.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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
	needQEMU(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "4M")
	wrun(t, "qemu-io", "-c", "write -P 0x11 0 128k", path)
	// Make the second L2 entry's host offset unaligned.
	damageL2Entry(t, path, 1)

	var warnings []string
	im, err := Open(path, OpenOptions{Warn: func(s string) { warnings = append(warnings, s) }})
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

// TestOverlapRefused: an L2 entry pointing a data cluster at the active L1
// table, or an L1 entry pointing an L2 table at the refcount table, is caught before
// anything is written through it: the image is marked corrupt, metadata is
// unchanged.
func TestOverlapRefused(t *testing.T) {
	needQEMU(t)
	for _, target := range []string{"data-on-l1", "l2-on-refcount-table"} {
		t.Run(target, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "o.qcow2")
			wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "4M")
			wrun(t, "qemu-io", "-c", "write -P 0x11 0 64k", path)
			im, err := Open(path, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			l1 := im.l1Offset
			l2 := int64(im.l1[0] & l1EntryOffsetMask)
			reftable := int64(im.s.hdr.RefcountTableOffset)
			im.Close()
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			var e [8]byte
			if target == "data-on-l1" {
				binary.BigEndian.PutUint64(e[:], uint64(l1)|oflagCopied)
				f.WriteAt(e[:], l2)
			} else {
				binary.BigEndian.PutUint64(e[:], uint64(reftable)|oflagCopied)
				f.WriteAt(e[:], l1)
			}
			f.Close()
			before, _ := os.ReadFile(path)
			im, err = Open(path, OpenOptions{Warn: func(string) {}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = im.WriteAt(make([]byte, 4096), 0)
			im.Close()
			if err == nil {
				t.Fatal("write through overlapping metadata succeeded")
			}
			after, _ := os.ReadFile(path)
			// Only the header may change (the corrupt bit).
			if len(after) != len(before) || !bytes.Equal(after[512:], before[512:]) {
				t.Fatal("image changed beyond the header")
			}
			out, _ := exec.Command("qemu-img", "info", path).CombinedOutput()
			if !strings.Contains(string(out), "corrupt: true") {
				t.Fatalf("corrupt bit not set:\n%s", out)
			}
		})
	}
}

// TestAbsurdlyDeepChain: a backing chain deeper than 64 images is refused
// with a clear error, quickly and without opening all of it.
func TestAbsurdlyDeepChain(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	prev := ""
	for i := 0; i < 70; i++ {
		name := filepath.Join(dir, fmt.Sprintf("l%02d.qcow2", i))
		args := []string{"create", "-q", "-f", "qcow2"}
		if prev != "" {
			args = append(args, "-u", "-b", filepath.Base(prev), "-F", "qcow2")
		}
		wrun(t, "qemu-img", append(args, name, "1M")...)
		prev = name
	}
	_, err := Open(prev, OpenOptions{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "deeper than") {
		t.Fatalf("70-deep chain: %v", err)
	}
}
