// Tests of status (live and stale mounts), of mount exit codes, and of
// SIGTERM with and without a loop device attached.

package integration

import (
	"encoding/json"
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

// statusEntry is one mount of `qcow2fs status --output json`.
type statusEntry struct {
	Mountpoint string   `json:"mountpoint"`
	Source     string   `json:"source"`
	Mode       string   `json:"mode"`
	Overlay    string   `json:"overlay"`
	PID        int      `json:"pid"`
	State      string   `json:"state"`
	Images     []string `json:"images"`
	Partitions bool     `json:"partitions"`
}

// qcow2fsStatus runs `qcow2fs status --output json` and returns the entries
// by mount point.
func qcow2fsStatus(t *testing.T) map[string]statusEntry {
	t.Helper()
	out := run(t, qcow2fsBin, "status", "--output", "json")
	var list []statusEntry
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("qcow2fs status --output json: %v\n%s", err, out)
	}
	m := map[string]statusEntry{}
	for _, e := range list {
		m[e.Mountpoint] = e
	}
	return m
}

// daemonPID returns the pid of the daemon serving mnt, from qcow2fs status.
func daemonPID(t *testing.T, mnt string) int {
	t.Helper()
	e, ok := qcow2fsStatus(t)[mnt]
	if !ok || e.PID <= 0 {
		t.Fatalf("qcow2fs status has no daemon pid for %s: %+v", mnt, e)
	}
	return e.PID
}

