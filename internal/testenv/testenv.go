// Package testenv holds the one rule every qcow2fs test follows when the
// machine lacks something it needs (root, /dev/fuse, a tool): on a
// developer's machine the test skips and says so loudly; on CI (the CI
// variable set, as .ci/run does) it fails, because CI must have everything
// and a skip there would hide a missing feature. It is the pattern of the
// standard library's internal/testenv.
package testenv

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// InCI reports whether the tests run on CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") != "" }

// Lacking stops a test that cannot run because the machine lacks what:
// a failure on CI, a loud skip elsewhere.
func Lacking(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("the CI machine lacks a requirement: %s", what)
	}
	t.Skipf("SKIPPED (machine lacks a requirement): %s", what)
}

// NotClean stops a test that cannot run honestly because the machine holds
// something in its way (an installation that would shadow what the test
// exercises): a failure on CI, which starts clean, a loud skip elsewhere.
func NotClean(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI machine not clean: %s", why)
	}
	t.Skipf("SKIPPED (machine not clean): %s", why)
}

// RequireRoot stops the test unless it runs as root; why says what needs it.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Lacking(t, "root ("+why+")")
	}
}

// RequireFUSE stops the test unless it can mount FUSE file systems: root
// and /dev/fuse.
func RequireFUSE(t testing.TB) {
	t.Helper()
	RequireRoot(t, "FUSE mount tests")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Lacking(t, "/dev/fuse")
	}
}

// RequireTools stops the test unless every tool is there: a bare name is a
// command looked up in PATH, an absolute path a file a package installs.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		var err error
		if filepath.IsAbs(tool) {
			_, err = os.Stat(tool)
		} else {
			_, err = exec.LookPath(tool)
		}
		if err != nil {
			Lacking(t, tool+" not installed (.ci/run must install it)")
		}
	}
}

// HashTree returns the sha256 of every regular file under dir (dir itself
// when it is a file), by path: the before-and-after fingerprint of the
// tests that promise not one byte of an image changes.
func HashTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		sums[p] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatalf("hashing %s: %v", dir, err)
	}
	return sums
}

// SameHashes reports every file whose hash changed, appeared or vanished
// between two HashTree fingerprints.
func SameHashes(t testing.TB, before, after map[string]string) {
	t.Helper()
	for p, h := range before {
		switch a, ok := after[p]; {
		case !ok:
			t.Errorf("%s vanished", p)
		case a != h:
			t.Errorf("%s changed: sha256 %s before, %s after", p, h, a)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// PatchFile overwrites bytes of a file at off: the hand surgery of the
// tests that corrupt images.
func PatchFile(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// SnapshotEntryOffset returns the file offset of entry i of a qcow2
// image's snapshot table, read from the raw bytes (docs/interop/qcow2.txt:
// nb_snapshots at 60, snapshots_offset at 64; entries of 40 bytes + extra
// data + ID + name, 8-byte aligned), for tests that damage one entry.
func SnapshotEntryOffset(t testing.TB, path string, i int) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	if n := int(be.Uint32(b[60:])); i >= n {
		t.Fatalf("%s has %d snapshots, not %d", path, n, i+1)
	}
	off := int64(be.Uint64(b[64:]))
	for ; i > 0; i-- {
		body := int64(be.Uint32(b[off+36:])) + int64(be.Uint16(b[off+12:])) + int64(be.Uint16(b[off+14:]))
		off += (40 + body + 7) &^ 7
	}
	return off
}
