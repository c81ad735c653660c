// In-process CLI tests (usage errors, info JSON) and daemon tests: mount
// through the daemon, read, unmount, and errors reported back; TestMain lets
// the test binary play the daemon and the probe.

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// TestMain lets the test binary play the daemon and the probe: startDaemon
// and probeMount re-execute /proc/self/exe, which here is the test binary.
func TestMain(m *testing.M) {
	if os.Getenv(zombieLeaderEnv) != "" {
		runZombieLeaderChild()
	}
	if isProbeChild() {
		os.Exit(runProbeChild())
	}
	if daemon.IsChild() {
		os.Exit(runDaemonChild())
	}
	os.Exit(m.Run())
}

// runCLI runs the command in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	outF, errF := tempFile(t), tempFile(t)
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outF, errF
	code = run(append([]string{"qcow2fs"}, args...))
	os.Stdout, os.Stderr = oldOut, oldErr
	return code, readBack(t, outF), readBack(t, errF)
}

func tempFile(t *testing.T) *os.File {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readBack(t *testing.T, f *os.File) string {
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func qemu(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestUsageAndErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.qcow2")
	os.WriteFile(bad, []byte("hi\n"), 0o644)
	good := filepath.Join(dir, "good.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", good, "1M")
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, exitUsage, "Usage:"},
		{[]string{"frobnicate"}, exitUsage, `qcow2fs: unknown command "frobnicate"`},
		{[]string{"mount", good}, exitUsage, "need at least one IMAGE and a MOUNTPOINT"},
		{[]string{"mount", "--nope", good, dir}, exitUsage, "unknown flag: --nope"},
		{[]string{"mount", "-o", "ro,sparkle", good, dir}, exitUsage, `unknown mount option "sparkle"`},
		{[]string{"mount", "--ro", bad, dir}, exitError, "qcow2fs: " + bad + ": "},
		{[]string{"mount", filepath.Join(dir, "missing.qcow2"), dir}, exitError, "no such file or directory"},
		{[]string{"mount", good, filepath.Join(dir, "nomnt")}, exitError, "mount point"},
		{[]string{"info", bad}, exitError, "qcow2fs: " + bad + ": "},
		{[]string{"info", "--output", "xml", good}, exitUsage, "--output must be human or json"},
		{[]string{"unmount", dir}, exitError, "is not mounted"},
		{[]string{"version", "x"}, exitUsage, "takes no arguments"},
		{[]string{"status", "x"}, exitUsage, "takes no arguments"},
		{[]string{filepath.Join(dir, "missing.qcow2"), dir, "-o", "ro"}, exitError, "no such file or directory"},
		{[]string{"status", "--output", "xml"}, exitUsage, "--output must be human or json"},
		{[]string{"hash"}, exitUsage, "need at least one IMAGE"},
		{[]string{"hash", bad}, exitError, "qcow2fs: " + bad + ": "},
		{[]string{"mount", "--overlay", filepath.Join(dir, "o.qcow2"), "--ro", good, dir}, exitUsage, "drop --ro"},
		{[]string{"mount", "--overlay", good, good, dir}, exitUsage, "is the image itself"},
		{[]string{"mount", "--overlay", filepath.Join(dir, "nodir", "o.qcow2"), good, dir}, exitError, "does not exist"},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("qcow2fs %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.stderr)
		}
		if tc.code != exitUsage || tc.args != nil {
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 {
				t.Errorf("qcow2fs %q: error spans %d lines: %q", tc.args, n+1, stderr)
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"mount", "--help"}, {"unmount", "-h"}, {"info", "--help"}, {"status", "--help"}, {"hash", "-h"}, {"version"}, {"--version"}} {
		if code, stdout, _ := runCLI(t, args...); code != exitOK || stdout == "" {
			t.Errorf("qcow2fs %q: exit %d, stdout %q", args, code, stdout)
		}
	}
}

func TestInfoJSON(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "2M")
	qemu(t, "qemu-img", "snapshot", "-c", "snap1", base)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	code, stdout, stderr := runCLI(t, "info", "--output", "json", top)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var in qcow2.Info
	if err := json.Unmarshal([]byte(stdout), &in); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if in.VirtualSize != 2<<20 || in.Backing == nil || in.Backing.Filename != base || len(in.Backing.Snapshots) != 1 {
		t.Errorf("unexpected info %+v", in)
	}
	code, stdout, _ = runCLI(t, "info", top)
	for _, want := range []string{"virtual size:", "2 MiB (2097152 bytes)", "backing file:", "backing layer 1:", "snap1", base} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("human info lacks %q:\n%s", want, stdout)
		}
	}
}

// TestDaemonMountUnmount mounts through the daemon, reads, and unmounts:
// mount must return only once the files are there, and unmount only once
// the daemon is gone.
func TestDaemonMountUnmount(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Lacking(t, "root (mounting)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	qemu(t, "qemu-io", "-c", "write -P 0xab 0 1M", img)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	t.Cleanup(func() {
		if m, _ := mounts.IsMounted(mnt); m {
			fusermountUnmount(mnt, true)
		}
	})

	if code, _, stderr := runCLI(t, "mount", "--ro", img, mnt); code != exitOK {
		t.Fatalf("mount: exit %d: %s", code, stderr)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4<<20 || !bytes.Equal(got[:1<<20], bytes.Repeat([]byte{0xab}, 1<<20)) || !bytes.Equal(got[1<<20:], make([]byte, 3<<20)) {
		t.Error("disk.raw does not hold what was written")
	}
	entries, _ := mounts.Read()
	e, ok := mounts.Last(entries, mnt)
	if !ok || e.FSType != fsType || e.Source != img || !strings.Contains(e.Options, "ro") {
		t.Errorf("mountinfo entry %+v", e)
	}
	st := readRunState(mnt)
	if st == nil {
		t.Fatal("no run state for the daemon")
	}

	// A second mount of the same image is refused, naming the first.
	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o755)
	if code, _, stderr := runCLI(t, "mount", "--ro", img, other); code != exitError || !strings.Contains(stderr, "already mounted at "+mnt) {
		t.Errorf("second mount: exit %d: %s", code, stderr)
	}

	if code, _, stderr := runCLI(t, "unmount", mnt); code != exitOK {
		t.Fatalf("unmount: exit %d: %s", code, stderr)
	}
	if m, _ := mounts.IsMounted(mnt); m {
		t.Error("still mounted after unmount")
	}
	if st.alive() {
		t.Errorf("daemon %d still running after unmount", st.PID)
	}
	// Released: QEMU can open the image for writing again.
	qemu(t, "qemu-io", "-c", "write -P 0xcd 0 4k", img)
}

// TestDaemonReportsError checks the parent relays the daemon's error: a
// write lock held by another process is only found by the daemon.
func TestDaemonReportsError(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Lacking(t, "root (mounting)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	held, err := qcow2.Open(img, qcow2.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	code, _, stderr := runCLI(t, "mount", img, mnt)
	if code != exitError || !strings.Contains(stderr, img) || !strings.Contains(stderr, "lock") {
		t.Errorf("exit %d, stderr %q; want exit 1 and a lock error naming the image", code, stderr)
	}
	if m, _ := mounts.IsMounted(mnt); m {
		t.Error("mounted despite the error")
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}
