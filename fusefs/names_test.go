// Unit tests of file names: raw names, refused snapshot names, and
// shortened long names.

package fusefs

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRawName(t *testing.T) {
	for _, tc := range []struct{ path, raw, snap string }{
		{"/a/vm.qcow2", "vm.raw", "vm@s1.raw"},
		{"vm.qcow", "vm.raw", "vm@s1.raw"},
		{"/a/VM.QCOW2", "VM.raw", "VM@s1.raw"},
		{"/a/disk.img", "disk.img.raw", "disk.img@s1.raw"},
		{"/a/.qcow2", ".qcow2.raw", ".qcow2@s1.raw"},
		{"/a/b.c.qcow2", "b.c.raw", "b.c@s1.raw"},
	} {
		if got := rawName(tc.path); got != tc.raw {
			t.Errorf("rawName(%q) = %q, want %q", tc.path, got, tc.raw)
		}
		if got, short, err := SnapshotFile(stem(tc.path), "s1"); got != tc.snap || short || err != nil {
			t.Errorf("SnapshotFile(%q, s1) = %q, %v, %v; want %q", stem(tc.path), got, short, err, tc.snap)
		}
	}
}

func TestSnapshotFileRefused(t *testing.T) {
	for name, ok := range map[string]bool{"s1": true, "with space": true, "\x1b[31m": true, "": false, "a/b": false, "/": false, "a\x00": false} {
		if _, _, err := SnapshotFile("vm", name); (err == nil) != ok {
			t.Errorf("SnapshotFile(vm, %q) = %v, want ok=%v", name, err, ok)
		}
	}
}

// Names too long for a file name get a shortened, deterministic, unique
// file name that still starts like the snapshot name.
func TestSnapshotFileShortened(t *testing.T) {
	long := strings.Repeat("n", 300)
	f, short, err := SnapshotFile("vm", long)
	if err != nil || !short {
		t.Fatalf("SnapshotFile(vm, 300 × n) = %q, %v, %v", f, short, err)
	}
	if len(f) != 255 || !strings.HasPrefix(f, "vm@nnnn") || !strings.HasSuffix(f, ".raw") {
		t.Errorf("shortened file %q (%d bytes)", f, len(f))
	}
	again, _, _ := SnapshotFile("vm", long)
	if again != f {
		t.Errorf("not deterministic: %q then %q", f, again)
	}
	// Names that differ only past the cut get different files.
	other, _, _ := SnapshotFile("vm", long[:299]+"m")
	if other == f {
		t.Errorf("two names share the file %q", f)
	}
	// The longest name kept verbatim, and one byte more.
	fits := strings.Repeat("x", 255-len("vm@.raw"))
	if got, short, _ := SnapshotFile("vm", fits); got != "vm@"+fits+".raw" || short {
		t.Errorf("a name that fits was changed: %q", got)
	}
	if got, short, _ := SnapshotFile("vm", fits+"x"); !short || len(got) > 255 {
		t.Errorf("a name one byte too long: %q (%d bytes), shortened %v", got, len(got), short)
	}
	// A literal name that looks like a shortened one is shortened as
	// well, so it cannot take the long name's file.
	literal := strings.TrimSuffix(strings.TrimPrefix(f, "vm@"), ".raw")
	lf, lshort, err := SnapshotFile("vm", literal)
	if err != nil || !lshort || lf == f || len(lf) > 255 {
		t.Errorf("literal %q → %q (shortened %v, %v); the long name has %q", literal, lf, lshort, err, f)
	}
	if got, short, _ := SnapshotFile("vm", "backup~0123456789abcdef0123456789ABCDEF"); short || got != "vm@backup~0123456789abcdef0123456789ABCDEF.raw" {
		t.Errorf("upper-case hex is no shortened name: %q", got)
	}
	// The cut does not split a character.
	snow := strings.Repeat("雪", 100)
	if got, _, _ := SnapshotFile("vm", snow); !utf8.ValidString(got) || len(got) > 255 {
		t.Errorf("cut inside a character: %q", got)
	}
	// A stem that leaves no room refuses long names, not short ones.
	stem := strings.Repeat("s", 230)
	if _, _, err := SnapshotFile(stem, long); err == nil {
		t.Errorf("a 230-byte stem with a 300-byte snapshot name was accepted")
	}
	if got, _, err := SnapshotFile(stem, "s1"); err != nil || got != stem+"@s1.raw" {
		t.Errorf("SnapshotFile(230-byte stem, s1) = %q, %v", got, err)
	}
}
