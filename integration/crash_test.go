// A crash test: the daemon is killed with SIGKILL during a write workload
// with fsyncs; qemu-img check must find no corruption and every record an
// fsync acknowledged must read back.

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// The crash workload writes numbered records, each at its own offset, and
// fsyncs after every few; it counts a record as durable only once an fsync
// covering it returned success.
const (
	recordSize      = 4096
	recordStride    = 68 << 10 // every record also starts a fresh 64 KiB cluster
	recordsPerFsync = 3
)

// record returns the content of record i: its number, then noise.
func record(seed int64, i int) []byte {
	b := make([]byte, recordSize)
	rand.New(rand.NewSource(seed + int64(i))).Read(b)
	copy(b, fmt.Sprintf("qcow2fs-record-%08d", i))
	binary.LittleEndian.PutUint64(b[32:], uint64(seed))
	return b
}

func recordOffset(i int, size int64) int64 {
	// Walk the disk with a stride, wrapping with a shift so no two records
	// overlap: records land in new clusters and new L2 tables alike.
	perLap := size / recordStride
	lap := int64(i) / perLap
	return (int64(i)%perLap)*recordStride + lap*recordSize
}

// TestCrashKill9 kills the daemon with SIGKILL in the middle of a write
// workload with fsyncs: qemu-img check must find no corruption (leaks are
// allowed) and every record an fsync acknowledged must read back.
func TestCrashKill9(t *testing.T) {
	requireEnv(t)
	cases := []struct{ name, opts string }{
		{"v3-64k", ""},
		{"v3-4k", "cluster_size=4096"},
		{"lazy-refcounts", "lazy_refcounts=on"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { runCrash(t, c.name, c.opts) })
	}
}

// crashRounds: the image is crashed this many times in a row; from the
// second round on, qcow2fs mounts read-write an image a crash left behind
// (dirty, with lazy refcounts) and must repair it before allocating.
const crashRounds = 3

func runCrash(t *testing.T, name, opts string) {
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := k.Path(name)
	const size = 256 << 20
	recordArea := int64(size / 2) // records in the first half, noise in the second
	qemuCreate(t, img, fmt.Sprint(size), opts, "", "")
	qemuIO(t, img, k.Scribble(64<<10, size)...) // some clusters already there
	seed := seedFor(t, "crash-"+name)
	rng := rand.New(rand.NewSource(seed))

	type span struct{ from, to int }
	var durableSpans []span // records known durable, round by round
	next := 0               // first record of the next round: offsets are never reused
	for round := 0; round < crashRounds; round++ {
		d := startForeground(t, mnt, nil, img)
		exposed := filepath.Join(mnt, name+".raw")
		f, err := os.OpenFile(exposed, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("round %d: open %s for writing: %v", round, exposed, err)
		}

		first := next
		var durable atomic.Int64   // records [first, durable) are covered by an fsync
		var attempted atomic.Int64 // the last record a write was started for
		durable.Store(int64(first))
		attempted.Store(int64(first))
		writerDone := make(chan error, 2)
		go func() {
			for i := first; ; i++ {
				attempted.Store(int64(i))
				if _, err := f.WriteAt(record(seed, i), recordOffset(i, recordArea)); err != nil {
					writerDone <- fmt.Errorf("write record %d: %w", i, err)
					return
				}
				if (i+1-first)%recordsPerFsync == 0 {
					if err := f.Sync(); err != nil {
						writerDone <- fmt.Errorf("fsync after record %d: %w", i, err)
						return
					}
					durable.Store(int64(i + 1))
				}
			}
		}()
		// Noise: unsynced writes, discards and zero-ranges in the other
		// half, so allocation and freeing are both under way at the kill.
		noiseSeed := rng.Int63()
		go func() {
			r := rand.New(rand.NewSource(noiseSeed))
			for {
				o := op{Kind: opKind(r.Intn(3)), Off: recordArea + r.Int63n(size-recordArea-(256<<10)), N: 1 + r.Int63n(256<<10), Seed: r.Int63()}
				if err := applyOp(f, discardWriter{}, o); err != nil {
					writerDone <- fmt.Errorf("noise %s: %w", o, err)
					return
				}
			}
		}()

		// Let the workload get going, then kill at a random moment.
		deadline := time.Now().Add(60 * time.Second)
		target := int64(first + 100 + rng.Intn(200))
		for durable.Load() < target {
			select {
			case err := <-writerDone:
				t.Fatalf("round %d: the workload stopped before the kill: %v\ndaemon log:\n%s", round, err, d.log())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: only %d records durable after 60s", round, durable.Load()-int64(first))
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.Intn(20)) * time.Millisecond)
		if err := d.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			select {
			case err := <-writerDone:
				t.Logf("round %d: workload ended by the kill: %v", round, err)
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: the workload still runs 30s after the daemon (pid %d) was killed: is it the FUSE server?", round, d.Cmd.Process.Pid)
			}
		}
		f.Close()
		durableSpans = append(durableSpans, span{first, int(durable.Load())})
		next = int(attempted.Load()) + 1
		t.Logf("round %d: records %d..%d durable when the daemon died", round, first, durable.Load()-1)
		for i := 0; i < 100 && !d.exited(); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		run(t, "fusermount3", "-u", "-z", mnt)
		if h := mounts.OpenUnder(k.Dir); len(h) > 0 {
			t.Fatalf("round %d: image still open after the daemon was killed: %s", round, strings.Join(h, "; "))
		}

		// Check a copy: repairing it must not spare qcow2fs the repair of
		// the original in the next round.
		checkCopy := filepath.Join(dir, "check.qcow2")
		run(t, "cp", "--sparse=always", img, checkCopy)
		assertNoCorruption(t, checkCopy)
		_ = os.Remove(checkCopy)

		// Every durable record so far reads back as QEMU sees the image.
		out := filepath.Join(dir, "after.raw")
		qemuToRaw(t, img, "", out)
		for _, sp := range durableSpans {
			verifyRecords(t, fmt.Sprintf("round %d, qemu-img convert", round), out, seed, sp.from, sp.to, recordArea)
		}
		_ = os.Remove(out)
		if t.Failed() {
			return
		}
	}

	// ... and as a fresh qcow2fs mount sees it.
	mountQcow2fs(t, mnt, []string{"--ro"}, img)
	for _, sp := range durableSpans {
		verifyRecords(t, "qcow2fs remount", filepath.Join(mnt, name+".raw"), seed, sp.from, sp.to, recordArea)
	}
	unmountQcow2fs(t, mnt, k.Dir)
}

