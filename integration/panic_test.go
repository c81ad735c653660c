// Tests that a panic in a request (injected under the metadata lock) costs
// that request and image, never the mount: EIO at once, other images
// serving, a clean unmount.

package integration

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

var (
	faultsBinOnce sync.Once
	faultsBin     string
	faultsBinErr  error
)

// faultsBinary builds qcow2fs with the test-only fault injection of
// qcow2/faults_hook.go (-tags qcow2fs_faults), once per run; QCOW2FS_FAULTS_BIN
// names a prebuilt one instead.
func faultsBinary(t *testing.T) string {
	t.Helper()
	faultsBinOnce.Do(func() {
		if bin := os.Getenv("QCOW2FS_FAULTS_BIN"); bin != "" {
			faultsBin = bin
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		faultsBin = filepath.Join(testRoot, "qcow2fs-faults")
		cmd := exec.Command(goTool, "build", "-tags", "qcow2fs_faults", "-o", faultsBin, "../cmd/qcow2fs")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			faultsBinErr = fmt.Errorf("build qcow2fs with fault injection: %v\n%s", err, b)
		}
	})
	if faultsBinErr != nil {
		t.Fatal(faultsBinErr)
	}
	return faultsBin
}

// firstL2Offset returns the host offset of the L2 table that maps guest
// offset 0 of a qcow2 image (which must have one).
func firstL2Offset(t *testing.T, img string) int64 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 40); err != nil { // l1_table_offset
		t.Fatal(err)
	}
	l1 := int64(binary.BigEndian.Uint64(b[:]))
	if _, err := f.ReadAt(b[:], l1); err != nil {
		t.Fatal(err)
	}
	l2 := int64(binary.BigEndian.Uint64(b[:]) & 0x00fffffffffffe00)
	if l2 == 0 {
		t.Fatalf("%s: no L2 table for guest offset 0", img)
	}
	return l2
}

// TestPanicKeepsServing: a panic in a request (injected while the image's
// metadata lock is held, as a bug tripped by a hostile image would) costs
// that request (EIO) and that image, never the mount. Later requests on
// any file of the image fail with EIO at once instead of waiting for ever
// on the lock; the other images keep serving; the panic is logged with the
// image and its stack; the mount unmounts and the daemon exits, releasing
// every image.
func TestPanicKeepsServing(t *testing.T) {
	requireEnv(t)
	bin := faultsBinary(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	a, b, c := k.Path("a"), k.Path("b"), k.Path("c")
	for _, p := range []string{a, b, c} {
		qemuCreate(t, p, "4M", "", "", "")
		qemuIO(t, p, k.Rand(0, 256<<10))
	}
	run(t, "qemu-img", "snapshot", "-c", "S", a)
	qemuIO(t, a, k.Rand(64<<10, 64<<10)) // the active image gets its own L2 table
	wantB := qemuRawOf(t, b, filepath.Join(dir, "b.raw"))
	// a panics on its first read, c on its first write (both look their
	// L2 table up under the metadata lock).
	fault := fmt.Sprintf("%s:%d;%s:%d", a, firstL2Offset(t, a), c, firstL2Offset(t, c))
	mnt := mkdir(t, dir, "mnt")
	logFile := filepath.Join(dir, "daemon.log")
	t.Cleanup(func() { cleanupMount(t, mnt) })
	mnts := []string{mnt}
	const limit = 10 * time.Second

	r := boundedEnv(30*time.Second, []string{"QCOW2FS_FAULT_PANIC_READ=" + fault}, mnts, "",
		bin, "mount", "--log", logFile, a, b, c, mnt)
	if r.Code != 0 {
		t.Fatalf("mount: %s", r)
	}
	p := func(name string) string { return filepath.Join(mnt, name) }
	eio := func(what string, r result) {
		t.Helper()
		if r.Code <= 0 || !strings.Contains(r.Stderr, "Input/output error") {
			t.Errorf("%s: %s\nwant a prompt failure with EIO", what, r)
		}
	}

	eio("the read that panics", bounded(limit, mnts, "", "dd", "if="+p("a.raw"), "of=/dev/null", "bs=64k", "count=1", "iflag=direct"))
	eio("a second read of the image", bounded(limit, mnts, "", "dd", "if="+p("a.raw"), "of=/dev/null", "bs=64k", "count=1", "iflag=direct"))
	eio("a read of its snapshot", bounded(limit, mnts, "", "dd", "if="+p("a@S.raw"), "of=/dev/null", "bs=64k", "count=1", "iflag=direct"))
	eio("its info file", bounded(limit, mnts, "", "cat", p("a.info")))
	eio("the write that panics", bounded(limit, mnts, "", "dd", "if=/dev/zero", "of="+p("c.raw"), "bs=64k", "count=1", "oflag=direct", "conv=notrunc"))
	eio("a second write", bounded(limit, mnts, "", "dd", "if=/dev/zero", "of="+p("c.raw"), "bs=64k", "count=1", "oflag=direct", "conv=notrunc,fsync"))
	// stat does not need the image's lock and still works.
	if got := strings.TrimSpace(mustBounded(t, limit, mnts, "", "stat", "-c", "%s", p("a.raw"))); got != "4194304" {
		t.Errorf("stat of the failed image's file: size %s", got)
	}

	// The other image serves: reads, and a write made durable.
	mustBounded(t, limit, mnts, "", "cmp", p("b.raw"), wantB)
	payload := writeTemp(t, dir, []byte(strings.Repeat("after the panic ", 4096)))
	mustBounded(t, limit, mnts, "", "dd", "if="+payload, "of="+p("b.raw"), "bs=4k", "seek=100", "conv=notrunc,fsync", "status=none")
	mustBounded(t, limit, mnts, "", "dd", "if="+payload, "of="+wantB, "bs=4k", "seek=100", "conv=notrunc", "status=none")
	mustBounded(t, limit, mnts, "", "cmp", p("b.raw"), wantB)
	if st := mustBounded(t, limit, mnts, "", qcow2fsBin, "status"); !strings.Contains(st, mnt) || !strings.Contains(st, "serving") {
		t.Errorf("status does not show the mount serving:\n%s", st)
	}

	log := readFile(logFile)
	for _, want := range []string{"panic in read of a.raw", "panic in write of c.raw", "fault injection", "out of service", "goroutine"} {
		if !strings.Contains(log, want) {
			t.Errorf("daemon log lacks %q:\n%s", want, log)
		}
	}

	mustBounded(t, 30*time.Second, mnts, "", qcow2fsBin, "unmount", mnt)
	if _, ok := mounts.Find(mnt); ok {
		t.Fatalf("%s still mounted", mnt)
	}
	if h := mounts.OpenUnder(a, b, c); len(h) > 0 {
		t.Errorf("images still open after unmount: %s", strings.Join(h, "; "))
	}
	for _, img := range []string{a, b, c} {
		qemuCheckClean(t, img)
	}
	qemuCompareRaw(t, wantB, b)
	if log := readFile(logFile); !strings.Contains(log, "a.qcow2: not flushed or closed") {
		t.Errorf("the daemon's log does not say the failed image was left alone:\n%s", log)
	}
}
