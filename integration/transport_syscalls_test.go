// The classic transport's cost per request, counted with strace: a 4 KiB
// read is answered with one writev, with no splice and no ioctl.

package integration

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestClassicReadSyscalls reads nReads 4 KiB blocks with O_DIRECT (each one
// FUSE READ) from a mount on the classic transport while strace counts the
// daemon's system calls. go-fuse, asked to splice, used to write every read
// reply's header into a pipe, find no descriptor to splice from, drain the
// pipe (splice + FIONREAD ioctl) and writev the reply again: three wasted
// calls per request. The daemon must answer a read with one writev.
func TestClassicReadSyscalls(t *testing.T) {
	requireTools(t, "strace", "dd", "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "s.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run(t, "qemu-io", "-c", "write -P 0x5a 0 16M", img)
	mnt := filepath.Join(dir, "mnt")
	mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, []string{"-o", "uring=off"}, img)
	pid := daemonPID(t, mnt)

	const nReads = 2000
	counts := straceCounts(t, pid, func() {
		run(t, "dd", "if="+filepath.Join(mnt, "s.raw"), "of=/dev/null", "bs=4k",
			"count="+strconv.Itoa(nReads), "iflag=direct", "status=none")
	})
	t.Logf("daemon system calls for %d reads: %v", nReads, counts)
	if counts["read"] < nReads {
		t.Fatalf("strace saw %d reads of /dev/fuse for %d FUSE READs: it did not watch the daemon", counts["read"], nReads)
	}
	if n := counts["splice"]; n > 0 {
		t.Errorf("%d splice calls for %d reads answered from memory, want 0", n, nReads)
	}
	if n := counts["ioctl"]; n > nReads/100 {
		t.Errorf("%d ioctl calls for %d reads, want none per request", n, nReads)
	}
	// One writev per reply; the few other requests (LOOKUP, OPEN, GETATTR,
	// FLUSH, RELEASE) add a handful.
	if n := counts["writev"]; n > nReads+nReads/20 {
		t.Errorf("%d writev calls for %d reads, want one per reply", n, nReads)
	}
}

// straceCounts runs work while `strace -c -f` watches pid, and returns the
// number of calls of each system call it saw.
func straceCounts(t *testing.T, pid int, work func()) map[string]int {
	t.Helper()
	out := filepath.Join(t.TempDir(), "strace.txt")
	cmd := exec.Command("strace", "-c", "-f", "-o", out, "-p", strconv.Itoa(pid))
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// strace says "Process N attached" on stderr once it has every thread.
	attached := make(chan struct{})
	var said strings.Builder
	saidDone := make(chan struct{})
	go func() {
		defer close(saidDone)
		sc := bufio.NewScanner(pipe)
		signalled := false
		for sc.Scan() {
			said.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "attached") {
				close(attached)
				signalled = true
			}
		}
	}()
	select {
	case <-attached:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		<-saidDone
		t.Fatalf("strace did not attach to %d: %s", pid, said.String())
	}
	work()
	cmd.Process.Signal(syscall.SIGINT)
	<-saidDone
	cmd.Wait()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("strace wrote no summary: %v (%s)", err, said.String())
	}
	// "% time  seconds  usecs/call  calls  errors  syscall", errors optional.
	counts := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || f[len(f)-1] == "total" {
			continue
		}
		if n, err := strconv.Atoi(f[3]); err == nil {
			counts[f[len(f)-1]] = n
		}
	}
	return counts
}

// TestPageCacheKeptAcrossOpens: what one opener brought into the page
// cache is read back from there by the next, even after the attributes
// were refreshed with the image file's new mtime (moved by a write
// elsewhere in the disk): the daemon sees no READ. Before, every open (no FOPEN_KEEP_CACHE) and every
// attribute refresh showing a moved mtime (FUSE_AUTO_INVAL_DATA; the mtime
// is the image file's, which each write moves) dropped the cache, so a
// loop device without direct I/O re-read everything through the daemon.
func TestPageCacheKeptAcrossOpens(t *testing.T) {
	requireTools(t, "strace", "dd", "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "c.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	mnt := filepath.Join(dir, "mnt")
	mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, nil, img)
	raw := filepath.Join(mnt, "c.raw")
	run(t, "dd", "if=/dev/urandom", "of="+raw, "bs=64k", "count=16", "conv=notrunc", "status=none")
	// The kernel may reclaim clean pages at any time, also with plenty of
	// memory free (proactive reclaim: DAMON_RECLAIM does so on our test
	// machines after a second or two of idleness), which no daemon can
	// prevent. Locked in memory through a mapping, they stay — unless the
	// file's cache is invalidated, which unmaps them: the very thing this
	// test is about. mlock also brings in any page the writes did not
	// leave cached.
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pinned, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(pinned)
	if err := unix.Mlock(pinned); err != nil {
		t.Fatalf("mlock 1 MiB of %s: %v", raw, err)
	}
	// A write elsewhere moves the image file's mtime; past the attribute
	// timeout (1 s) the next stat asks the daemon and sees it.
	run(t, "dd", "if=/dev/urandom", "of="+raw, "bs=64k", "count=1", "seek=512", "conv=notrunc", "status=none")
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(raw); err != nil {
		t.Fatal(err)
	}
	pid := daemonPID(t, mnt)
	counts := straceCounts(t, pid, func() {
		run(t, "dd", "if="+raw, "of=/dev/null", "bs=64k", "count=16", "status=none")
	})
	t.Logf("daemon system calls while re-reading 1 MiB read before: %v", counts)
	if n := counts["pread64"]; n > 0 {
		t.Errorf("the daemon read the image %d times for data the kernel had cached", n)
	}
}