// waitUntil polls cond for up to d.
func waitUntil(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestStatus: status lists each mount with its mode, source, images and the
// live daemon's pid; a killed daemon shows as stale, and the next mount at
// that place cleans the stale mount up.
func TestStatus(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	a, b := k.Path("a"), k.Path("b")
	qemuCreate(t, a, "4M", "", "", "")
	qemuCreate(t, b, "4M", "", "", "")
	roMnt, rwMnt := mkdir(t, dir, "ro"), mkdir(t, dir, "rw")
	ovl := filepath.Join(dir, "b-overlay.qcow2")
	mountQcow2fs(t, roMnt, []string{"--ro"}, a)
	mountQcow2fs(t, rwMnt, []string{"-o", "overlay=" + ovl + ",partitions"}, b)

	st := qcow2fsStatus(t)
	ro, rw := st[roMnt], st[rwMnt]
	if ro.Mode != "ro" || ro.Source != a || ro.State != "serving" || len(ro.Images) != 1 || ro.Images[0] != a {
		t.Errorf("status of the read-only mount: %+v", ro)
	}
	if rw.Mode != "rw" || rw.Overlay != ovl || !rw.Partitions || rw.State != "serving" || rw.Source != b {
		t.Errorf("status of the overlay mount: %+v", rw)
	}
	for _, e := range []statusEntry{ro, rw} {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(e.PID) + "/comm")
		if e.PID <= 0 || strings.TrimSpace(string(comm)) != "qcow2fs" {
			t.Errorf("%s: pid %d is not a running qcow2fs (comm %q)", e.Mountpoint, e.PID, comm)
		}
	}
	human := run(t, qcow2fsBin, "status")
	for _, want := range []string{roMnt, rwMnt, strconv.Itoa(ro.PID), strconv.Itoa(rw.PID), "overlay " + ovl} {
		if !strings.Contains(human, want) {
			t.Errorf("qcow2fs status does not mention %q:\n%s", want, human)
		}
	}

	// A daemon killed outright leaves a dead mount: status says so, and a
	// new mount at the same place cleans it up and works.
	if err := syscall.Kill(ro.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(5*time.Second, func() bool { return proc.Gone(ro.PID) }) {
		t.Fatalf("daemon %d survived SIGKILL", ro.PID)
	}
	if e := qcow2fsStatus(t)[roMnt]; e.State != "stale" || e.PID != 0 {
		t.Errorf("status after the daemon's death: %+v, want state stale and no pid", e)
	}
	r := execute("", qcow2fsBin, "mount", "--ro", a, roMnt)
	if r.Code != 0 || !strings.Contains(r.Stderr, "stale") {
		t.Fatalf("mount over a stale mount: %s", r)
	}
	if n := mountCount(t, roMnt); n != 1 {
		t.Errorf("%d mounts at %s after remounting over a stale one, want 1", n, roMnt)
	}
	unmountQcow2fs(t, roMnt, a)
	unmountQcow2fs(t, rwMnt, b, ovl)
	st = qcow2fsStatus(t)
	if _, ok := st[roMnt]; ok {
		t.Errorf("status still lists %s after unmount", roMnt)
	}
	if _, ok := st[rwMnt]; ok {
		t.Errorf("status still lists %s after unmount", rwMnt)
	}
}

// TestStatusRightAfterKill: a mount whose daemon has just died is stale,
// even while the kernel is still tearing the connection down (a request
// caught in the teardown fails with ECONNABORTED, or ECANCELED over
// io_uring, not ENOTCONN).
func TestStatusRightAfterKill(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	a := k.Path("a")
	qemuCreate(t, a, "4M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	const rounds = 20
	for i := 0; i < rounds; i++ {
		mountQcow2fs(t, mnt, []string{"--ro"}, a)
		pid := qcow2fsStatus(t)[mnt].PID
		if pid <= 0 {
			t.Fatalf("round %d: no daemon pid in status", i)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// (Serving only if the probe was answered before the kill landed.)
		if st := qcow2fsStatus(t)[mnt]; st.State != "stale" && st.State != "serving" {
			t.Fatalf("round %d: status right after SIGKILL of %d: %+v, want stale", i, pid, st)
		}
		if !waitUntil(5*time.Second, func() bool { return proc.Gone(pid) }) {
			t.Fatalf("daemon %d survived SIGKILL", pid)
		}
		if st := qcow2fsStatus(t)[mnt]; st.State != "stale" {
			t.Fatalf("round %d: status after the death of %d: %+v, want stale", i, pid, st)
		}
		forceUnmount(t, mnt)
	}
	t.Logf("%d kill/status rounds, every one stale", rounds)
}

// TestMountExitCodes: every way a mount can fail gives exit code 1 (2 for
// usage errors) with one line naming the problem, and leaves nothing
// mounted and no daemon holding the image.
func TestMountExitCodes(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "4M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	busy := mkdir(t, dir, "busy")
	other := mkdir(t, k.Bk, "other")
	qemuCreate(t, filepath.Join(other, "other.qcow2"), "1M", "", "", "")
	mountQcow2fs(t, busy, []string{"--ro"}, filepath.Join(other, "other.qcow2"))

	// Hold vm.qcow2 open for writing in qemu-io for the locked case.
	release := holdWithQemuIO(t, img)

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"missing image", []string{"mount", "--ro", k.Path("missing"), mnt}, 1, []string{"missing.qcow2", "no such file"}},
		{"missing image, mount.fuse form", []string{k.Path("missing"), mnt, "-o", "ro"}, 1, []string{"missing.qcow2", "no such file"}},
		{"locked image", []string{"mount", img, mnt}, 1, []string{img, "lock"}},
		{"locked image, mount.fuse form", []string{img, mnt, "-o", "rw"}, 1, []string{img, "lock"}},
		{"missing mount point", []string{"mount", "--ro", filepath.Join(other, "other.qcow2"), filepath.Join(dir, "nowhere")}, 1, []string{"nowhere", "no such file"}},
		{"busy mount point", []string{"mount", "--ro", img, busy}, 1, []string{busy, "already a qcow2fs mount"}},
		{"image mounted elsewhere", []string{"mount", "--ro", filepath.Join(other, "other.qcow2"), mnt}, 1, []string{"already mounted at " + busy}},
		{"unknown option", []string{"mount", "-o", "ro,sparkle", img, mnt}, 2, []string{`unknown mount option "sparkle"`}},
		{"allow_root with allow_other", []string{"mount", "-o", "allow_root,allow_other", img, mnt}, 2, []string{"exclude each other"}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			r := execute("", qcow2fsBin, tc.args...)
			msg := strings.ToLower(r.Stderr)
			if r.Code != tc.code {
				t.Errorf("exit %d, want %d: %s", r.Code, tc.code, r)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(msg, strings.ToLower(want)) {
					t.Errorf("stderr lacks %q: %s", want, r.Stderr)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.Stderr), "\n"); n > 0 {
				t.Errorf("error spans %d lines: %q", n+1, r.Stderr)
			}
			if _, ok := mounts.Find(mnt); ok {
				forceUnmount(t, mnt)
				t.Errorf("%s mounted despite the error", mnt)
			}
		})
	}
	release()
	if h := mounts.OpenUnder(img); len(h) > 0 {
		t.Errorf("failed mounts left the image open: %s", strings.Join(h, "; "))
	}
}

