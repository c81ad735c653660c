// Tests that hostile snapshot tables and names in an image reach info's and
// check's output neither raw (control characters) nor unbounded.

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// rawControl returns the first raw control character in s (other than
// newline and tab), or -1.
func rawControl(s string) rune {
	for _, r := range s {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			return r
		}
	}
	return -1
}

// checkShown fails if output holds a raw control character or a line
// longer than limit bytes.
func checkShown(t *testing.T, what, output string, limit int) {
	t.Helper()
	if r := rawControl(output); r >= 0 {
		t.Errorf("%s holds the raw control character %U:\n%.2000q", what, r, output)
	}
	for _, line := range strings.Split(output, "\n") {
		if len(line) > limit {
			t.Errorf("%s has a line of %d bytes: %.200q…", what, len(line), line)
		}
	}
}

// A hostile snapshot table through the CLI: info lists every snapshot with
// the file it appears as in a mount (a long name's shortened file) and why
// a bad one is not shown; check exits 2 for the bad entry; nothing from
// the image reaches the terminal raw or unbounded.
func TestInfoHostileSnapshots(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vm.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	qemu(t, "qemu-img", "snapshot", "-c", "s1", img)
	long := strings.Repeat("n", 300)
	evil := "\x1b]0;pwned\x07\x1b[2J" + strings.Repeat("e", 65000) + "\x00end"
	for _, name := range []string{long, evil} {
		if err := qcow2.SnapshotCreate(img, name); err != nil {
			t.Fatal(err)
		}
	}
	// The evil snapshot's L1 table offset gets unaligned (entry 2:
	// nb_snapshots at 60, snapshots_offset at 64, entries of 40 bytes +
	// extra + ID + name, 8-byte aligned).
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	off := int64(be.Uint64(b[64:]))
	for i := 0; i < 2; i++ {
		off += (40 + int64(be.Uint32(b[off+36:])) + int64(be.Uint16(b[off+12:])) + int64(be.Uint16(b[off+14:])) + 7) &^ 7
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(be.AppendUint64(nil, be.Uint64(b[off:])+512), off)
	f.Close()

	code, stdout, stderr := runCLI(t, "info", img)
	if code != exitOK {
		t.Fatalf("info: exit %d\n%s", code, stderr)
	}
	checkShown(t, "info", stdout+stderr, 1024)
	short, _, _ := fusefs.SnapshotFile("vm", long)
	for _, want := range []string{"FILE", "vm@s1.raw", short, "snapshot ID 3 cannot be used: L1 table offset", "not cluster-aligned",
		`\x1b]0;pwned\a\x1b[2Jeee`, fmt.Sprintf("…(%d bytes)", len(evil)), "snapshot ID 2: its name is too long for a file name"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("info lacks %q:\n%.3000s", want, stdout)
		}
	}

	code, stdout, stderr = runCLI(t, "check", img)
	if code != 2 {
		t.Errorf("check: exit %d, want 2 (corruption)\n%s\n%s", code, stdout, stderr)
	}
	checkShown(t, "check", stdout+stderr, 1024)
	if !strings.Contains(stderr, "L1 table is not cluster aligned") {
		t.Errorf("check does not report the entry:\n%.2000s", stderr)
	}

	code, stdout, stderr = runCLI(t, "snapshot", "list", img)
	if code != exitOK {
		t.Errorf("snapshot list: exit %d\n%s", code, stderr)
	}
	checkShown(t, "snapshot list", stdout+stderr, 1024)
}

// Backing, data file and feature names from the image reach info's output
// and errors escaped.
func TestInfoHostileNames(t *testing.T) {
	dir := t.TempDir()
	name := "\x1b[2Jbase\x07.qcow2"
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, name), "1M")
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", name, "-F", "qcow2", top)
	code, stdout, stderr := runCLI(t, "info", top)
	if code != exitOK {
		t.Fatalf("info: exit %d\n%s", code, stderr)
	}
	checkShown(t, "info", stdout+stderr, 1024)
	if !strings.Contains(stdout, `\x1b[2Jbase\a.qcow2`) {
		t.Errorf("info does not show the escaped backing name:\n%s", stdout)
	}
	os.Remove(filepath.Join(dir, name))
	code, stdout, stderr = runCLI(t, "info", top)
	if code == exitOK {
		t.Errorf("info with the backing file gone succeeded")
	}
	checkShown(t, "info error", stdout+stderr, 4096)
	code, stdout, stderr = runCLI(t, "info", "--no-backing", top)
	if code != exitOK {
		t.Errorf("info --no-backing: exit %d\n%s", code, stderr)
	}
	checkShown(t, "info --no-backing", stdout+stderr, 1024)
}