// discardWriter stands in for the reference file where none is kept.
type discardWriter struct{}

func (discardWriter) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (discardWriter) ReadAt(p []byte, off int64) (int, error)  { return len(p), nil }

// refcountErrorRe matches the errors qemu-img check reports for refcounts
// that lag behind, which lazy refcounts allow while the dirty bit is set.
var refcountErrorRe = regexp.MustCompile(`^ERROR (cluster \d+ refcount=\d+ reference=\d+|OFLAG_COPIED (data|L2) cluster: .*refcount=\d+)$`)

// assertNoCorruption: qemu-img check exits 0 (clean) or 3 (leaks only). An
// image with the dirty bit (lazy refcounts) may have stale refcounts, and
// nothing else: then repairing must leave it clean.
func assertNoCorruption(t *testing.T, img string) {
	t.Helper()
	r := execute("", "qemu-img", "check", img)
	switch {
	case r.Code == 0:
		t.Logf("qemu-img check: clean")
	case r.Code == 3:
		t.Logf("qemu-img check: leaks only: %s", lastLines(r.Stdout, 3))
	case r.Code == 2 && qemuInfo(t, img).Dirty:
		for _, line := range strings.Split(r.Stdout+r.Stderr, "\n") {
			if strings.HasPrefix(line, "ERROR") && !refcountErrorRe.MatchString(line) {
				t.Fatalf("dirty image has an error beyond lagging refcounts: %q\n%s", line, r)
			}
		}
		t.Logf("dirty image: only stale refcounts, repairing")
		run(t, "qemu-img", "check", "-q", "-r", "all", img)
		qemuCheckClean(t, img)
	default:
		t.Fatalf("qemu-img check after the crash: %s", r)
	}
}

// verifyRecords checks records [from, to) in file.
func verifyRecords(t *testing.T, how, file string, seed int64, from, to int, size int64) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, recordSize)
	bad := 0
	for i := from; i < to; i++ {
		off := recordOffset(i, size)
		if _, err := f.ReadAt(got, off); err != nil {
			t.Fatalf("%s: read record %d at %d: %v", how, i, off, err)
		}
		if !bytes.Equal(got, record(seed, i)) {
			if bad++; bad <= 5 {
				t.Errorf("%s: fsync'd record %d at offset %d lost: reads %q...", how, i, off, got[:24])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d fsync'd records lost", how, bad, to-from)
	}
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, " | ")
}
