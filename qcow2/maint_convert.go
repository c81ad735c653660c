// Convert (qcow2fs convert): the subset of qemu-img convert that matters,
// from a qcow2 image (its active state or an internal snapshot, with its
// backing chain and external data file) or a raw file, to a new qcow2
// image or a sparse raw file.
//
// Only what the source's block status calls data is read; zero and
// unallocated ranges are neither read nor written. Data that reads as
// zeros (runs of Sparse bytes, or whole target clusters) is skipped too,
// unless the target has a backing file that holds something else there.
//
// The work is a pipeline: one producer walks the source's block status
// and cuts the ranges to copy into jobs of whole target clusters; Threads
// workers read each job (and the backing file's bytes, with -B), detect
// zeros and compress (-c); one writer applies the jobs in order, so
// compressed runs are packed in guest order, as qemu-img packs them.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
)

// ConvertOptions are the settings of Convert.
type ConvertOptions struct {
	// SourceFormat is "qcow2", "raw" or "" (probed from the magic).
	SourceFormat string
	// Snapshot converts this internal snapshot (name or ID) of a qcow2
	// source instead of its active state.
	Snapshot string
	// OutputFormat is "qcow2" (default) or "raw".
	OutputFormat string
	// Create holds the qcow2 target's settings (cluster size, compat,
	// ...); Size, BackingFile and BackingFormat are set by Convert.
	Create CreateOptions
	// Compress writes the data clusters compressed (qcow2 target), with
	// Create.CompressionType.
	Compress bool
	// BackingFile becomes the qcow2 target's backing file (stored as
	// given: relative to the target's directory when not absolute), of
	// format BackingFormat ("" probes it). Only what differs from it is
	// written: equal clusters stay unallocated, clusters that read as
	// zeros where the backing file does not become zero clusters.
	BackingFile   string
	BackingFormat string
	// Sparse is the minimum run of zero bytes left as a hole (raw target)
	// or unallocated (qcow2 target, where whole clusters count), a
	// multiple of 512; 0 writes everything, fully allocating the target
	// (qemu-img -S 0). qemu-img's default is 4096.
	Sparse int64
	// Threads is the number of workers that read, compare and compress
	// (0: one per CPU).
	Threads int
	// Progress, when set, is called with the guest bytes done and the
	// virtual size.
	Progress func(done, total int64)

	// ranges, when set (Backup with a bitmap), are what is copied, whole:
	// data as data, what reads as zeros as zero clusters (hiding the
	// target's backing file, which is not compared with). nil copies the
	// source's data extents, by block status.
	ranges [][2]int64
}

// Convert copies the guest content of src into target, created (or
// replaced, as qemu-img convert does) with src's virtual size. The target
// must not be the source nor any file of its chain.
func Convert(src, target string, o ConvertOptions) error {
	if o.OutputFormat == "" {
		o.OutputFormat = "qcow2"
	}
	switch {
	case o.OutputFormat != "qcow2" && o.OutputFormat != "raw":
		return fmt.Errorf("output format %q is not supported (qcow2 and raw are)", o.OutputFormat)
	case o.OutputFormat == "raw" && (o.Compress || o.BackingFile != ""):
		return errors.New("a raw target holds neither compressed clusters nor a backing file")
	case o.Sparse < 0 || o.Sparse%512 != 0:
		return fmt.Errorf("sparse size %d must be a multiple of 512", o.Sparse)
	case o.Compress && o.Create.DataFile != "":
		return errors.New("compressed clusters are not supported with an external data file")
	}
	tabs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	s, err := openConvSource(src, o.SourceFormat, o.Snapshot)
	if err != nil {
		return err
	}
	defer s.Close()
	if tst, err := os.Stat(tabs); err == nil {
		for _, f := range s.Files() {
			if st, err := os.Stat(f); err == nil && os.SameFile(st, tst) {
				return fmt.Errorf("%s: target is the source or a file of its chain (%s)", target, f)
			}
		}
	}
	var back convSource
	if o.BackingFile != "" {
		bpath := resolveRelative(tabs, o.BackingFile)
		if st, err := os.Stat(bpath); err == nil {
			if tst, err := os.Stat(tabs); err == nil && os.SameFile(st, tst) {
				return fmt.Errorf("%s: target cannot be its own backing file", target)
			}
		}
		if back, err = openConvSource(bpath, o.BackingFormat, ""); err != nil {
			return fmt.Errorf("%s: backing file: %w", target, err)
		}
		defer back.Close()
	}
	size := s.Size()
	var dst convTarget
	tcs := int64(512)
	if o.OutputFormat == "qcow2" {
		co := o.Create
		co.Size = size
		co.BackingFile, co.BackingFormat = o.BackingFile, o.BackingFormat
		if err := Create(tabs, co); err != nil {
			return err
		}
		img, err := Open(tabs, OpenOptions{})
		if err != nil {
			return err
		}
		dst = qcow2Out{img}
		tcs = img.ClusterSize()
	} else {
		f, err := openNoAtime(tabs, os.O_RDWR|os.O_CREATE)
		if err != nil {
			return fmt.Errorf("create %s: %w", tabs, err)
		}
		err = lockImage(f, tabs, permConsistentRead|permWrite|permWriteUnchanged|permResize, permWrite|permResize)
		if err == nil && f.Truncate(0) == nil {
			err = f.Truncate(size)
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", tabs, err)
		}
		dst = rawOut{tabs, f}
	}
	err = convertRun(s, back, dst, size, tcs, o)
	if e := dst.close(); err == nil {
		err = e
	}
	if err == nil {
		err = syncDir(filepath.Dir(tabs))
	}
	if err != nil {
		os.Remove(tabs)
		return fmt.Errorf("convert %s to %s: %w", src, target, err)
	}
	return nil
}

