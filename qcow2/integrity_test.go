// Regression tests for three ways an acknowledged write used to be lost.

package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMappingNeverBeforeData: a mapping change that touches no refcount —
// a new subcluster inside an allocated extended-L2 cluster over a backing
// file, a write into a preallocated zero cluster — must not reach the disk
// before the data it exposes. Every subset of the writes pending at every
// cut point is tried.
func TestMappingNeverBeforeData(t *testing.T) {
	needQEMU(t)
	type step struct {
		off   int64
		n     int64
		flush bool
	}
	cases := []struct {
		name  string
		cfg   crashConfig
		prep  []string // qemu-io commands before the workload
		steps []step
	}{
		{
			name: "extl2-subcluster-over-backing",
			cfg:  crashConfig{opts: "cluster_size=65536,extended_l2=on", backing: true, size: 1 << 20},
			steps: []step{
				{off: 2<<16 + 100, n: 1000, flush: true},  // allocates the cluster, subcluster 0
				{off: 2<<16 + 2048, n: 700, flush: true},  // subcluster 1: no refcount change
				{off: 2<<16 + 9000, n: 3000, flush: true}, // subclusters 4 and 5
			},
		},
		{
			name: "preallocated-zero-cluster",
			cfg:  crashConfig{opts: "cluster_size=65536", size: 1 << 20},
			// Data, then zeroes that keep the allocation (QEMU sets the
			// zero flag and keeps the host cluster with its old bytes).
			prep: []string{"write -P 0xaa 0 512k", "write -z 0 512k"},
			steps: []step{
				{off: 65536 + 512, n: 4096, flush: true},
				{off: 3*65536 + 100, n: 200, flush: true},
			},
		},
		{
			name:  "extl2-preallocated-zero-subclusters",
			cfg:   crashConfig{opts: "cluster_size=65536,extended_l2=on", size: 1 << 20},
			prep:  []string{"write -P 0xaa 0 512k", "write -z 0 512k"},
			steps: []step{{off: 65536 + 512, n: 4096, flush: true}, {off: 65536 + 20000, n: 3000, flush: true}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.name = tc.name
			r := setupCrashImage(t, cfg)
			for _, c := range tc.prep {
				wrun(t, "qemu-io", "-c", c, filepath.Join(r.dir, r.names[0]))
			}
			if len(tc.prep) > 0 {
				r.reload(t)
			}
			log := &crashLog{}
			im := r.openRecorded(t, log)
			var seq int64
			for i, s := range tc.steps {
				data := bytes.Repeat([]byte{byte(0x10 + i)}, int(s.n))
				log.add(fileEvent{kind: 'o', op: i})
				r.ops = append(r.ops, guestOp{off: s.off, n: s.n, data: data})
				if _, err := im.WriteAt(data, s.off); err != nil {
					t.Fatal(err)
				}
				seq++
				r.ops[i].done = seq
				if s.flush {
					seq++
					start := seq
					if err := im.Flush(); err != nil {
						t.Fatal(err)
					}
					log.add(fileEvent{kind: 'F', seq: start})
				}
			}
			if err := im.Close(); err != nil {
				t.Fatal(err)
			}
			r.events = log.events
			r.exhaust = true
			if n := r.judgeAll(t, len(r.events)); n < len(r.events) {
				t.Fatalf("only %d crash images for %d events", n, len(r.events))
			}
		})
	}
}

// reload re-reads the image file and guest content after preparation.
func (r *crashRun) reload(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, r.names[0]))
	if err != nil {
		t.Fatal(err)
	}
	r.initial[0] = b
	r.guest0 = qemuRaw(t, filepath.Join(r.dir, r.names[0]))
}

