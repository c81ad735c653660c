// Robustness tests: SIGQUIT handled like SIGTERM, FIFOs and devices refused,
// commas and newlines in names, run state swept after a kill.

package integration

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"github.com/qcow2fs/qcow2fs/internal/proc"
)

// TestSigquit: SIGQUIT is handled like SIGTERM — unmount, flush, close,
// release the locks, remove the run state — instead of Go's goroutine
// dump and exit, which left a dead mount and unwritten metadata.
func TestSigquit(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "16M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	logFile := filepath.Join(dir, "daemon.log")
	mountQcow2fs(t, mnt, []string{"-o", "log=" + logFile}, img)
	t.Cleanup(func() { cleanupMount(t, mnt) })
	pid := daemonPID(t, mnt)
	rs := runStateFile(t, mnt)
	payload := []byte(strings.Repeat("flushed at SIGQUIT ", 1000))
	writeAt(t, filepath.Join(mnt, "vm.raw"), payload, 3<<20)

	syscall.Kill(pid, syscall.SIGQUIT)
	if !waitUntil(20*time.Second, func() bool { _, ok := mounts.Find(mnt); return !ok && proc.Gone(pid) }) {
		t.Fatalf("SIGQUIT did not unmount %s and end daemon %d; log:\n%s", mnt, pid, readFile(logFile))
	}
	log := readFile(logFile)
	for _, want := range []string{"quit: unmounting", "images flushed and closed"} {
		if !strings.Contains(log, want) {
			t.Errorf("daemon log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(rs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run-state file %s left behind: %v", rs, err)
	}
	if h := mounts.OpenUnder(img); len(h) > 0 {
		t.Errorf("image still open: %s", strings.Join(h, "; "))
	}
	qemuCheckClean(t, img)
	raw, err := os.ReadFile(qemuRawOf(t, img, filepath.Join(dir, "after.raw")))
	if err != nil {
		t.Fatal(err)
	}
	if string(raw[3<<20:3<<20+len(payload)]) != string(payload) {
		t.Errorf("the write before SIGQUIT is not in the image")
	}
}

// TestSpecialFilesRefused: info (and the other commands that open an
// image) on a FIFO or a device refuse at once, naming the file and what it
// is, instead of waiting for ever in open(2) for a writer.
func TestSpecialFilesRefused(t *testing.T) {
	requireTools(t, "losetup", "mknod", "mkfifo")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	fifo := filepath.Join(dir, "fifo.qcow2")
	run(t, "mkfifo", fifo)
	chr := filepath.Join(dir, "chr.qcow2")
	run(t, "mknod", chr, "c", "1", "3") // like /dev/null
	img := k.Path("real")
	qemuCreate(t, img, "4M", "", "", "")
	blk := loopAttach(t, img, "-r")

	for _, tc := range []struct {
		path, what string
	}{{fifo, "FIFO"}, {chr, "character device"}, {blk, "block device"}} {
		for _, args := range [][]string{
			{"info", tc.path},
			{"info", "--output", "json", tc.path},
			{"info", "-U", tc.path},
			{"hash", tc.path},
			{"map", tc.path},
			{"check", tc.path},
			{"snapshot", "list", tc.path},
		} {
			r := bounded(10*time.Second, nil, "", qcow2fsBin, args...)
			msg := strings.TrimSpace(r.Stderr)
			if r.Code != 1 || !strings.Contains(msg, tc.path) || !strings.Contains(msg, tc.what) || strings.Contains(msg, "\n") {
				t.Errorf("qcow2fs %s: %s\nwant exit 1 and one line naming the file as a %s", strings.Join(args, " "), r, tc.what)
			}
		}
	}
	mnt := mkdir(t, dir, "mnt")
	t.Cleanup(func() { cleanupMount(t, mnt) })
	if r := bounded(10*time.Second, nil, "", qcow2fsBin, "mount", "--ro", fifo, mnt); r.Code != 1 || !strings.Contains(r.Stderr, fifo) {
		t.Errorf("mount of a FIFO: %s; want exit 1 naming it", r)
	}
}

// TestCommaInImagePath: the "already mounted" check works for an image
// whose path holds a comma (a mount's source joins several images with
// commas): the same image is refused, naming it whole, and another image
// named like the part before the comma is not taken for it.
func TestCommaInImagePath(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := filepath.Join(k.Dir, "disk,1.qcow2")
	qemuCreate(t, img, "4M", "", "", "")
	left := filepath.Join(k.Dir, "disk") // an image named like the part before the comma
	qemuCreate(t, left, "4M", "", "", "")
	m1, m2, m3 := mkdir(t, dir, "m1"), mkdir(t, dir, "m2"), mkdir(t, dir, "m3")
	mountQcow2fs(t, m1, []string{"--ro"}, img)

	check := func(what string) {
		t.Helper()
		r := execute("", qcow2fsBin, "mount", "--ro", img, m2)
		if r.Code != 1 || !strings.Contains(r.Stderr, img+" is already mounted at "+m1) {
			t.Errorf("%s: second mount of %s: %s\nwant exit 1, %q", what, img, r, img+" is already mounted at "+m1)
		}
		forceUnmount(t, m2)
		mountQcow2fs(t, m3, []string{"--ro"}, left)
		unmountQcow2fs(t, m3, left)
	}
	check("with run state")
	if e := qcow2fsStatus(t)[m1]; e.Source != img || len(e.Images) != 1 || e.Images[0] != img {
		t.Errorf("status of %s: %+v, want source and image %s", m1, e, img)
	}
	// Without the daemon's run state only the mount's source is left.
	rs := runStateFile(t, m1)
	if err := os.Rename(rs, rs+".hidden"); err != nil {
		t.Fatal(err)
	}
	check("without run state")
	os.Rename(rs+".hidden", rs)
	unmountQcow2fs(t, m1, img)
}

// TestNewlineInNames: a mount point and an image path holding a newline
// (and a tab) mount, show in status on one line each (quoted) with the
// exact names in JSON, and unmount.
func TestNewlineInNames(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "images\nof\tthe day"))
	img := k.Path("vm")
	qemuCreate(t, img, "4M", "", "", "")
	plainImg := filepath.Join(mkdir(t, dir, "plain-img"), "plain.qcow2")
	qemuCreate(t, plainImg, "4M", "", "", "")
	mnt := mkdir(t, dir, "mnt\nx")
	plain := mkdir(t, dir, "plain")
	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	mountQcow2fs(t, plain, []string{"--ro"}, plainImg)

	if e := qcow2fsStatus(t)[mnt]; e.Source != img || e.State != "serving" || len(e.Images) != 1 || e.Images[0] != img {
		t.Errorf("status --output json for %q: %+v", mnt, e)
	}
	human := run(t, qcow2fsBin, "status")
	if strings.Contains(human, mnt) || strings.Contains(human, img) {
		t.Errorf("status prints a name with its raw newline:\n%s", human)
	}
	var ours, plains int
	for _, line := range strings.Split(strings.TrimRight(human, "\n"), "\n")[1:] {
		switch {
		case strings.HasPrefix(line, strconv.Quote(mnt)+" "):
			ours++
			if !strings.Contains(line, strconv.Quote(img)) || !strings.Contains(line, "serving") {
				t.Errorf("status line of %q lacks the quoted source or the state: %q", mnt, line)
			}
		case strings.HasPrefix(line, plain+" "):
			plains++
		case strings.HasPrefix(line, "/") || strings.HasPrefix(line, `"`) || strings.HasPrefix(line, " "):
			// another mount on this machine, or an image line
		default:
			t.Errorf("status line that starts no mount: %q", line)
		}
	}
	if ours != 1 || plains != 1 {
		t.Errorf("status has %d lines for %q and %d for %s, want 1 each:\n%s", ours, mnt, plains, plain, human)
	}
	compareFiles(t, filepath.Join(mnt, "vm.raw"), qemuRawOf(t, img, filepath.Join(dir, "vm-oracle.raw")))
	unmountQcow2fs(t, mnt, img)
	unmountQcow2fs(t, plain, plainImg)
}

// TestRunStateSweptAfterKill: a daemon killed outright cannot remove its
// run-state file; the next status does.
func TestRunStateSweptAfterKill(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "4M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	pid := daemonPID(t, mnt)
	rs := runStateFile(t, mnt)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(5*time.Second, func() bool { return proc.Gone(pid) }) {
		t.Fatalf("daemon %d survived SIGKILL", pid)
	}
	out := run(t, qcow2fsBin, "status", "--output", "json")
	var list []statusEntry
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("status --output json: %v\n%s", err, out)
	}
	if _, err := os.Stat(rs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run-state file %s of the killed daemon outlived status: %v", rs, err)
	}
	for _, e := range list {
		if e.Mountpoint == mnt && e.PID != 0 {
			t.Errorf("status still names the killed daemon: %+v", e)
		}
	}
}