var errConvStopped = errors.New("conversion stopped")

// convJob is one range of whole units, read by a worker and written by
// the writer.
type convJob struct {
	off, end int64
	buf      []byte
	ops      []convOp
	wrote    bool // a worker already made the job's data and zero writes
	err      error
	done     chan struct{}
}

type convOp struct {
	kind byte // 'd' data, 'z' zeros, 'c' compressed
	off  int64
	n    int64
	cc   CompressedCluster
}

func convertRun(s, back convSource, dst convTarget, size, tcs int64, o ConvertOptions) error {
	if o.Threads <= 0 {
		o.Threads = runtime.NumCPU()
	}
	if o.Progress == nil {
		o.Progress = func(int64, int64) {}
	}
	// unit: the granularity of zero detection and comparison.
	unit := tcs
	switch {
	case o.Compress:
	case o.OutputFormat == "raw" && o.Sparse > 0:
		unit = o.Sparse
	case o.Sparse > tcs:
		unit = (o.Sparse + tcs - 1) / tcs * tcs
	}
	const target = 1 << 20
	chunk := max(unit, target/unit*unit)
	pool := sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}

	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	work := make(chan *convJob, o.Threads)
	ordered := make(chan *convJob, 2*o.Threads)
	var prodErr error
	go func() {
		defer close(ordered)
		defer close(work)
		prodErr = convertProduce(s, back, size, unit, chunk, o.Sparse == 0, o.ranges, func(off, end int64) bool {
			j := &convJob{off: off, end: end, done: make(chan struct{})}
			select {
			case ordered <- j:
			case <-stop:
				return false
			}
			select {
			case work <- j:
			case <-stop:
				j.err = errConvStopped
				close(j.done)
				return false
			}
			return true
		})
	}()
	var wg sync.WaitGroup
	for i := 0; i < o.Threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bbuf []byte
			if back != nil {
				bbuf = make([]byte, chunk)
			}
			for j := range work {
				j.buf = *pool.Get().(*[]byte)
				j.err = convertJob(s, back, dst, j, bbuf, unit, o)
				if j.err == nil && !o.Compress {
					// Data and zero writes go to ranges of their own, so
					// the workers make them, in parallel: copying into
					// the page cache is the largest cost of a conversion
					// without -c. Compressed runs are packed in guest
					// order: those wait for the writer.
					select {
					case <-stop:
						j.err = errConvStopped
					default:
						j.err = applyOps(dst, j)
						j.wrote, j.ops = len(j.ops) > 0, nil
					}
				}
				close(j.done)
			}
		}()
	}
	// The target's write-back starts as the data comes, on a goroutine of
	// its own: the disk then writes while the workers read and the writer
	// copies, where otherwise it would all wait for the final fdatasync
	// (or, after qemu-img convert, which does not sync, for the next
	// sync). This is the main cost of an uncompressed conversion of data
	// that is in the page cache.
	kick := make(chan struct{}, 1)
	kicked := make(chan struct{})
	go func() {
		defer close(kicked)
		for range kick {
			dst.startWriteback()
		}
	}()
	defer func() {
		close(kick)
		<-kicked
	}()
	var err error
	o.Progress(0, size)
	for j := range ordered {
		<-j.done
		if err == nil {
			err = j.err
		}
		if err == nil {
			err = applyOps(dst, j)
		}
		if b := j.buf; b != nil {
			pool.Put(&b)
		}
		if err != nil {
			halt()
			continue
		}
		if len(j.ops) > 0 || j.wrote {
			select {
			case kick <- struct{}{}:
			default: // one is pending already
			}
		}
		o.Progress(j.end, size)
	}
	halt()
	wg.Wait()
	if err == nil {
		err = prodErr
	}
	if err == nil {
		o.Progress(size, size)
	}
	return err
}

