// Live operations (issue 14): suspend/resume and live internal snapshots
// of a mount that stays mounted, with a loop device and ext4 on top and fio
// writing throughout.
// This file is long because the live stack (mount, loop device, ext4, fio in
// the background) is shared by every live test and defined here.

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"github.com/qcow2fs/qcow2fs/internal/proc"
)

// liveStack is qcow2fs → loop device (direct I/O) → ext4, on a fresh image.
type liveStack struct {
	dir, img, mnt, raw, dev, fsDir string
}

// newLiveStack builds the stack; cleanups (registered in this order, so run
// in the reverse) leave nothing behind even when the test fails half-way:
// thaw the file system and resume the mount first, then unmount ext4,
// detach the loop device, unmount qcow2fs.
func newLiveStack(t *testing.T, size string) *liveStack {
	t.Helper()
	requireTools(t, "losetup", "mkfs.ext4", "fsck.ext4", "fsfreeze", "fio", "qemu-img")
	s := &liveStack{dir: testDir(t)}
	k := newImageKit(t, mkdir(t, s.dir, "img"))
	s.mnt = mkdir(t, s.dir, "mnt")
	s.fsDir = mkdir(t, s.dir, "fs")
	s.img = k.Path("vm")
	qemuCreate(t, s.img, size, "", "", "")
	mountQcow2fs(t, s.mnt, nil, s.img)
	s.raw = filepath.Join(s.mnt, "vm.raw")
	s.dev = loopAttach(t, s.raw, "--direct-io=on")
	run(t, "mkfs.ext4", "-q", "-F", s.dev)
	mountDev(t, s.dev, s.fsDir, "")
	t.Cleanup(func() {
		bounded(20*time.Second, nil, "", "fsfreeze", "-u", s.fsDir)
		if suspendedState(s.mnt) {
			t.Logf("cleanup: resuming %s", s.mnt)
			if r := bounded(time.Minute, []string{s.mnt}, "", qcow2fsBin, "resume", s.mnt); r.Code != 0 {
				// It cannot serve: abort it so nothing above hangs.
				t.Logf("cleanup: resume failed (%s); aborting the mount", r)
				abortFuse(s.mnt)
			}
		}
	})
	return s
}

// suspendedState reports whether qcow2fs status shows mnt suspended.
func suspendedState(mnt string) bool {
	r := bounded(30*time.Second, nil, "", qcow2fsBin, "status", "--output", "json")
	return r.Code == 0 && strings.Contains(r.Stdout, `"mountpoint": "`+mnt+`"`) && statusStateOf(r.Stdout, mnt) == "suspended"
}

// statusStateOf picks the state of mnt out of qcow2fs status --output json.
func statusStateOf(js, mnt string) string {
	i := strings.Index(js, `"mountpoint": "`+mnt+`"`)
	if i < 0 {
		return ""
	}
	rest := js[i:]
	j := strings.Index(rest, `"state": "`)
	if j < 0 {
		return ""
	}
	rest = rest[j+len(`"state": "`):]
	return rest[:strings.IndexByte(rest, '"')]
}

// bgCmd is a command running in the background, killed after the test if
// still running.
type bgCmd struct {
	start          time.Time
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan error
}

func startBg(t *testing.T, dir, name string, args ...string) *bgCmd {
	t.Helper()
	b := &bgCmd{start: time.Now(), cmd: exec.Command(name, args...), done: make(chan error, 1)}
	b.cmd.Dir = dir
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			b.cmd.Process.Kill()
			select {
			case <-b.done:
			case <-time.After(10 * time.Second):
			}
		}
	})
	return b
}

// wait waits at most d for the command and returns its error.
func (b *bgCmd) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-b.done:
		b.done <- err // for a later wait and the cleanup
		return err
	case <-time.After(d):
		t.Fatalf("%s still running after %v", b.cmd.Path, d)
		return nil
	}
}

// exited reports whether the command has ended.
func (b *bgCmd) exited() bool {
	select {
	case err := <-b.done:
		b.done <- err
		return true
	default:
		return false
	}
}