// TestSigterm: SIGTERM unmounts and flushes when nothing uses the mount;
// with a loop device attached over the raw file the daemon keeps serving,
// logs why, and unmounts on the next SIGTERM once the loop device is gone.
func TestSigterm(t *testing.T) {
	requireTools(t, "losetup")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "16M", "", "", "")
	mnt := mkdir(t, dir, "mnt")
	logFile := filepath.Join(dir, "daemon.log")
	payload := []byte(strings.Repeat("flushed at SIGTERM ", 1000))

	t.Run("idle", func(t *testing.T) {
		mountQcow2fs(t, mnt, []string{"-o", "log=" + logFile}, img)
		pid := daemonPID(t, mnt)
		f, err := os.OpenFile(filepath.Join(mnt, "vm.raw"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(payload, 3<<20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		syscall.Kill(pid, syscall.SIGTERM)
		if !waitUntil(20*time.Second, func() bool { _, ok := mounts.Find(mnt); return !ok && proc.Gone(pid) }) {
			t.Fatalf("SIGTERM did not unmount %s and end daemon %d; log:\n%s", mnt, pid, readFile(logFile))
		}
		qemuCheckClean(t, img)
		raw, err := os.ReadFile(qemuRawOf(t, img, filepath.Join(dir, "idle.raw")))
		if err != nil {
			t.Fatal(err)
		}
		if string(raw[3<<20:3<<20+len(payload)]) != string(payload) {
			t.Errorf("the write before SIGTERM is not in the image")
		}
	})

	t.Run("loop-device", func(t *testing.T) {
		mountQcow2fs(t, mnt, []string{"-o", "log=" + logFile}, img)
		pid := daemonPID(t, mnt)
		dev := loopAttach(t, filepath.Join(mnt, "vm.raw"))
		syscall.Kill(pid, syscall.SIGTERM)
		time.Sleep(time.Second)
		if _, ok := mounts.Find(mnt); !ok || proc.Gone(pid) {
			t.Fatalf("SIGTERM with %s attached: mount or daemon gone (a lazy unmount under a loop device)", dev)
		}
		// Still serving: the loop device reads the image.
		buf := make([]byte, len(payload))
		f, err := os.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(buf, 3<<20)
		f.Close()
		if err != nil || string(buf) != string(payload) {
			t.Errorf("reading %s after SIGTERM: %v (content ok: %v)", dev, err, string(buf) == string(payload))
		}
		if log := readFile(logFile); !strings.Contains(log, "still serving") {
			t.Errorf("the log does not say why the daemon keeps serving:\n%s", log)
		}
		loopDetach(t, dev)
		syscall.Kill(pid, syscall.SIGTERM)
		if !waitUntil(20*time.Second, func() bool { _, ok := mounts.Find(mnt); return !ok && proc.Gone(pid) }) {
			t.Fatalf("second SIGTERM (loop device detached) did not unmount; log:\n%s", readFile(logFile))
		}
		qemuCheckClean(t, img)
	})
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