// applyOps makes the job's writes.
func applyOps(dst convTarget, j *convJob) error {
	for _, op := range j.ops {
		var err error
		switch op.kind {
		case 'd':
			err = dst.writeData(j.buf[op.off-j.off:op.off-j.off+op.n], op.off)
		case 'z':
			err = dst.writeZeroes(op.off, op.n)
		case 'c':
			err = dst.storeCompressed(op.cc)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// convertProduce calls emit with the ranges to copy, in order, cut at
// multiples of chunk and rounded out to units: the source's data (with a
// backing file, also what the backing file holds), everything when full,
// or the given ranges whole.
func convertProduce(s, back convSource, size, unit, chunk int64, full bool, ranges [][2]int64, emit func(off, end int64) bool) error {
	const window = 1 << 30
	next := int64(0) // end of the last range emitted
	add := func(a, b int64) bool {
		a = max(a/unit*unit, next)
		b = min((b+unit-1)/unit*unit, size)
		for a < b {
			e := min((a/chunk+1)*chunk, b)
			if !emit(a, e) {
				return false
			}
			a, next = e, e
		}
		return true
	}
	if full {
		add(0, size)
		return nil
	}
	if ranges != nil {
		for _, r := range ranges {
			if !add(r[0], r[1]) {
				return nil
			}
		}
		return nil
	}
	for w := int64(0); w < size; w += window {
		n := min(window, size-w)
		var spans [][2]int64
		collect := func(src convSource) error {
			if src == nil {
				return nil
			}
			exts, err := src.Map(w, min(n, max(0, src.Size()-w)))
			if err != nil {
				return err
			}
			for _, e := range exts {
				if e.Kind == ExtentData {
					spans = append(spans, [2]int64{e.Offset, e.Offset + e.Length})
				}
			}
			return nil
		}
		if err := collect(s); err != nil {
			return err
		}
		if err := collect(back); err != nil {
			return fmt.Errorf("backing file: %w", err)
		}
		sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
		for _, sp := range spans {
			if !add(sp[0], sp[1]) {
				return nil
			}
		}
	}
	return nil
}

// convertJob reads the job's range (only the source's data extents; the
// rest is zeros), compares it with the backing file and turns each unit
// into an op: data, zeros (only over backing data) or nothing.
func convertJob(s, back convSource, dst convTarget, j *convJob, bbuf []byte, unit int64, o ConvertOptions) error {
	n := j.end - j.off
	buf := j.buf[:n]
	exts, err := s.Map(j.off, n)
	if err != nil {
		return err
	}
	pos := j.off
	for _, e := range exts {
		if e.Offset > pos {
			clear(buf[pos-j.off : e.Offset-j.off])
		}
		eb := buf[e.Offset-j.off : e.Offset+e.Length-j.off]
		if e.Kind == ExtentData {
			if _, err := s.ReadAt(eb, e.Offset); err != nil && err != io.EOF {
				return err
			}
		} else {
			clear(eb)
		}
		pos = e.Offset + e.Length
	}
	clear(buf[pos-j.off:])
	var bb []byte
	if back != nil {
		bb = bbuf[:n]
		bsize := back.Size()
		if j.off < bsize {
			if _, err := back.ReadAt(bb[:min(n, bsize-j.off)], j.off); err != nil && err != io.EOF {
				return fmt.Errorf("backing file: %w", err)
			}
		}
		if bsize < j.end {
			clear(bb[max(0, bsize-j.off):])
		}
	}
	for u := int64(0); u < n; u += unit {
		ue := min(u+unit, n)
		d := buf[u:ue]
		if bb != nil && bytes.Equal(d, bb[u:ue]) {
			continue
		}
		zero := o.Sparse > 0 && allZero(d)
		switch {
		case zero && (bb != nil || o.ranges != nil):
			j.addOp(convOp{kind: 'z', off: j.off + u, n: ue - u})
		case zero:
		case o.Compress:
			cc, err := dst.compress(j.off+u, d)
			if err != nil {
				return err
			}
			j.ops = append(j.ops, convOp{kind: 'c', off: j.off + u, n: ue - u, cc: cc})
		default:
			j.addOp(convOp{kind: 'd', off: j.off + u, n: ue - u})
		}
	}
	return nil
}

// addOp appends op, merging it into the previous op of its kind when they
// touch.
func (j *convJob) addOp(op convOp) {
	if k := len(j.ops) - 1; k >= 0 && j.ops[k].kind == op.kind && j.ops[k].off+j.ops[k].n == op.off {
		j.ops[k].n += op.n
		return
	}
	j.ops = append(j.ops, op)
}