// startFio runs fio on ext4 for 20 s: random direct writes, each block
// verified (crc32c) shortly after it is written (verify_backlog).
func startFio(t *testing.T, s *liveStack) *bgCmd {
	return startBg(t, s.fsDir, "fio",
		"--name=live", "--directory="+s.fsDir,
		"--ioengine=psync", "--direct=1", "--rw=randwrite", "--bs=4k",
		"--numjobs=2", "--size=24M", "--time_based", "--runtime=20",
		"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--verify_backlog=256",
		"--group_reporting", "--minimal")
}

func fioOK(t *testing.T, fio *bgCmd, d time.Duration) {
	t.Helper()
	if err := fio.wait(t, d); err != nil || strings.Contains(fio.stderr.String(), "verify") {
		t.Fatalf("fio failed (%v):\nstdout:\n%s\nstderr:\n%s", err, fio.stdout.String(), fio.stderr.String())
	}
	t.Logf("fio wrote and verified for %v", time.Since(fio.start).Round(time.Second))
}

// q2 runs qcow2fs with a deadline; the mount is aborted if it hangs.
func q2(mnt string, args ...string) result {
	return bounded(3*time.Minute, []string{mnt}, "", qcow2fsBin, args...)
}

func q2OK(t *testing.T, mnt string, args ...string) string {
	t.Helper()
	r := q2(mnt, args...)
	if r.Code != 0 {
		t.Fatalf("qcow2fs %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// snapshotCleanExt4 checks that the snapshot file holds a clean ext4:
// fsck.ext4 -fn on a read-only loop device over it.
func snapshotCleanExt4(t *testing.T, file string) {
	t.Helper()
	dev := loopAttach(t, file, "--read-only")
	r := bounded(2*time.Minute, nil, "", "fsck.ext4", "-fn", dev)
	loopDetach(t, dev)
	if r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn on %s (%s) is not clean: %s", file, dev, r)
	}
}

// TestLiveSuspendResume: suspend a mount under ext4 + fio, use the image
// with qemu-img meanwhile (snapshot, check), see a direct read wait, resume.
func TestLiveSuspendResume(t *testing.T) {
	s := newLiveStack(t, "256M")
	fio := startFio(t, s)
	time.Sleep(3 * time.Second) // fio well under way
	if fio.exited() {
		t.Fatalf("fio ended before the suspend: the workload is too short to test anything:\n%s%s", fio.stdout.String(), fio.stderr.String())
	}
	mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-f", s.fsDir)
	start := time.Now()
	q2OK(t, s.mnt, "suspend", "--timeout", "20s", s.mnt)
	t.Logf("suspended in %v", time.Since(start).Round(time.Millisecond))
	if st := statusStateOf(q2OK(t, s.mnt, "status", "--output", "json"), s.mnt); st != "suspended" {
		t.Fatalf("status shows %q for a suspended mount", st)
	}
	// The images are free: qemu-img takes its locks without -U.
	mustBounded(t, time.Minute, nil, "", "qemu-img", "snapshot", "-c", "s1", s.img)
	mustBounded(t, time.Minute, nil, "", "qemu-img", "check", s.img)
	if h := mounts.OpenUnder(s.img); len(h) > 0 {
		t.Fatalf("suspended, yet the image is open: %s", strings.Join(h, "; "))
	}
	// A direct read of the raw file waits in the daemon.
	read := startBg(t, "", "dd", "if="+s.raw, "of=/dev/null", "bs=4096", "count=16", "skip=1000", "iflag=direct", "status=none")
	time.Sleep(1500 * time.Millisecond)
	if read.exited() {
		t.Fatalf("a direct read of %s returned while the mount was suspended: %s%s", s.raw, read.stdout.String(), read.stderr.String())
	}
	q2OK(t, s.mnt, "resume", s.mnt)
	if err := read.wait(t, 30*time.Second); err != nil {
		t.Fatalf("the read that waited failed after resume: %v: %s", err, read.stderr.String())
	}
	mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-u", s.fsDir)
	snap := filepath.Join(s.mnt, "vm@s1.raw")
	if _, err := os.Stat(snap); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	if st := statusStateOf(q2OK(t, s.mnt, "status", "--output", "json"), s.mnt); st != "serving" {
		t.Fatalf("status shows %q after resume", st)
	}
	fioOK(t, fio, 3*time.Minute)

	snapshotCleanExt4(t, snap)
	// QEMU reads the same bytes from the snapshot (-U: the mount holds
	// the image; the snapshot never changes).
	want := filepath.Join(s.dir, "s1.qemu.raw")
	mustBounded(t, 2*time.Minute, nil, "", "qemu-img", "convert", "-U", "-O", "raw", "-l", "snapshot.name=s1", s.img, want)
	compareFiles(t, snap, want)

	run(t, "umount", s.fsDir)
	loopDetach(t, s.dev)
	unmountQcow2fs(t, s.mnt, s.img)
	qemuCheckClean(t, s.img)
}

// TestLiveSnapshots: qcow2fs snapshot create on a mounted image under
// load, with the file system frozen around each; every snapshot file
// appears at once and holds a clean ext4; delete removes the file.
func TestLiveSnapshots(t *testing.T) {
	s := newLiveStack(t, "256M")
	fio := startFio(t, s)
	time.Sleep(2 * time.Second)
	names := []string{"s1", "s2", "s3"}
	for _, n := range names {
		mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-f", s.fsDir)
		start := time.Now()
		q2OK(t, s.mnt, "snapshot", "create", n, s.img)
		took := time.Since(start)
		mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-u", s.fsDir)
		if _, err := os.Stat(filepath.Join(s.mnt, "vm@"+n+".raw")); err != nil {
			t.Fatalf("right after snapshot create %s: %v", n, err)
		}
		t.Logf("live snapshot %s in %v", n, took.Round(time.Millisecond))
		time.Sleep(2 * time.Second)
	}
	if fio.exited() {
		t.Fatalf("fio ended before the last snapshot: the workload is too short to test anything")
	}
	fioOK(t, fio, 3*time.Minute)
	for _, n := range names {
		snapshotCleanExt4(t, filepath.Join(s.mnt, "vm@"+n+".raw"))
	}
	out := mustBounded(t, time.Minute, nil, "", "qemu-img", "snapshot", "-U", "-l", s.img)
	for _, n := range names {
		if !strings.Contains(out, " "+n+" ") {
			t.Fatalf("qemu-img snapshot -l lacks %s:\n%s", n, out)
		}
	}
	q2OK(t, s.mnt, "snapshot", "delete", "s2", s.img)
	if _, err := os.Stat(filepath.Join(s.mnt, "vm@s2.raw")); !os.IsNotExist(err) {
		t.Fatalf("vm@s2.raw after snapshot delete: %v, want it gone", err)
	}
	for _, n := range []string{"s1", "s3"} {
		if _, err := os.Stat(filepath.Join(s.mnt, "vm@"+n+".raw")); err != nil {
			t.Fatalf("after deleting s2: %v", err)
		}
	}
	// The file system goes on after all that.
	run(t, "umount", s.fsDir)
	if r := bounded(2*time.Minute, nil, "", "fsck.ext4", "-fn", s.dev); r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn %s: %s", s.dev, r)
	}
	loopDetach(t, s.dev)
	unmountQcow2fs(t, s.mnt, s.img)
	qemuCheckClean(t, s.img)
	if out := run(t, "qemu-img", "snapshot", "-l", s.img); strings.Contains(out, " s2 ") {
		t.Fatalf("s2 still listed after delete:\n%s", out)
	}
}

// liveMount mounts a fresh 64 MiB image read-write; a mount the test
// leaves suspended has its connection aborted (its waiting requests would
// otherwise never be answered).
func liveMount(t *testing.T) (mnt, img string) {
	t.Helper()
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt = mkdir(t, dir, "mnt")
	img = k.Path("vm")
	qemuCreate(t, img, "64M", "", "", "")
	mountQcow2fs(t, mnt, nil, img)
	t.Cleanup(func() {
		if suspendedState(mnt) {
			abortFuse(mnt)
		}
	})
	return mnt, img
}

// TestLiveResumeRefusals: a virtual size changed while suspended, or the
// image replaced by another file, fails the resume and the mount stays
// suspended (until put back); a daemon killed while suspended leaves a
// clean image.
func TestLiveResumeRefusals(t *testing.T) {
	t.Run("size-changed", func(t *testing.T) {
		mnt, img := liveMount(t)
		writeAt(t, filepath.Join(mnt, "vm.raw"), bytes.Repeat([]byte{0x5a}, 65536), 1<<20)
		q2OK(t, mnt, "suspend", mnt)
		run(t, "qemu-img", "resize", img, "+1M")
		r := q2(mnt, "resume", mnt)
		if r.Code != 1 || !strings.Contains(r.Stderr, "virtual size") || !strings.Contains(r.Stderr, "stays suspended") {
			t.Fatalf("resume after a resize: want exit 1 naming the virtual size, got %s", r)
		}
		if !suspendedState(mnt) {
			t.Fatalf("the mount is not suspended after a refused resume")
		}
		if h := mounts.OpenUnder(img); len(h) > 0 {
			t.Fatalf("a refused resume left the image open: %s", strings.Join(h, "; "))
		}
		// Unmount is refused too: the waiting requests need a resume.
		if r := q2(mnt, "unmount", mnt); r.Code == 0 || !strings.Contains(r.Stderr, "resume it first") {
			t.Fatalf("unmount of a suspended mount: %s", r)
		}
		run(t, "qemu-img", "resize", "--shrink", img, "64M")
		q2OK(t, mnt, "resume", mnt)
		got := make([]byte, 65536)
		f, err := os.Open(filepath.Join(mnt, "vm.raw"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, 1<<20)
		f.Close()
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 65536)) {
			t.Fatalf("after resume the data differs (%v)", err)
		}
		unmountQcow2fs(t, mnt, img)
		qemuCheckClean(t, img)
	})
	t.Run("file-replaced", func(t *testing.T) {
		mnt, img := liveMount(t)
		q2OK(t, mnt, "suspend", mnt)
		// Another file of the same size under the image's name.
		keep := img + ".orig"
		run(t, "ln", img, keep)
		run(t, "cp", img, img+".new")
		run(t, "mv", img+".new", img)
		r := q2(mnt, "resume", mnt)
		if r.Code != 1 || !strings.Contains(r.Stderr, "another file") {
			t.Fatalf("resume with the image replaced: want exit 1 saying so, got %s", r)
		}
		if !suspendedState(mnt) {
			t.Fatalf("the mount is not suspended after a refused resume")
		}
		run(t, "mv", keep, img)
		q2OK(t, mnt, "resume", mnt)
		unmountQcow2fs(t, mnt, img)
		qemuCheckClean(t, img)
	})
	t.Run("killed-while-suspended", func(t *testing.T) {
		mnt, img := liveMount(t)
		t.Cleanup(func() { cleanupMount(t, mnt) })
		// Allocations (metadata in the daemon's caches) not yet flushed.
		for i := 0; i < 32; i++ {
			writeAt(t, filepath.Join(mnt, "vm.raw"), bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*1<<20+4096)
		}
		pid := daemonPID(t, mnt)
		q2OK(t, mnt, "suspend", mnt)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !waitUntil(10*time.Second, func() bool { return proc.Gone(pid) }) {
			t.Fatalf("daemon %d still alive after SIGKILL", pid)
		}
		qemuCheckClean(t, img)
		for i := 0; i < 32; i++ {
			out := run(t, "qemu-io", "-r", "-c", fmt.Sprintf("read -P %d %d 4096", i+1, int64(i)*1<<20+4096), img)
			if strings.Contains(out, "Pattern verification failed") {
				t.Fatalf("write %d lost: %s", i, out)
			}
		}
	})
}