// TestDataFileSyncedBeforeMapping: with an external data file, the data
// file is synced before any L2 slice that maps its new data is written,
// also when a tiny cache evicts dirty slices between flushes.
func TestDataFileSyncedBeforeMapping(t *testing.T) {
	needQEMU(t)
	r := setupCrashImage(t, crashConfig{name: "datafile", opts: "cluster_size=4096", dataFile: true, cache: 8 << 10, size: 64 << 20})
	log := &crashLog{}
	im := r.openRecorded(t, log)
	// One new cluster per L2 slice (512 entries of 8 bytes map 2 MiB):
	// every write dirties a different slice, so the 2-slice cache evicts.
	for i := int64(0); i < 20; i++ {
		if _, err := im.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), i*(2<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	// Single writer, every data write allocates: each L2 write must
	// follow a data-file sync that follows every earlier data write.
	ro, err := Open(filepath.Join(r.dir, r.names[0]), OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	l2Tables := map[int64]bool{}
	for _, e := range ro.l1 {
		if off := int64(e & l1EntryOffsetMask); off != 0 {
			l2Tables[off] = true
		}
	}
	ro.Close()
	unsynced := 0
	l2Writes := 0
	for i, ev := range log.events {
		switch {
		case ev.kind == 'w' && ev.file == 1:
			unsynced++
		case ev.kind == 's' && ev.file == 1:
			unsynced = 0
		case ev.kind == 'w' && ev.file == 0 && l2Tables[ev.off&^4095]:
			l2Writes++
			if unsynced > 0 {
				t.Fatalf("event %d: L2 table written at %#x with %d data-file writes not yet synced", i, ev.off, unsynced)
			}
		}
	}
	if l2Writes < 20 {
		t.Fatalf("only %d L2 writes: the cache did not evict as planned", l2Writes)
	}
}

// TestFlushAfterCorruption: a write acknowledged before the image was found
// corrupt (by a read of a damaged L2 entry) is made durable by the next
// Flush, which reports success only then; or the flush fails for good.
func TestFlushAfterCorruption(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, "16M")
	wrun(t, "qemu-io", "-c", "write -P 0x11 0 128k", path)
	damageL2Entry(t, path, 1)

	log := &crashLog{}
	initial, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old := wrapHostFile
	wrapHostFile = func(_ string, f hostFile) hostFile { return &recordingFile{hostFile: f, log: log} }
	im, err := Open(path, OpenOptions{})
	wrapHostFile = old
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x77}, 64<<10)
	if _, err := im.WriteAt(data, 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ReadAt(make([]byte, 4096), 65536); err == nil {
		t.Fatal("read of the damaged cluster succeeded")
	}
	ferr := im.Flush()
	if ferr != nil {
		// Allowed only if it keeps failing.
		for i := 0; i < 3; i++ {
			if err := im.Flush(); err == nil {
				t.Fatalf("flush failed (%v) and then reported success", ferr)
			}
		}
		im.Close()
		return
	}
	// Flush said the write is durable: a power cut now must keep it.
	crash := filepath.Join(dir, "crash.qcow2")
	if err := os.WriteFile(crash, durableState(initial, log.events, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	im.Close()
	ro, err := Open(crash, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	got := make([]byte, len(data))
	if _, err := ro.ReadAt(got, 8<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("flush returned success on a corrupt image but the write is gone (reads %#x)", got[0])
	}
	out, err := exec.Command("qemu-io", "-r", "-c", fmt.Sprintf("read -P 0x77 %d %d", 8<<20, len(data)), crash).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "read 65536/65536") || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("QEMU does not read the flushed write back: %v\n%s", err, out)
	}
}

// damageL2Entry makes the L2 entry of guest cluster c (in the first L2
// table) point at an unaligned host offset.
func damageL2Entry(t *testing.T, path string, c int64) {
	t.Helper()
	im, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	l2 := int64(im.l1[0] & l1EntryOffsetMask)
	im.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var e [8]byte
	if _, err := f.ReadAt(e[:], l2+8*c); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint64(e[:], binary.BigEndian.Uint64(e[:])+512)
	if _, err := f.WriteAt(e[:], l2+8*c); err != nil {
		t.Fatal(err)
	}
}

// durableState is what file f holds after a power cut at the end of the
// log: its initial content plus every write followed by a sync.
func durableState(initial []byte, events []fileEvent, f int) []byte {
	img := append([]byte(nil), initial...)
	var pending []fileEvent
	for _, ev := range events {
		if ev.file != f {
			continue
		}
		switch ev.kind {
		case 'w', 't':
			pending = append(pending, ev)
		case 's':
			for _, p := range pending {
				img = applyEvent(img, p)
			}
			pending = pending[:0]
		}
	}
	return img
}

// syncFailFile fails Datasync while armed.
type syncFailFile struct {
	hostFile
	mu    sync.Mutex
	armed int
}

func (f *syncFailFile) Datasync() error {
	f.mu.Lock()
	fail := f.armed > 0
	if fail {
		f.armed--
	}
	f.mu.Unlock()
	if fail {
		return &os.PathError{Op: "fdatasync", Path: "injected", Err: syscall.EIO}
	}
	return f.hostFile.Datasync()
}

// TestFlushErrorIsSticky: after an fdatasync fails, nobody knows what
// reached the disk, so every later Flush fails too (errseq-style), even when
// the syncs work again; a failed metadata write, by contrast, is retried and
// the flush succeeds once everything is durable.
func TestFlushErrorIsSticky(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "s.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
	sf := &syncFailFile{}
	old := wrapHostFile
	wrapHostFile = func(_ string, f hostFile) hostFile { sf.hostFile = f; return sf }
	im, err := Open(path, OpenOptions{})
	wrapHostFile = old
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if _, err := im.WriteAt(bytes.Repeat([]byte{1}, 4096), 1<<20); err != nil {
		t.Fatal(err)
	}
	sf.mu.Lock()
	sf.armed = 1
	sf.mu.Unlock()
	if err := im.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush with a failing fdatasync: %v, want EIO", err)
	}
	for i := 0; i < 3; i++ {
		if err := im.Flush(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("flush %d after a failed fdatasync: %v, want EIO again", i, err)
		}
	}
	// Later writes still work; their flushes still report the loss.
	if _, err := im.WriteAt(bytes.Repeat([]byte{2}, 4096), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := im.Flush(); err == nil {
		t.Fatal("flush reported success after an earlier fdatasync failure")
	}
	if err := im.Close(); err == nil {
		t.Fatal("close reported success after an fdatasync failure")
	}
}

// gate holds the first I/O that touches [from, to) until released.
type gate struct {
	mu       sync.Mutex
	from, to int64
	armed    bool
	hit      chan struct{}
	release  chan struct{}
}

func newGate(from, to int64) *gate {
	return &gate{from: from, to: to, armed: true, hit: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) wait(off, n int64) {
	if g == nil {
		return
	}
	g.mu.Lock()
	stop := g.armed && off < g.to && off+n > g.from
	if stop {
		g.armed = false
	}
	g.mu.Unlock()
	if stop {
		close(g.hit)
		<-g.release
	}
}

// gateFile holds a write before it happens, and a read after it happened
// (the reader holds what it read while others go on).
type gateFile struct {
	hostFile
	mu     sync.Mutex
	rd, wr *gate
}

func (f *gateFile) gates() (*gate, *gate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rd, f.wr
}

func (f *gateFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.hostFile.ReadAt(p, off)
	rd, _ := f.gates()
	rd.wait(off, int64(len(p)))
	return n, err
}

func (f *gateFile) WriteAt(p []byte, off int64) (int, error) {
	_, wr := f.gates()
	wr.wait(off, int64(len(p)))
	return f.hostFile.WriteAt(p, off)
}

// TestInPlaceWriteNotLostToMerge: writer A overwrites 512 bytes of the
// allocated subcluster 0 of an extended-L2 cluster in place; writer B writes
// 1024..3071, which merges subcluster 0 (reads its old bytes, writes them
// back) and allocates subcluster 1. A's pwrite is held until B has started.
// Whatever the timing, A's bytes must survive: B must never rewrite bytes it
// did not write with a stale copy.
func TestInPlaceWriteNotLostToMerge(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	path := filepath.Join(dir, "m.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	wrun(t, "qemu-io", "-c", "write -P 0x5a 0 1M", base)
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536,extended_l2=on", "-b", base, "-F", "qcow2", path)
	gf := &gateFile{}
	old := wrapHostFile
	wrapHostFile = func(p string, f hostFile) hostFile {
		if p == path {
			gf.hostFile = f
			return gf
		}
		return f
	}
	im, err := Open(path, OpenOptions{})
	wrapHostFile = old
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	// Subcluster 0 of guest cluster 0 allocated.
	if _, err := im.WriteAt(bytes.Repeat([]byte{0x01}, 2048), 0); err != nil {
		t.Fatal(err)
	}
	ext, err := im.Map(0, 2048)
	if err != nil || len(ext) == 0 || ext[0].HostOffset <= 0 {
		t.Fatalf("map: %v %+v", err, ext)
	}
	host := ext[0].HostOffset
	wg, rg := newGate(host, host+512), newGate(host, host+1024)
	gf.mu.Lock()
	gf.rd, gf.wr = rg, wg
	gf.mu.Unlock()

	aData := bytes.Repeat([]byte{0xaa}, 512)
	bData := bytes.Repeat([]byte{0xbb}, 2048)
	aDone := make(chan error, 1)
	go func() { _, err := im.WriteAt(aData, 0); aDone <- err }()
	select {
	case <-wg.hit: // A decided to write in place; its pwrite is held
	case <-time.After(10 * time.Second):
		t.Fatal("writer A never wrote")
	}
	bDone := make(chan error, 1)
	go func() { _, err := im.WriteAt(bData, 1024); bDone <- err }()
	select {
	case <-rg.hit:
		// B read subcluster 0 while A's write was in flight (the old
		// code): let A land now, between B's read and B's write.
		close(wg.release)
		if err := <-aDone; err != nil {
			t.Fatal(err)
		}
		close(rg.release)
	case <-time.After(300 * time.Millisecond):
		// B waits for the in-place write to finish: let it.
		close(wg.release)
		if err := <-aDone; err != nil {
			t.Fatal(err)
		}
		<-rg.hit
		close(rg.release)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte(nil), aData...), bytes.Repeat([]byte{0x01}, 512)...), bData...)
	want = append(want, bytes.Repeat([]byte{0x5a}, 1024)...)
	if d := diffAt(got, want); d != "" {
		t.Fatalf("after A (in place) raced B (merge): %s", d)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if d := diffAt(qemuRaw(t, path)[:4096], want); d != "" {
		t.Fatal(fmt.Sprint("read by QEMU: ", d))
	}
}
