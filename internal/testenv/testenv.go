// Package testenv holds the one rule every qcow2fs test follows when the
// machine lacks something it needs (root, /dev/fuse, a tool): on a
// developer's machine the test skips and says so loudly; on CI (the CI
// variable set, as .ci/run does) it fails, because CI must have everything
// and a skip there would hide a missing feature. It is the pattern of the
// standard library's internal/testenv.
package testenv

import (
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
