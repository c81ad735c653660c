package qcow2

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// Power-cut consistency. A recording wrapper logs every write, punch and
// sync the mapper issues to the image file during a random workload. From
// that log we rebuild what the disk could hold if power failed right after
// any event: everything before the last sync, plus any subset of the later
// writes, each possibly torn at a 512-byte sector boundary. Every such image
// must pass `qemu-img check` (leaks allowed, no corruption) and read back
// every byte as of the last completed Flush, or as a later write left it.

type fileEvent struct {
	kind    byte // 'w' write, 's' sync, 'f' flush completed (guest), 'o' guest op starts
	off     int64
	data    []byte // 'w': bytes written (punch: zeros)
	opIndex int    // 'o', 'f': guest op index
}

type recordingFile struct {
	hostFile
	mu  sync.Mutex
	log *[]fileEvent
}

func (r *recordingFile) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	*r.log = append(*r.log, fileEvent{kind: 'w', off: off, data: append([]byte(nil), p...)})
	r.mu.Unlock()
	return r.hostFile.WriteAt(p, off)
}

func (r *recordingFile) PunchHole(off, n int64) error {
	r.mu.Lock()
	*r.log = append(*r.log, fileEvent{kind: 'w', off: off, data: make([]byte, n)})
	r.mu.Unlock()
	return r.hostFile.PunchHole(off, n)
}

func (r *recordingFile) Datasync() error {
	r.mu.Lock()
	*r.log = append(*r.log, fileEvent{kind: 's'})
	r.mu.Unlock()
	return r.hostFile.Datasync()
}

type guestOp struct {
	off  int64
	data []byte // nil: zeroes
	n    int64
}

func TestPowerCut(t *testing.T) {
	needQEMU(t)
	points := 700
	if v, err := strconv.Atoi(os.Getenv("POWERCUT_POINTS")); err == nil {
		points = v
	}
	for _, opts := range []string{"cluster_size=65536", "cluster_size=4096,refcount_bits=64", "cluster_size=65536,extended_l2=on"} {
		t.Run(opts, func(t *testing.T) { testPowerCut(t, opts, points) })
	}
}

func testPowerCut(t *testing.T, opts string, points int) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.qcow2")
	const size = 6 << 20
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size))
	initial, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var log []fileEvent
	rec := &recordingFile{log: &log}
	old := wrapHostFile
	wrapHostFile = func(p string, f hostFile) hostFile { rec.hostFile = f; return rec }
	im, err := Open(path, OpenOptions{})
	wrapHostFile = old
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(42))
	var ops []guestOp
	mark := func(kind byte, i int) {
		rec.mu.Lock()
		log = append(log, fileEvent{kind: kind, opIndex: i})
		rec.mu.Unlock()
	}
	for i := 0; i < 400; i++ {
		off := rng.Int63n(size)
		n := min(rng.Int63n(200<<10)+1, size-off)
		op := guestOp{off: off, n: n}
		k := rng.Intn(10)
		if k < 7 {
			op.data = make([]byte, n)
			rng.Read(op.data)
		}
		ops = append(ops, op)
		mark('o', i)
		switch {
		case k < 7:
			_, err = im.WriteAt(op.data, off)
		case k < 9:
			err = im.Discard(off, n)
		default:
			err = im.WriteZeroes(off, n)
		}
		if err != nil {
			t.Fatal(err)
		}
		if rng.Intn(12) == 0 {
			if err := im.Flush(); err != nil {
				t.Fatal(err)
			}
			mark('f', i)
		}
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	mark('f', len(ops)-1)

	// Replay: walk the log once, cutting at evenly spread events.
	durable := append([]byte(nil), initial...)
	var pending []fileEvent
	guest := make([]byte, size) // content as of the last completed Flush
	flushedOps := 0             // ops applied to guest
	startedOps := 0
	step := max(1, len(log)/points)
	crash := filepath.Join(dir, "crash.qcow2")
	tried := 0
	for i, ev := range log {
		switch ev.kind {
		case 'w':
			pending = append(pending, ev)
		case 's':
			for _, p := range pending {
				durable = applyWrite(durable, p.off, p.data)
			}
			pending = pending[:0]
		case 'o':
			startedOps = ev.opIndex + 1
		case 'f':
			for ; flushedOps <= ev.opIndex; flushedOps++ {
				applyGuest(guest, ops[flushedOps])
			}
		}
		if i%step != 0 && i != len(log)-1 {
			continue
		}
		tried++
		img := append([]byte(nil), durable...)
		for _, p := range pending {
			img = applyTorn(img, p, rng)
		}
		if err := os.WriteFile(crash, img, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("qemu-img", "check", crash).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
			t.Fatalf("cut after event %d/%d: qemu-img check: %v\n%.2000s", i, len(log), err, out)
		}
		verifyCrashContent(t, crash, guest, ops[flushedOps:startedOps], i)
	}
	t.Logf("%s: %d events, %d power-cut points checked", opts, len(log), tried)
}

func applyWrite(img []byte, off int64, data []byte) []byte {
	if end := off + int64(len(data)); end > int64(len(img)) {
		img = append(img, make([]byte, end-int64(len(img)))...)
	}
	copy(img[off:], data)
	return img
}

// applyTorn applies a random subset of a pending write's sectors.
func applyTorn(img []byte, ev fileEvent, rng *rand.Rand) []byte {
	switch rng.Intn(3) {
	case 0:
		return img // dropped
	case 1:
		return applyWrite(img, ev.off, ev.data)
	}
	for s := int64(0); s < int64(len(ev.data)); s += 512 {
		if rng.Intn(2) == 0 {
			img = applyWrite(img, ev.off+s, ev.data[s:min(s+512, int64(len(ev.data)))])
		}
	}
	return img
}

func applyGuest(guest []byte, op guestOp) {
	if op.data != nil {
		copy(guest[op.off:], op.data)
	} else {
		clear(guest[op.off : op.off+op.n])
	}
}

// verifyCrashContent: each byte equals the last flushed state or a value a
// later (unflushed) op may have left.
func verifyCrashContent(t *testing.T, path string, guest []byte, later []guestOp, event int) {
	t.Helper()
	im, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("cut after event %d: open: %v", event, err)
	}
	defer im.Close()
	got := make([]byte, len(guest))
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatalf("cut after event %d: read: %v", event, err)
	}
	for b := range got {
		if got[b] == guest[b] {
			continue
		}
		ok := false
		for _, op := range later {
			if int64(b) >= op.off && int64(b) < op.off+op.n {
				if op.data == nil && got[b] == 0 || op.data != nil && op.data[int64(b)-op.off] == got[b] {
					ok = true
					break
				}
			}
		}
		if !ok {
			t.Fatalf("cut after event %d: byte %#x = %#x, flushed %#x, and no later write explains it", event, b, got[b], guest[b])
		}
	}
}
