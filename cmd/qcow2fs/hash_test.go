// Tests that qcow2fs hash equals the hash of qemu-img convert's raw output,
// over a chain with every kind of cluster, in every algorithm.

package main

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHashMatchesRaw: hash equals the hash of qemu-img convert's raw output
// for a chain with data in both layers, zero clusters, a discard over the
// backing file, a compressed cluster, an unaligned virtual size and a
// snapshot, in every algorithm.
func TestHashMatchesRaw(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "20M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -c -P 0x22 8M 64k", "-c", "write -P 0x33 19M 1M", base)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "21000000")
	qemu(t, "qemu-io", "-c", "write -P 0x44 1M 100k", "-c", "write -z 2M 512k", "-c", "discard 19M 64k", top)
	qemu(t, "qemu-img", "snapshot", "-c", "s1", top)
	qemu(t, "qemu-io", "-c", "write -P 0x55 4M 1M", top)

	for _, snap := range []string{"", "s1"} {
		raw := filepath.Join(dir, "raw"+snap)
		args := []string{"convert", "-O", "raw"}
		if snap != "" {
			args = append(args, "-l", "snapshot.name="+snap)
		}
		qemu(t, "qemu-img", append(args, top, raw)...)
		want, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		for name, h := range map[string]func() hash.Hash{"sha256": sha256.New, "sha1": sha1.New, "md5": md5.New} {
			ref := h()
			ref.Write(want)
			args := []string{"hash", "--algo", name}
			if snap != "" {
				args = append(args, "--snapshot", snap)
			}
			code, stdout, stderr := runCLI(t, append(args, top)...)
			if code != exitOK {
				t.Fatalf("hash %s: exit %d: %s", name, code, stderr)
			}
			if w := hex.EncodeToString(ref.Sum(nil)) + "  " + top + "\n"; stdout != w {
				t.Errorf("snapshot %q, %s: got %q, want %q", snap, name, stdout, w)
			}
		}
	}
	// Several images, one missing: the others are printed, the exit code says it failed.
	code, stdout, stderr := runCLI(t, "hash", base, filepath.Join(dir, "missing.qcow2"), top)
	if code != exitError || strings.Count(stdout, "\n") != 2 || !strings.Contains(stderr, "missing.qcow2") {
		t.Errorf("hash with a missing image: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr := runCLI(t, "hash", "--algo", "crc", top); code != exitUsage || !strings.Contains(stderr, "--algo") {
		t.Errorf("hash --algo crc: exit %d, %q", code, stderr)
	}
}
