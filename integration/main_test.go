// The suite's TestMain: the environment check, building the binary, the
// run's root directory, and sweeping what dead runs left behind.

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"golang.org/x/sys/unix"
)

// rootPrefix starts the name of every directory the suite creates, followed by
// the test process's pid, so a later run can tell leftovers of a dead run
// (safe to sweep) from those of a run still going (left alone).
const rootPrefix = "qcow2fs-it-"

var (
	// qcow2fsBin is the binary under test, built once by TestMain.
	qcow2fsBin string
	// testRoot holds every file, image and mount point of this run.
	testRoot string
	// envProblem, when set, says why this machine cannot run the suite;
	// every test then skips with that message.
	envProblem string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// qemu-io's "abort" (used to leave an image dirty) must not litter
	// core files around.
	_ = unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0})

	envProblem = checkEnvironment()
	if envProblem != "" {
		if testenv.InCI() {
			// CI installs everything: a missing piece there is a failure.
			fmt.Fprintf(os.Stderr, "integration: CI machine cannot run the suite: %s\n", envProblem)
			return 1
		}
		fmt.Fprintf(os.Stderr, "\n*** qcow2fs integration tests SKIPPED: %s ***\n\n", envProblem)
		return m.Run()
	}

	sweepDeadRuns()

	// QCOW2FS_URING=on runs every mount of the suite over FUSE io_uring
	// (the daemons inherit the variable): the kernel must have it on.
	if os.Getenv("QCOW2FS_URING") == "on" {
		if err := enableFUSEURing(); err != nil {
			fmt.Fprintf(os.Stderr, "integration: QCOW2FS_URING=on, but FUSE over io_uring cannot be switched on: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "integration: every mount uses FUSE over io_uring (QCOW2FS_URING=on)\n")
	}

	var err error
	testRoot, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", rootPrefix, os.Getpid()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		return 1
	}
	// Mount points and images of this run live in testRoot; the kernel's
	// loop and fuse code follow symlinks, so use the real path.
	if p, err := filepath.EvalSymlinks(testRoot); err == nil {
		testRoot = p
	}

	qcow2fsBin, err = buildBinary(testRoot)
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		_ = os.RemoveAll(testRoot)
		return 1
	}

	code := m.Run()

	// Tests clean up after themselves with t.Cleanup; this catches whatever a
	// failed cleanup left behind so the machine stays usable.
	sweepRoot(testRoot)
	if err := os.RemoveAll(testRoot); err != nil {
		fmt.Fprintf(os.Stderr, "integration: remove %s: %v\n", testRoot, err)
	}
	return code
}

// checkEnvironment returns why the suite cannot run here, or "".
func checkEnvironment() string {
	if os.Geteuid() != 0 {
		return "not running as root (FUSE mounts, loop devices and ext4 mounts need root)"
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "no /dev/fuse on this machine"
	}
	for _, tool := range []string{"qemu-img", "qemu-io", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not installed (apt-get install qemu-utils fuse3)", tool)
		}
	}
	return ""
}

// requireEnv skips the test, loudly, when the machine cannot run the suite.
func requireEnv(t *testing.T) {
	t.Helper()
	if envProblem != "" {
		testenv.Lacking(t, envProblem)
	}
}

// requireTools stops the test, loudly, when the suite cannot run or a tool
// it drives (a command, or a file a package installs) is missing.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	requireEnv(t)
	testenv.RequireTools(t, tools...)
}

// buildBinary compiles cmd/qcow2fs into dir, unless QCOW2FS_BIN names a
// binary to test instead.
func buildBinary(dir string) (string, error) {
	if bin := os.Getenv("QCOW2FS_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("QCOW2FS_BIN: %w", err)
		}
		return abs, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	out := filepath.Join(dir, "qcow2fs")
	cmd := exec.Command(goTool, "build", "-o", out, "../cmd/qcow2fs")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build makes it
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build qcow2fs: %v\n%s", err, b)
	}
	return out, nil
}

// sweepDeadRuns cleans up after earlier runs whose process is gone (killed by
// a test timeout, say): their mounts, loop devices and directories.
func sweepDeadRuns() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), rootPrefix+"*"))
	for _, dir := range dirs {
		var pid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(filepath.Base(dir), rootPrefix), "%d-", &pid); err != nil || pid <= 0 {
			continue
		}
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		sweepRoot(dir)
		_ = os.RemoveAll(dir)
	}
}

func processAlive(pid int) bool {
	return unix.Kill(pid, 0) == nil
}
