// Power-cut consistency. A recording wrapper logs every write, punch and
// sync the mapper issues to the image file (and to an external data file)
// during a random workload of one or more concurrent writers. From that log
// we rebuild what the disks could hold if power failed right after any
// event: everything before each file's last sync, plus any subset of the
// later writes, each possibly torn at a 512-byte sector boundary. Every such
// image must pass `qemu-img check` (leaks allowed, no corruption), and read
// back — through QEMU (`qemu-img convert`) and through our own reader —
// every byte as of the last completed Flush, or as a write started since
// left it.
//
// Writers own disjoint stripes of the disk (stripe j belongs to writer
// j mod writers), so every byte has one writer and a clear history, while
// stripes narrower than a cluster (or subcluster) make writers collide
// inside the same clusters, L2 slices and refcount blocks.
// This file is long because the recorder, the power-cut image generator and
// its judge only make sense together.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fileEvent is one entry of the log.
type fileEvent struct {
	kind byte // 'w' write (punch: zeros), 't' truncate to off, 's' sync, 'o' guest op starts, 'F' flush completed
	file int  // 'w', 's': 0 image, 1 external data file
	off  int64
	data []byte
	op   int   // 'o': op index
	seq  int64 // 'F': sequence number taken when the flush started
}

type crashLog struct {
	mu     sync.Mutex
	events []fileEvent
}

func (l *crashLog) add(ev fileEvent) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

type recordingFile struct {
	hostFile
	file int
	log  *crashLog
}

func (r *recordingFile) WriteAt(p []byte, off int64) (int, error) {
	r.log.add(fileEvent{kind: 'w', file: r.file, off: off, data: append([]byte(nil), p...)})
	return r.hostFile.WriteAt(p, off)
}

func (r *recordingFile) PunchHole(off, n int64) error {
	r.log.add(fileEvent{kind: 'w', file: r.file, off: off, data: make([]byte, n)})
	return r.hostFile.PunchHole(off, n)
}

func (r *recordingFile) Truncate(size int64) error {
	r.log.add(fileEvent{kind: 't', file: r.file, off: size})
	return r.hostFile.Truncate(size)
}

func (r *recordingFile) Datasync() error {
	r.log.add(fileEvent{kind: 's', file: r.file})
	return r.hostFile.Datasync()
}

// guestOp is one write, write-zeroes or discard of the workload.
type guestOp struct {
	off  int64
	data []byte // nil: reads back as zeros (write-zeroes, discard)
	n    int64
	done int64 // sequence number taken when it completed
}

// crashConfig describes one power-cut scenario.
type crashConfig struct {
	name    string
	opts    string // qemu-img create -o
	backing bool   // a qcow2 backing file full of a pattern
	// initial is the content before the workload: "", "data",
	// "compressed", "snapshot" (data shared with an internal snapshot) or
	// "stalezero" (clusters zeroed by QEMU, which keeps them allocated
	// with their old bytes, as preallocated zero clusters) or "bitmap"
	// (data and two persistent dirty bitmaps, one enabled).
	initial  string
	dataFile bool  // external data file
	cache    int64 // L2 cache bytes (0: default)
	writers  int
	stripe   int64 // bytes per stripe (writers > 1)
	ops      int   // per writer
	maxLen   int64 // longest op (writers == 1)
	size     int64
	// compressOps: some ops (writers == 1) write whole clusters with
	// WriteCompressed (backup -c's path).
	compressOps bool
	// runOps: some ops (writers == 1) write runs of whole clusters with
	// writeRun (convert's path: contiguous allocation, one pwrite a run).
	runOps bool
}