// TestLiveSocketAccess: another user can neither reach root's control
// socket (mode 0600) nor, were the socket open to all, get the daemon to
// act (SO_PEERCRED).
func TestLiveSocketAccess(t *testing.T) {
	mnt, img := liveMount(t)
	t.Cleanup(func() {
		if suspendedState(mnt) {
			q2(mnt, "resume", mnt)
		}
	})
	u := newTestUser(t, "live")
	pub := publicTestDir(t)
	bin := filepath.Join(pub, "qcow2fs")
	b, err := os.ReadFile(qcow2fsBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	r := asUser(u, bin, "suspend", mnt)
	if r.Code == 0 || !strings.Contains(r.Stderr, "permission denied") {
		t.Fatalf("%s: suspend of root's mount: want permission denied, got %s", u, r)
	}
	sock := controlSocketOf(t, mnt)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("control socket %s: mode %v uid %d, want 0600 root", sock, st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
	}
	// The daemon checks the caller itself, too.
	chmod(t, sock, 0o666)
	r = asUser(u, bin, "suspend", mnt)
	if r.Code == 0 || !strings.Contains(r.Stderr, "neither root nor the owner") {
		t.Fatalf("%s: suspend through an open socket: want refused by the daemon, got %s", u, r)
	}
	if suspendedState(mnt) {
		t.Fatalf("another user suspended root's mount")
	}
	// Root may.
	q2OK(t, mnt, "suspend", mnt)
	q2OK(t, mnt, "resume", mnt)
	unmountQcow2fs(t, mnt, img)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("control socket %s after unmount: %v", sock, err)
	}
}

