// Helpers that run external commands with a timeout and make the tests'
// directories under the run's root.

package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// cmdTimeout bounds every external command, so a hung FUSE mount fails the
// test that hit it instead of the whole run.
const cmdTimeout = 3 * time.Minute

// result is what a finished command left behind.
type result struct {
	Stdout, Stderr string
	Code           int // exit code; -1 when killed by a signal or not started
	Err            error
}

func (r result) String() string {
	return fmt.Sprintf("exit %d (%v)\nstdout:\n%s\nstderr:\n%s", r.Code, r.Err, r.Stdout, r.Stderr)
}

// execute runs name with args, in dir when not "", and reports how it ended.
func execute(dir, name string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		r.Code = 0
	case errors.As(err, &exitErr):
		r.Code = exitErr.ExitCode()
	default:
		r.Code = -1
	}
	if ctx.Err() != nil {
		r.Err = fmt.Errorf("killed after %v: %w", cmdTimeout, r.Err)
		r.Code = -1
	}
	return r
}

// run runs a command that must succeed and returns its stdout.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return runIn(t, "", name, args...)
}

// runIn is run with a working directory.
func runIn(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	r := execute(dir, name, args...)
	if r.Code != 0 {
		t.Fatalf("%s %s: %s", name, strings.Join(args, " "), r)
	}
	return r.Stdout
}

// testDir makes a fresh directory for one test under the run's root. It is
// removed after the test's other cleanups (mounts, loop devices) have run,
// because t.Cleanup runs last-registered first.
func testDir(t *testing.T) string {
	t.Helper()
	name := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_")
	dir, err := os.MkdirTemp(testRoot, name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A mount still there (a failed unmount) must not be walked into.
		sweepRoot(dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return dir
}

// mkdir makes dir/name and returns its path.
func mkdir(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