// crashConfigs are the shapes the model covers; each is a place where an
// ordering bug would hide.
func crashConfigs() []crashConfig {
	return []crashConfig{
		{name: "plain64k", opts: "cluster_size=65536", writers: 1, ops: 300, maxLen: 200 << 10},
		{name: "4k-refcount64-2w", opts: "cluster_size=4096,refcount_bits=64", writers: 2, stripe: 3 << 10, ops: 200},
		{name: "extl2-backing-3w", opts: "cluster_size=65536,extended_l2=on", backing: true, writers: 3, stripe: 1536, ops: 150},
		{name: "extl2-nobacking", opts: "cluster_size=65536,extended_l2=on", writers: 1, ops: 300, maxLen: 96 << 10},
		{name: "prealloc-zero-2w", opts: "cluster_size=65536,preallocation=metadata", initial: "stalezero", writers: 2, stripe: 5 << 10, ops: 200},
		{name: "compressed-2w", opts: "cluster_size=65536", initial: "compressed", writers: 2, stripe: 7 << 10, ops: 200},
		{name: "snapshot-shared-2w", opts: "cluster_size=16384", initial: "snapshot", writers: 2, stripe: 3 << 10, ops: 200},
		{name: "datafile-tiny-cache-2w", opts: "cluster_size=4096", dataFile: true, initial: "data", cache: 8 << 10, writers: 2, stripe: 6 << 10, ops: 200, size: 8 << 20},
		{name: "tiny-cache-extl2-backing-4w", opts: "cluster_size=16384,extended_l2=on", backing: true, cache: 8 << 10, writers: 4, stripe: 2560, ops: 120, size: 12 << 20},
		{name: "bitmap-2w", opts: "cluster_size=65536", initial: "bitmap", writers: 2, stripe: 5 << 10, ops: 200},
		{name: "compressed-writes", opts: "cluster_size=16384", initial: "data", compressOps: true, writers: 1, ops: 300, maxLen: 40 << 10},
		{name: "v2-backing", opts: "compat=0.10,cluster_size=4096", backing: true, writers: 1, ops: 300, maxLen: 40 << 10},
		{name: "write-runs-extl2-tiny-cache", opts: "cluster_size=16384,extended_l2=on", initial: "data", cache: 8 << 10, runOps: true, writers: 1, ops: 300, maxLen: 40 << 10},
	}
}

// TestPowerCut runs every configuration. POWERCUT_POINTS sets the crash
// images per configuration (make crash raises it).
func TestPowerCut(t *testing.T) {
	needQEMU(t)
	points := 1000
	if v, err := strconv.Atoi(os.Getenv("POWERCUT_POINTS")); err == nil && v > 0 {
		points = v
	}
	var total, configs atomic.Int64
	for _, cfg := range crashConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			total.Add(int64(runPowerCut(t, cfg, points)))
			configs.Add(1)
		})
	}
	t.Logf("power-cut: %d crash images checked across %d configurations", total.Load(), configs.Load())
}

// crashRun is a recorded workload and everything needed to judge its
// crash images.
type crashRun struct {
	cfg      crashConfig
	dir      string
	names    [2]string // image, data file (relative names in each work dir)
	initial  [2][]byte // file contents before the workload
	guest0   []byte    // guest content before the workload
	events   []fileEvent
	ops      []guestOp
	exhaust  bool // enumerate every subset of pending writes (small logs)
	maxPends int
}

