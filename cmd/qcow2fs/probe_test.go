// Tests of the bounded mount probe, run in a child (the test binary).

package main

import (
	"path/filepath"
	"testing"
	"time"
)

// The probe runs in a child (this test binary, through TestMain) and
// reports through its exit code; a statfs that fails otherwise than with
// ENOTCONN is an error, not a dead mount.
func TestProbeMount(t *testing.T) {
	dir := t.TempDir()
	if r := probeMount(dir, 10*time.Second); r != probeServing {
		t.Errorf("probe of a plain directory: %v, want serving (%v)", r, probeServing)
	}
	if r := probeMount(filepath.Join(dir, "missing"), 10*time.Second); r != probeError {
		t.Errorf("probe of a missing path: %v, want error (%v)", r, probeError)
	}
	res := probeMounts([]string{dir, dir, filepath.Join(dir, "missing")}, 10*time.Second)
	if len(res) != 2 || res[dir] != probeServing || res[filepath.Join(dir, "missing")] != probeError {
		t.Errorf("probeMounts: %v", res)
	}
}
