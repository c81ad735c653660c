// Tests that a SIGSTOPped daemon takes nothing else down: other commands
// return promptly, and its own mount serves again once continued.

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

// prompt is how long a command may take next to a daemon that does not
// answer: the bounded probe (2s) and the command's own work, with room for
// a loaded machine. A command that waits on the stopped daemon takes for
// ever, and bounded turns that into a failure.
const prompt = 8 * time.Second

// procState returns the state letter of /proc/PID/stat ("" if gone).
func procState(pid int) string {
	state, _, _ := proc.Stat(pid)
	return state
}

// stopDaemon SIGSTOPs pid until it shows as stopped; the test's cleanup
// continues it whatever happens.
func stopDaemon(t *testing.T, pid int) {
	t.Helper()
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(5*time.Second, func() bool { return procState(pid) == "T" }) {
		t.Fatalf("daemon %d not stopped after SIGSTOP (state %q)", pid, procState(pid))
	}
}

// boundedStatus runs qcow2fs status --output json within prompt.
func boundedStatus(t *testing.T, suspects []string) map[string]statusEntry {
	t.Helper()
	out := mustBounded(t, prompt, suspects, "", qcow2fsBin, "status", "--output", "json")
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

// TestStoppedDaemon: a SIGSTOPped daemon must not take anything else down.
// While it is stopped, mounting another image, status and unmounting
// another mount all return promptly; status calls the stopped one "not
// responding"; mounting onto its mount point or its image is refused at
// once, saying why. Continued, it serves again; unmounted while stopped,
// the unmount returns at once, saying the daemon flushes when continued,
// and it does.
func TestStoppedDaemon(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	a, b, c := k.Path("a"), k.Path("b"), k.Path("c")
	for _, p := range []string{a, b, c} {
		qemuCreate(t, p, "4M", "", "", "")
	}
	mntA, mntB, mntC := mkdir(t, dir, "a"), mkdir(t, dir, "b"), mkdir(t, dir, "c")
	mountQcow2fs(t, mntA, nil, a)
	mountQcow2fs(t, mntB, []string{"--ro"}, b)
	for _, m := range []string{mntA, mntB, mntC} {
		t.Cleanup(func() { cleanupMount(t, m) })
	}
	pid := daemonPID(t, mntA)
	// Something for the stopped daemon to flush later.
	payload := []byte(strings.Repeat("written before SIGSTOP ", 500))
	writeAt(t, mntA+"/a.raw", payload, 0)
	suspects := []string{mntA}

	stopDaemon(t, pid)

	t.Run("mount-another", func(t *testing.T) {
		mustBounded(t, prompt, suspects, "", qcow2fsBin, "mount", c, mntC)
		if m, ok := mounts.Find(mntC); !ok || m.FSType != fuseType {
			t.Fatalf("qcow2fs mount returned 0 but %s is not mounted", mntC)
		}
	})
	t.Run("status", func(t *testing.T) {
		st := boundedStatus(t, suspects)
		if e := st[mntA]; e.State != "not-responding" || e.PID != pid {
			t.Errorf("status of the stopped mount: %+v, want state not-responding, pid %d", e, pid)
		}
		if e := st[mntB]; e.State != "serving" {
			t.Errorf("status of the healthy mount: %+v, want serving", e)
		}
		human := mustBounded(t, prompt, suspects, "", qcow2fsBin, "status")
		for _, line := range strings.Split(human, "\n") {
			if strings.HasPrefix(line, mntA+" ") && !strings.Contains(line, "not responding") {
				t.Errorf("status line of the stopped mount does not say \"not responding\": %q", line)
			}
		}
		if !strings.Contains(human, "not responding") {
			t.Errorf("qcow2fs status does not say \"not responding\":\n%s", human)
		}
	})
	t.Run("unmount-another", func(t *testing.T) {
		mustBounded(t, prompt, suspects, "", qcow2fsBin, "unmount", mntB)
		if _, ok := mounts.Find(mntB); ok {
			t.Errorf("%s still mounted", mntB)
		}
	})
	t.Run("refused-at-once", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{[]string{"mount", "--ro", b, mntA}, []string{mntA, "already a qcow2fs mount", "stopped"}},
			{[]string{"mount", "--ro", a, mntB}, []string{a, "already mounted at " + mntA, "stopped"}},
		} {
			r := bounded(prompt, suspects, "", qcow2fsBin, tc.args...)
			if r.Code != 1 {
				t.Errorf("qcow2fs %s: %s; want exit 1", strings.Join(tc.args, " "), r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("qcow2fs %s: stderr lacks %q: %s", strings.Join(tc.args, " "), w, r.Stderr)
				}
			}
			if _, ok := mounts.Find(mntB); ok {
				t.Errorf("%s mounted despite the refusal", mntB)
				cleanupMount(t, mntB)
			}
		}
	})
	t.Run("directory-source-holding-it", func(t *testing.T) {
		// A directory given as the source is scanned for images; the
		// stopped mount point is one of its entries.
		top := dir + "/top.qcow2"
		qemuCreate(t, top, "1M", "", "", "")
		mustBounded(t, prompt, suspects, "", qcow2fsBin, "mount", "--ro", dir, mntB)
		if ls := listDir(t, mntB); strings.Join(ls, " ") != "top.info top.raw" {
			t.Errorf("mount of the directory shows %v", ls)
		}
		mustBounded(t, prompt, suspects, "", qcow2fsBin, "unmount", mntB)
	})
	t.Run("no-run-state", func(t *testing.T) {
		// Without its run-state file (a mount by another user, or
		// another build) only the probe can tell: it gives up in time.
		rs := runStateFile(t, mntA)
		if err := os.Rename(rs, rs+".hidden"); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(rs+".hidden", rs)
		if e := boundedStatus(t, suspects)[mntA]; e.State != "not-responding" {
			t.Errorf("status of the stopped mount without run state: %+v, want not-responding", e)
		}
		r := bounded(prompt, suspects, "", qcow2fsBin, "mount", "--ro", a, mntB)
		if r.Code != 1 || !strings.Contains(r.Stderr, "already mounted at "+mntA) || !strings.Contains(r.Stderr, "did not answer") {
			t.Errorf("mount of the stopped mount's image: %s; want exit 1, already mounted, did not answer", r)
		}
		cleanupMount(t, mntB)
	})

	// Continued, it serves as before.
	syscall.Kill(pid, syscall.SIGCONT)
	if e := boundedStatus(t, suspects)[mntA]; e.State != "serving" {
		t.Errorf("status after SIGCONT: %+v, want serving", e)
	}
	mustBounded(t, prompt, suspects, "", "cmp", "-n", strconv.Itoa(len(payload)), mntA+"/a.raw", writeTemp(t, dir, payload))

	// Unmounted while stopped: the unmount returns at once and says the
	// daemon will flush once continued.
	stopDaemon(t, pid)
	r := bounded(prompt, suspects, "", qcow2fsBin, "unmount", mntA)
	if r.Code != 1 || !strings.Contains(r.Stderr, "stopped") || !strings.Contains(r.Stderr, "kill -CONT "+strconv.Itoa(pid)) {
		t.Errorf("qcow2fs unmount of a stopped daemon's mount: %s; want exit 1 naming the stopped daemon", r)
	}
	if _, ok := mounts.Find(mntA); ok {
		t.Fatalf("%s still mounted after qcow2fs unmount", mntA)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	if !waitUntil(20*time.Second, func() bool { return proc.Gone(pid) }) {
		t.Fatalf("daemon %d did not finish after SIGCONT", pid)
	}
	if h := mounts.OpenUnder(a); len(h) > 0 {
		t.Errorf("image still open: %s", strings.Join(h, "; "))
	}
	qemuCheckClean(t, a)
	raw := qemuRawOf(t, a, dir+"/a-after.raw")
	mustBounded(t, prompt, nil, "", "cmp", "-n", strconv.Itoa(len(payload)), raw, writeTemp(t, dir, payload))
	unmountQcow2fs(t, mntC, c)
}

// writeTemp writes b to a new file in dir and returns its path.
func writeTemp(t *testing.T, dir string, b []byte) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "expect-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// writeAt writes b at off into the existing file path (no truncation: the
// raw files of a mount refuse a size change) and closes it.
func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// runStateFile returns the run-state file of the daemon serving mnt.
func runStateFile(t *testing.T, mnt string) string {
	t.Helper()
	files, _ := filepath.Glob("/run/qcow2fs/*.json")
	for _, f := range files {
		var rs struct {
			Mountpoint string `json:"mountpoint"`
		}
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &rs) == nil && rs.Mountpoint == mnt {
			return f
		}
	}
	t.Fatalf("no run-state file in /run/qcow2fs for %s", mnt)
	return ""
}