func setupCrashImage(t *testing.T, cfg crashConfig) *crashRun {
	t.Helper()
	if cfg.size == 0 {
		cfg.size = 2 << 20
	}
	dir := crashTempDir(t)
	r := &crashRun{cfg: cfg, dir: dir, names: [2]string{"p.qcow2", "p.data"}}
	mk := func(args ...string) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	opts := cfg.opts
	if cfg.dataFile {
		opts += ",data_file=p.data"
	}
	size := fmt.Sprint(cfg.size)
	if cfg.backing {
		mk("qemu-img", "create", "-q", "-f", "qcow2", "-o", strings.Replace(cfg.opts, "preallocation=metadata", "", 1), "base.qcow2", size)
		mk("qemu-io", "-c", "write -P 0x5a 0 "+size, "base.qcow2")
		mk("qemu-io", "-c", fmt.Sprintf("write -P 0xa5 %d %d", cfg.size/3, cfg.size/5), "base.qcow2")
		opts += ",backing_file=base.qcow2,backing_fmt=qcow2"
	}
	switch cfg.initial {
	case "compressed":
		raw := make([]byte, cfg.size)
		rng := rand.New(rand.NewSource(7))
		for i := int64(0); i < cfg.size; i += 512 {
			// Compressible but not constant: one random byte per sector.
			raw[i] = byte(rng.Intn(256))
		}
		if err := os.WriteFile(filepath.Join(dir, "src.raw"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
		mk("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, "src.raw", r.names[0])
	default:
		mk("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, r.names[0], size)
	}
	switch cfg.initial {
	case "data", "snapshot":
		mk("qemu-io", "-c", fmt.Sprintf("write -P 0x3c 0 %d", cfg.size/2), r.names[0])
		mk("qemu-io", "-c", fmt.Sprintf("write -z %d %d", cfg.size/8, cfg.size/8), r.names[0])
	}
	if cfg.initial == "stalezero" {
		mk("qemu-io", "-c", fmt.Sprintf("write -P 0xaa 0 %d", cfg.size/2), r.names[0])
		mk("qemu-io", "-c", fmt.Sprintf("write -z 0 %d", cfg.size/2), r.names[0])
	}
	if cfg.initial == "bitmap" {
		mk("qemu-io", "-c", fmt.Sprintf("write -P 0x3c 0 %d", cfg.size/2), r.names[0])
		mk("qemu-img", "bitmap", "--add", "-g", "16384", r.names[0], "b0")
		mk("qemu-img", "bitmap", "--add", "--disable", r.names[0], "b1")
	}
	if cfg.initial == "snapshot" {
		mk("qemu-img", "snapshot", "-c", "s1", r.names[0])
	}
	for i, name := range r.names {
		if i == 1 && !cfg.dataFile {
			break
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		r.initial[i] = b
	}
	mk("qemu-img", "convert", "-O", "raw", r.names[0], "guest0.raw")
	g, err := os.ReadFile(filepath.Join(dir, "guest0.raw"))
	if err != nil {
		t.Fatal(err)
	}
	r.guest0 = g
	r.cfg = cfg
	return r
}

// crashTempDir is a temporary directory in memory when /dev/shm is there:
// every crash image is written out, thousands of them.
func crashTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "qcow2-powercut-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// openRecorded opens the run's image read-write with every host file
// recorded into log.
func (r *crashRun) openRecorded(t *testing.T, log *crashLog) *Image {
	t.Helper()
	old := wrapHostFile
	wrapHostFile = func(p string, f hostFile) hostFile {
		file := 0
		if strings.HasSuffix(p, ".data") {
			file = 1
		}
		if strings.HasSuffix(p, "base.qcow2") {
			return f
		}
		return &recordingFile{hostFile: f, file: file, log: log}
	}
	im, err := Open(filepath.Join(r.dir, r.names[0]), OpenOptions{CacheSize: r.cfg.cache})
	wrapHostFile = old
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// recordWorkload runs the configuration's random workload.
func (r *crashRun) recordWorkload(t *testing.T) {
	t.Helper()
	cfg := r.cfg
	log := &crashLog{}
	im := r.openRecorded(t, log)
	var seq atomic.Int64
	var opsMu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, cfg.writers)
	sectors := cfg.size / 512
	for wr := 0; wr < cfg.writers; wr++ {
		wg.Add(1)
		go func(wr int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(42 + wr)))
			for i := 0; i < cfg.ops; i++ {
				var off, n int64
				if cfg.writers == 1 {
					off = rng.Int63n(cfg.size)
					if rng.Intn(2) == 0 {
						off = rng.Int63n(sectors) * 512
					}
					n = min(rng.Int63n(cfg.maxLen)+1, cfg.size-off)
				} else {
					stripes := cfg.size / cfg.stripe
					j := int64(rng.Intn(int(stripes/int64(cfg.writers))))*int64(cfg.writers) + int64(wr)
					a := rng.Int63n(cfg.stripe / 512)
					b := a + 1 + rng.Int63n(cfg.stripe/512-a)
					off, n = j*cfg.stripe+a*512, (b-a)*512
				}
				compressed := cfg.compressOps && rng.Intn(3) == 0
				if compressed {
					cs := im.ClusterSize()
					off, n = rng.Int63n(cfg.size/cs)*cs, cs
				}
				run := !compressed && cfg.runOps && rng.Intn(3) == 0
				if run {
					cs := im.ClusterSize()
					off = rng.Int63n(cfg.size/cs) * cs
					n = min(cs*(1+rng.Int63n(8)), cfg.size-off)
				}
				op := guestOp{off: off, n: n}
				k := rng.Intn(10)
				if run {
					k = 0
				}
				if k < 7 || compressed {
					op.data = make([]byte, n)
					rng.Read(op.data)
				}
				if compressed {
					// Compressible: runs of one byte with random breaks.
					for j := range op.data {
						if j%97 != 0 {
							op.data[j] = op.data[j-j%97]
						}
					}
				}
				opsMu.Lock()
				idx := len(r.ops)
				r.ops = append(r.ops, op)
				log.add(fileEvent{kind: 'o', op: idx})
				opsMu.Unlock()
				var err error
				switch {
				case compressed:
					err = im.WriteCompressed(off, op.data)
				case run:
					err = im.writeRun(op.data, off)
				case k < 7:
					_, err = im.WriteAt(op.data, off)
				case k < 9:
					err = im.Discard(off, n)
				default:
					err = im.WriteZeroes(off, n)
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d op %d: %w", wr, i, err)
					return
				}
				opsMu.Lock()
				r.ops[idx].done = seq.Add(1)
				opsMu.Unlock()
				if rng.Intn(10) == 0 {
					start := seq.Add(1)
					if err := im.Flush(); err != nil {
						errs <- err
						return
					}
					log.add(fileEvent{kind: 'F', seq: start})
				}
			}
		}(wr)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	start := seq.Add(1)
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	log.add(fileEvent{kind: 'F', seq: start})
	r.events = log.events
}

// crashImage is one possible state of the disks after a power cut.
type crashImage struct {
	event     int // the cut follows this event
	files     [2][]byte
	flushed   []byte    // guest content as of the last completed flush
	candidate []guestOp // ops started but not known durable
}

// crashImages walks the log and calls emit for about points crash images.
func (r *crashRun) crashImages(points int, rng *rand.Rand, emit func(crashImage)) {
	durable := [2][]byte{append([]byte(nil), r.initial[0]...), append([]byte(nil), r.initial[1]...)}
	var pending [2][]fileEvent
	flushed := append([]byte(nil), r.guest0...)
	applied := make([]bool, len(r.ops))
	started := 0 // ops with an 'o' event so far (indexes are assigned in log order)
	// Cut after events spread evenly; several variants of one event when
	// there are more points than events. The last event is always cut.
	cuts := make([]int, len(r.events))
	if r.exhaust {
		for i := range cuts {
			cuts[i] = 1
		}
	} else {
		for k := 0; k < points; k++ {
			cuts[k*len(r.events)/points]++
		}
		cuts[len(cuts)-1] = max(cuts[len(cuts)-1], 1)
	}
	for i, ev := range r.events {
		switch ev.kind {
		case 'w', 't':
			pending[ev.file] = append(pending[ev.file], ev)
		case 's':
			for _, p := range pending[ev.file] {
				durable[ev.file] = applyEvent(durable[ev.file], p)
			}
			pending[ev.file] = pending[ev.file][:0]
		case 'o':
			started = ev.op + 1
		case 'F':
			// Every op that completed before this flush started is
			// durable now; a byte's writer completes its ops in order,
			// so applying them by completion order is exact.
			var now []int
			for k := 0; k < started; k++ {
				if !applied[k] && r.ops[k].done != 0 && r.ops[k].done < ev.seq {
					now = append(now, k)
				}
			}
			sort.Slice(now, func(a, b int) bool { return r.ops[now[a]].done < r.ops[now[b]].done })
			for _, k := range now {
				applyGuest(flushed, r.ops[k])
				applied[k] = true
			}
		}
		if cuts[i] == 0 {
			continue
		}
		var cands []guestOp
		for k := 0; k < started; k++ {
			if !applied[k] {
				cands = append(cands, r.ops[k])
			}
		}
		variants := cuts[i]
		n := len(pending[0]) + len(pending[1])
		if r.exhaust && n <= 12 {
			variants = 1 << n
		}
		for v := 0; v < variants; v++ {
			var files [2][]byte
			for f := range files {
				files[f] = append([]byte(nil), durable[f]...)
			}
			bit := 0
			for f := range pending {
				for _, p := range pending[f] {
					switch {
					case r.exhaust && n <= 12:
						if v>>bit&1 == 1 {
							files[f] = applyEvent(files[f], p)
						}
					default:
						files[f] = applyTorn(files[f], p, rng)
					}
					bit++
				}
			}
			emit(crashImage{event: i, files: files, flushed: append([]byte(nil), flushed...), candidate: cands})
		}
	}
}

// judge checks one crash image with qemu-img check, qemu-img convert and
// our reader. work is a directory of the caller's own holding a symlink to
// the backing file.
func (r *crashRun) judge(work string, ci crashImage) error {
	for f, b := range ci.files {
		if f == 1 && !r.cfg.dataFile {
			break
		}
		if err := os.WriteFile(filepath.Join(work, r.names[f]), b, 0o644); err != nil {
			return err
		}
	}
	img := filepath.Join(work, r.names[0])
	// QEMU resolves a relative data file name against its working
	// directory (we resolve it against the image's): run it in work.
	qemu := func(args ...string) *exec.Cmd {
		cmd := exec.Command("qemu-img", args...)
		cmd.Dir = work
		return cmd
	}
	out, err := qemu("check", img).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
		return fmt.Errorf("cut after event %d/%d: qemu-img check: %v\n%.2000s", ci.event, len(r.events), err, out)
	}
	raw := filepath.Join(work, "crash.raw")
	if out, err := qemu("convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		return fmt.Errorf("cut after event %d: qemu-img convert: %v\n%s", ci.event, err, out)
	}
	got, err := os.ReadFile(raw)
	if err != nil {
		return err
	}
	if err := checkCrashContent(got, ci); err != nil {
		return fmt.Errorf("cut after event %d/%d, read by QEMU: %w", ci.event, len(r.events), err)
	}
	im, err := Open(img, OpenOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("cut after event %d: open: %w", ci.event, err)
	}
	defer im.Close()
	if _, err := im.ReadAt(got, 0); err != nil {
		return fmt.Errorf("cut after event %d: read: %w", ci.event, err)
	}
	if err := checkCrashContent(got, ci); err != nil {
		return fmt.Errorf("cut after event %d/%d, read by qcow2fs: %w", ci.event, len(r.events), err)
	}
	return nil
}

// runPowerCut records a workload and judges about points crash images of
// it on every CPU; it returns the number judged.
func runPowerCut(t *testing.T, cfg crashConfig, points int) int {
	r := setupCrashImage(t, cfg)
	r.recordWorkload(t)
	return r.judgeAll(t, points)
}

func (r *crashRun) judgeAll(t *testing.T, points int) int {
	t.Helper()
	workers := max(1, runtime.GOMAXPROCS(0))
	work := make(chan crashImage, workers)
	var failed atomic.Bool
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for k := 0; k < workers; k++ {
		dir := filepath.Join(r.dir, fmt.Sprintf("w%d", k))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if r.cfg.backing {
			if err := os.Symlink(filepath.Join(r.dir, "base.qcow2"), filepath.Join(dir, "base.qcow2")); err != nil {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ci := range work {
				if failed.Load() {
					continue
				}
				if err := r.judge(dir, ci); err != nil {
					errOnce.Do(func() { firstErr = err })
					failed.Store(true)
				}
			}
		}()
	}
	n := 0
	rng := rand.New(rand.NewSource(1))
	r.crashImages(points, rng, func(ci crashImage) {
		if !failed.Load() {
			work <- ci
			n++
		}
	})
	close(work)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	t.Logf("%s: %d events, %d ops, %d crash images checked", r.cfg.name, len(r.events), len(r.ops), n)
	return n
}

// applyEvent applies a write or a truncate.
func applyEvent(img []byte, ev fileEvent) []byte {
	if ev.kind == 't' {
		if ev.off <= int64(len(img)) {
			return img[:ev.off]
		}
		return append(img, make([]byte, ev.off-int64(len(img)))...)
	}
	return applyWrite(img, ev.off, ev.data)
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
		return applyEvent(img, ev)
	}
	if ev.kind == 't' {
		return img
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

// checkCrashContent: each byte equals the last flushed state or a value an
// op started since may have left.
func checkCrashContent(got []byte, ci crashImage) error {
	if len(got) != len(ci.flushed) {
		return fmt.Errorf("guest size %d, want %d", len(got), len(ci.flushed))
	}
	for s := 0; s < len(got); s += 512 {
		e := min(s+512, len(got))
		if bytes.Equal(got[s:e], ci.flushed[s:e]) {
			continue
		}
		for b := s; b < e; b++ {
			if got[b] == ci.flushed[b] {
				continue
			}
			ok := false
			for _, op := range ci.candidate {
				if int64(b) >= op.off && int64(b) < op.off+op.n {
					if op.data == nil && got[b] == 0 || op.data != nil && op.data[int64(b)-op.off] == got[b] {
						ok = true
						break
					}
				}
			}
			if !ok {
				return fmt.Errorf("guest byte %#x = %#x, flushed %#x, and no write since explains it", b, got[b], ci.flushed[b])
			}
		}
	}
	return nil
}
