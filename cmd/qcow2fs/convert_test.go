// CLI tests of qcow2fs convert: usage errors, refusals that leave the files
// alone, replacing an existing target, and --help.

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// TestConvertCLI: usage errors exit 2 naming the problem; refusals
// (TARGET is SOURCE or in its chain, SOURCE held by a writer, a missing
// SOURCE) exit 1 on one line and leave the files alone; an existing
// TARGET is replaced, as qemu-img does; --help describes the command.
func TestConvertCLI(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vm.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	qemu(t, "qemu-io", "-c", "write -P 9 0 1M", img)
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", top)
	target := filepath.Join(dir, "t.qcow2")
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"convert"}, exitUsage, "need SOURCE and TARGET"},
		{[]string{"convert", img}, exitUsage, "need SOURCE and TARGET"},
		{[]string{"convert", img, target, "x"}, exitUsage, "need SOURCE and TARGET"},
		{[]string{"convert", "-f", "vmdk", img, target}, exitUsage, "-f: format must be qcow2 or raw"},
		{[]string{"convert", "-O", "vdi", img, target}, exitUsage, "-O: format must be qcow2 or raw"},
		{[]string{"convert", "-O", "raw", "-c", img, target}, exitUsage, "-c needs a qcow2 TARGET"},
		{[]string{"convert", "-O", "raw", "-B", img, img, target}, exitUsage, "-B needs a qcow2 TARGET"},
		{[]string{"convert", "-O", "raw", "-o", "cluster_size=4k", img, target}, exitUsage, "-o options are for a qcow2 TARGET"},
		{[]string{"convert", "-F", "raw", img, target}, exitUsage, "-F goes with -B"},
		{[]string{"convert", "-o", "size=1G", img, target}, exitUsage, "TARGET takes SOURCE's virtual size"},
		{[]string{"convert", "-o", "backing_file=x", img, target}, exitUsage, "with -B and -F, not -o"},
		{[]string{"convert", "-o", "nope=1", img, target}, exitUsage, `unknown option "nope"`},
		{[]string{"convert", "-S", "1000", img, target}, exitUsage, "not a multiple of 512"},
		{[]string{"convert", "-S", "x", img, target}, exitUsage, "-S: invalid size"},
		{[]string{"convert", "-m", "0", img, target}, exitUsage, "THREADS must be 1 to 1024"},
		{[]string{"convert", "--snapshot", "", img, target}, exitUsage, "--snapshot: empty value"},
		{[]string{"convert", "-f", "raw", "--snapshot", "s", img, target}, exitUsage, "--snapshot needs a qcow2 SOURCE"},
		{[]string{"convert", "--nope", img, target}, exitUsage, "unknown flag: --nope"},
		{[]string{"convert", img, img}, exitError, "target is the source or a file of its chain"},
		{[]string{"convert", top, img}, exitError, "target is the source or a file of its chain"},
		{[]string{"convert", filepath.Join(dir, "missing.qcow2"), target}, exitError, "missing.qcow2"},
		{[]string{"convert", "--snapshot", "nope", img, target}, exitError, "nope"},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("qcow2fs %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.stderr)
		}
		if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 && tc.code == exitError {
			t.Errorf("qcow2fs %q: error spans %d lines: %q", tc.args, n+1, stderr)
		}
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("a refused convert left %s: %v", target, err)
	}
	qemu(t, "qemu-img", "check", img)
	qemu(t, "qemu-img", "check", top)

	// A writer (a read-write mount, QEMU) holds the source: refused.
	w, err := qcow2.Open(img, qcow2.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "convert", img, target)
	w.Close()
	if code != exitError || !strings.Contains(stderr, "in use") {
		t.Errorf("convert of an image open for writing: exit %d, %q; want exit 1, in use", code, stderr)
	}

	// An existing target is replaced; raw and back again.
	os.WriteFile(target, []byte("old"), 0o644)
	raw := filepath.Join(dir, "t.raw")
	for _, args := range [][]string{
		{"convert", "-p", top, target},
		{"convert", "-O", "raw", target, raw},
		{"convert", "-f", "raw", "-c", "-o", "compression_type=zstd,cluster_size=4k", "-m", "3", raw, target},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitOK {
			t.Fatalf("qcow2fs %q: exit %d: %s", args, code, stderr)
		}
	}
	qemu(t, "qemu-img", "check", target)
	qemu(t, "qemu-img", "compare", top, target)

	code, stdout, _ := runCLI(t, "convert", "--help")
	for _, want := range []string{"Usage: qcow2fs convert", "-O FMT", "-B BACKING", "-S SPARSE", "--snapshot NAME", "-m THREADS", "-c"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("convert --help: exit %d, no %q:\n%s", code, want, stdout)
		}
	}
}
