// CLI tests of qcow2fs backup: usage errors and refusals with their exit
// codes, and plain and compressed backups that restore the disk.

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupUsage: usage errors exit 2 naming the problem, an existing
// target and a missing image exit 1 naming the file, --help describes the
// command; a plain and a compressed (-c, zstd) backup restore the disk.
func TestBackupUsage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vm.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	qemu(t, "qemu-img", "bitmap", "--add", img, "b")
	target := filepath.Join(dir, "t.qcow2")
	exists := filepath.Join(dir, "exists.qcow2")
	os.WriteFile(exists, []byte("x"), 0o644)
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"backup"}, exitUsage, "need IMAGE and TARGET"},
		{[]string{"backup", img}, exitUsage, "need IMAGE and TARGET"},
		{[]string{"backup", img, target, "extra"}, exitUsage, "need IMAGE and TARGET"},
		{[]string{"backup", "--clear", img, target}, exitUsage, "--clear needs --bitmap"},
		{[]string{"backup", "--full", img, target}, exitUsage, "--full goes with --bitmap"},
		{[]string{"backup", "-b", "full.qcow2", img, target}, exitUsage, "-b is for an incremental backup"},
		{[]string{"backup", "--bitmap", "b", "--full", "-b", "x.qcow2", img, target}, exitUsage, "-b is for an incremental backup"},
		{[]string{"backup", "--bitmap", "b", img, target}, exitUsage, "needs -b BACKING"},
		{[]string{"backup", "--bitmap", "", img, target}, exitUsage, "empty value"},
		{[]string{"backup", "-f", "raw", img, target}, exitUsage, "only the qcow2 format"},
		{[]string{"backup", "--nope", img, target}, exitUsage, "unknown flag: --nope"},
		{[]string{"backup", img, exists}, exitError, exists + ": target already exists"},
		{[]string{"backup", filepath.Join(dir, "missing.qcow2"), target}, exitError, "missing.qcow2"},
		{[]string{"backup", "--bitmap", "nope", "--full", img, target}, exitError, "Dirty bitmap 'nope' not found"},
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
		t.Errorf("a refused backup left %s: %v", target, err)
	}
	if b, _ := os.ReadFile(exists); string(b) != "x" {
		t.Errorf("existing target overwritten")
	}
	code, stdout, _ := runCLI(t, "backup", "--help")
	for _, want := range []string{"Usage: qcow2fs backup", "--bitmap NAME", "--full", "--clear", "-b BACKING", "compressed", "-p"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("backup --help: exit %d, no %q:\n%s", code, want, stdout)
		}
	}
	if _, stdout, _ := runCLI(t, "--help"); !strings.Contains(stdout, "qcow2fs backup") {
		t.Errorf("qcow2fs --help does not list backup:\n%s", stdout)
	}
	// And it works: a full backup with -p (off a terminal: no bar).
	if code, _, stderr := runCLI(t, "backup", "-p", "--bitmap", "b", "--full", "--clear", img, target); code != exitOK || stderr != "" {
		t.Fatalf("backup: exit %d, %q", code, stderr)
	}
	qemu(t, "qemu-img", "compare", img, target)
	qemu(t, "qemu-img", "check", target)

	// -c: compressed clusters, with the source's compression type.
	zimg := filepath.Join(dir, "z.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", zimg, "4M")
	qemu(t, "qemu-io", "-c", "write -P 0xab 0 1M", "-c", "write -P 0x11 2M 64k", zimg)
	ztarget := filepath.Join(dir, "zt.qcow2")
	if code, _, stderr := runCLI(t, "backup", "-c", zimg, ztarget); code != exitOK || stderr != "" {
		t.Fatalf("backup -c: exit %d, %q", code, stderr)
	}
	qemu(t, "qemu-img", "compare", zimg, ztarget)
	qemu(t, "qemu-img", "check", ztarget)
	if info, err := exec.Command("qemu-img", "info", "--output=json", ztarget).CombinedOutput(); err != nil || !strings.Contains(string(info), `"compression-type": "zstd"`) {
		t.Errorf("backup -c target not zstd:\n%s", info)
	}
	zi, err1 := os.Stat(zimg)
	zt, err2 := os.Stat(ztarget)
	if err1 != nil || err2 != nil || zt.Size() >= zi.Size() {
		t.Errorf("backup -c target is %d bytes, the source %d (%v %v)", zt.Size(), zi.Size(), err1, err2)
	}
}