// controlSocketOf is the control socket of root's mount at mnt (next to
// its run-state file).
func controlSocketOf(t *testing.T, mnt string) string {
	t.Helper()
	js := runStateFile(t, mnt)
	return strings.TrimSuffix(js, ".json") + ".sock"
}

// TestLiveSuspendTimeout: suspend --timeout gives up while a request is
// still in flight (a read held up by a slow disk, injected): the mount is
// not suspended, the request completes, and a later suspend succeeds.
func TestLiveSuspendTimeout(t *testing.T) {
	requireEnv(t)
	bin := faultsBinary(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := k.Path("vm")
	qemuCreate(t, img, "16M", "", "", "")
	qemuIO(t, img, "write -P 0x77 0 64k")
	var runs []struct {
		Data   bool  `json:"data"`
		Offset int64 `json:"offset"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", img)), &runs); err != nil || len(runs) == 0 || !runs[0].Data {
		t.Fatalf("qemu-img map: %v %+v", err, runs)
	}
	t.Cleanup(func() {
		if suspendedState(mnt) {
			q2(mnt, "resume", mnt)
		}
		cleanupMount(t, mnt)
	})
	fault := fmt.Sprintf("QCOW2FS_FAULT_DELAY_READ=%s:%d:4s", img, runs[0].Offset)
	mark := filepath.Join(dir, "read-in-daemon")
	if r := boundedEnv(30*time.Second, []string{fault, "QCOW2FS_FAULT_DELAY_MARK=" + mark}, []string{mnt}, "", bin, "mount", img, mnt); r.Code != 0 {
		t.Fatalf("mount: %s", r)
	}
	raw := filepath.Join(mnt, "vm.raw")
	read := startBg(t, "", "dd", "if="+raw, "of=/dev/null", "bs=4096", "count=1", "iflag=direct", "status=none")
	if !waitUntil(3*time.Second, func() bool { _, err := os.Stat(mark); return err == nil }) {
		t.Fatalf("the delayed read never reached the daemon's image read")
	}
	start := time.Now()
	r := q2(mnt, "suspend", "--timeout", "1s", mnt)
	took := time.Since(start)
	if r.Code != 1 || !strings.Contains(r.Stderr, "in flight") {
		t.Fatalf("suspend --timeout 1s with a read in flight for 4s: want exit 1 saying so, got %s", r)
	}
	if took > 3*time.Second {
		t.Fatalf("suspend --timeout 1s took %v", took)
	}
	if suspendedState(mnt) {
		t.Fatal("the mount is suspended after a suspend that timed out")
	}
	if err := read.wait(t, 30*time.Second); err != nil {
		t.Fatalf("the read in flight failed: %v %s", err, read.stderr.String())
	}
	// Nothing in flight now: suspend and resume go through.
	q2OK(t, mnt, "suspend", "--timeout", "1s", mnt)
	q2OK(t, mnt, "resume", mnt)
	unmountQcow2fs(t, mnt, img)
	qemuCheckClean(t, img)
}
