// QEMU is the oracle: every image below is made by qemu-img / qemu-io, and
// what Image.ReadAt returns must equal `qemu-img convert -O raw` byte for
// byte (each internal snapshot: `convert -l snapshot.name=...`). Map, the
// seek helpers and Info are checked against `qemu-img map` / `qemu-img info`,
// and no file of the chain may change through a read-only open.
// This file is long because the image matrix and the one judge it runs
// through (checkImage) belong together.

package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
	tib = int64(1) << 40
)

// oracleCase is one image of the matrix.
type oracleCase struct {
	name string
	// build makes the image (and whatever it refers to) in dir and returns
	// the path of the image to open.
	build func(t *testing.T, dir string) string
	// snapshots are internal snapshots to compare through OpenSnapshot.
	snapshots []string
	// noMap skips the Map/seek comparison (QEMU reports the host holes of
	// raw files as holes, we report a raw layer as data throughout).
	noMap bool
	// dirty: the image must carry the dirty bit (checked against QEMU too).
	dirty bool
}

// smallSize is the virtual size used for most images: a few MiB, at least
// 16 clusters, and deliberately not a multiple of the cluster size.
func smallSize(cs int64) int64 { return max(4*mib, 16*cs) + 3584 }

// stdOps is the standard write pattern for an image with cluster size cs:
// unaligned writes, spans across clusters and L2 tables, zero writes over
// data (aligned: zero flag; unaligned: partial), discards, and the very end
// of the disk.
func stdOps(cs, size int64) []ioOp {
	ops := []ioOp{
		write(0x11, 0, 3*cs+123),
		write(0x22, 5*cs+17, cs+1000),
		zero(cs+100, 2*cs),
		discard(2*cs, cs),
		write(0x5a, 9*cs, 4*cs),
		zero(10*cs, cs),
		discard(12*cs+cs/2, cs), // partial clusters: QEMU may keep the data
		write(0xa5, size-cs-4099, cs+4099),
		write(0x77, size/2+511, 3),
	}
	// Spans across L2 tables (one table maps cs/8 clusters).
	l2cover := cs / 8 * cs
	n := 0
	for b := l2cover; b+cs < size && n < 4; b += l2cover {
		ops = append(ops, write(byte(0x30+n), b-cs/2-7, cs+99))
		n++
	}
	return ops
}

// plainCase is an image made by qemu-img create -o opts and stdOps.
func plainCase(name, opts string, cs int64) oracleCase {
	return oracleCase{name: name, build: func(t *testing.T, dir string) string {
		size := smallSize(cs)
		p := createImage(t, dir, "disk.qcow2", size, opts)
		qemuIO(t, p, "qcow2", stdOps(cs, size))
		return p
	}}
}

// compressedCase converts a patterned raw file with -c, then optionally
// overwrites parts of it (partial writes into compressed clusters, zero
// writes, discards) with qemu-io.
func compressedCase(name, opts string, cs int64, overwrite bool) oracleCase {
	return oracleCase{name: name, build: func(t *testing.T, dir string) string {
		size := smallSize(cs)
		src := makeRawFile(t, filepath.Join(dir, "src.raw"), size, 0x40)
		p := filepath.Join(dir, "disk.qcow2")
		qemuImg(t, dir, "convert", "-c", "-O", "qcow2", "-o", opts, src, p)
		if err := os.Remove(src); err != nil {
			t.Fatal(err)
		}
		if overwrite {
			qemuIO(t, p, "qcow2", []ioOp{
				write(0x91, cs/2+3, 100),                   // partial write into a compressed cluster
				write(0x92, 3*cs-10, cs+20),                // across two compressed clusters
				zero(5*cs, cs),                             // zero flag over a compressed cluster
				discard(6*cs, 2*cs),                        // deallocate compressed clusters
				{kind: 'c', pat: 0x93, off: 6 * cs, n: cs}, // a fresh compressed write where a discard left a hole
			})
		}
		return p
	}}
}

// extL2Ops writes at subcluster granularity (32 subclusters per cluster).
func extL2Ops(cs, size int64) []ioOp {
	sc := cs / 32
	return []ioOp{
		write(0x61, 100, 300),           // inside subcluster 0
		write(0x62, 3*sc+5, 2*sc),       // subclusters 3..5, unaligned
		zero(7*sc, 3*sc),                // zero subclusters 7..9 of an unallocated cluster
		write(0x63, cs+sc*30, 4*sc),     // across a cluster boundary
		write(0x64, 4*cs, cs),           // a whole cluster ...
		zero(4*cs+2*sc, 5*sc),           // ... with zeroed subclusters
		discard(4*cs+20*sc, 2*sc),       // ... and discarded subclusters
		zero(6*cs, cs),                  // whole zero cluster
		write(0x65, size-sc-10, sc+10),  // end of disk
		write(0x66, 8*cs+31*sc+sc-1, 2), // last byte of a cluster + first of the next
		zero(9*cs+sc/2, sc),             // unaligned zero write
	}
}

func extL2Case(name string, cs int64, backing string) oracleCase {
	return oracleCase{name: name, noMap: backing == "raw", build: func(t *testing.T, dir string) string {
		size := smallSize(cs)
		var extra []string
		switch backing {
		case "raw":
			makeRawFile(t, filepath.Join(dir, "base.raw"), size, 0x20)
			extra = []string{"-b", "base.raw", "-F", "raw"}
		case "qcow2":
			b := createImage(t, dir, "base.qcow2", size, "cluster_size=4096")
			qemuIO(t, b, "qcow2", []ioOp{write(0x21, 0, size)})
			extra = []string{"-b", "base.qcow2", "-F", "qcow2"}
		}
		p := createImage(t, dir, "disk.qcow2", size, fmt.Sprintf("cluster_size=%d,extended_l2=on", cs), extra...)
		qemuIO(t, p, "qcow2", extL2Ops(cs, size))
		return p
	}}
}

func oracleCases() []oracleCase {
	cs := []int64{512, 4 * kib, 64 * kib, 2 * mib}
	var cases []oracleCase
	for _, c := range cs {
		cases = append(cases, plainCase(fmt.Sprintf("v3/cluster%d", c), fmt.Sprintf("compat=1.1,cluster_size=%d", c), c))
	}
	for _, c := range []int64{512, 64 * kib, 2 * mib} {
		cases = append(cases, plainCase(fmt.Sprintf("v2/cluster%d", c), fmt.Sprintf("compat=0.10,cluster_size=%d", c), c))
	}
	for _, rb := range []int{1, 2, 8, 16, 32, 64} {
		cases = append(cases, plainCase(fmt.Sprintf("refcount%d", rb), fmt.Sprintf("cluster_size=4096,refcount_bits=%d", rb), 4*kib))
	}
	cases = append(cases,
		plainCase("lazy-refcounts", "lazy_refcounts=on", 64*kib),
		plainCase("prealloc-metadata", "preallocation=metadata,cluster_size=4096", 4*kib),
		plainCase("prealloc-metadata/v2", "compat=0.10,preallocation=metadata", 64*kib),
		plainCase("prealloc-falloc", "preallocation=falloc", 64*kib),
		plainCase("prealloc-full", "preallocation=full,cluster_size=2M", 2*mib),
		dirtyCase(),

		compressedCase("compressed/zlib", "compression_type=zlib", 64*kib, false),
		compressedCase("compressed/zstd", "compression_type=zstd", 64*kib, false),
		compressedCase("compressed/zlib/overwritten", "compression_type=zlib", 64*kib, true),
		compressedCase("compressed/zstd/overwritten", "compression_type=zstd", 64*kib, true),
		compressedCase("compressed/zlib/cluster512", "compression_type=zlib,cluster_size=512", 512, true),
		compressedCase("compressed/zstd/cluster4096", "compression_type=zstd,cluster_size=4096", 4*kib, true),
		compressedCase("compressed/zstd/cluster2M", "compression_type=zstd,cluster_size=2M", 2*mib, true),
		compressedCase("compressed/v2", "compat=0.10", 64*kib, true),

		extL2Case("extended-l2/cluster64k", 64*kib, ""),
		extL2Case("extended-l2/cluster2M", 2*mib, ""),
		extL2Case("extended-l2/cluster64k/qcow2-backing", 64*kib, "qcow2"),
		extL2Case("extended-l2/cluster32k/raw-backing", 32*kib, "raw"),

		oddSizeCase("odd-size/v3", "cluster_size=65536"),
		oddSizeCase("odd-size/v2-cluster2M", "compat=0.10,cluster_size=2M"),
		l2SpanCase(),
		bitmapCase(),
		dataFileCase("data-file", false),
		dataFileCase("data-file-raw", true),
	)
	cases = append(cases, backingCases()...)
	cases = append(cases, snapshotCases()...)
	return cases
}

// dirtyCase leaves an image dirty: lazy refcounts, a flush, more allocating
// writes, then qemu-io aborts (SIGABRT) without closing the image.
func dirtyCase() oracleCase {
	return oracleCase{name: "dirty-killed-writer", dirty: true, build: func(t *testing.T, dir string) string {
		cs := 64 * kib
		size := smallSize(cs)
		p := createImage(t, dir, "disk.qcow2", size, "lazy_refcounts=on")
		args := []string{"-f", "qcow2"}
		for _, o := range stdOps(cs, size) {
			args = append(args, "-c", o.String())
		}
		args = append(args, "-c", "flush", "-c", write(0x99, 20*cs+5, 3*cs).String(), "-c", "abort", "disk.qcow2")
		if _, err := tryCmd(dir, "qemu-io", args...); err == nil || !strings.Contains(err.Error(), "signal: aborted") {
			t.Fatalf("qemu-io was meant to abort: %v", err)
		}
		if !qemuImageInfo(t, p).DirtyFlag {
			t.Fatal("qemu-img info does not report the killed writer's image as dirty")
		}
		return p
	}}
}

// oddSizeCase: a virtual size (1000448 bytes) that is not a multiple of the
// cluster size, with writes up to the last byte.
func oddSizeCase(name, opts string) oracleCase {
	return oracleCase{name: name, build: func(t *testing.T, dir string) string {
		const size = 1000448
		p := createImage(t, dir, "disk.qcow2", size, opts)
		qemuIO(t, p, "qcow2", []ioOp{write(0x71, 0, 70000), write(0x72, size-70001, 70001), zero(size-512, 512), write(0x73, size-1, 1)})
		return p
	}}
}

// l2SpanCase: a 64 KiB-cluster image just over one L2 table's reach
// (512 MiB), written across the boundary between the two L2 tables.
func l2SpanCase() oracleCase {
	return oracleCase{name: "v3/cluster64k/two-l2-tables", build: func(t *testing.T, dir string) string {
		size := 520 * mib
		p := createImage(t, dir, "disk.qcow2", size, "")
		qemuIO(t, p, "qcow2", []ioOp{
			write(0x41, 512*mib-100*kib-3, 200*kib+6),
			zero(512*mib-64*kib, 128*kib),
			write(0x42, 0, 12345),
			write(0x43, size-4096, 4096),
		})
		return p
	}}
}

func bitmapCase() oracleCase {
	return oracleCase{name: "persistent-bitmap", build: func(t *testing.T, dir string) string {
		cs := 64 * kib
		size := smallSize(cs)
		p := createImage(t, dir, "disk.qcow2", size, "")
		qemuImg(t, dir, "bitmap", "--add", "disk.qcow2", "b0")
		qemuImg(t, dir, "bitmap", "--add", "--granularity", "4096", "disk.qcow2", "second-bitmap")
		qemuIO(t, p, "qcow2", stdOps(cs, size)) // updates the enabled bitmaps
		return p
	}}
}

func dataFileCase(name string, raw bool) oracleCase {
	return oracleCase{name: name, build: func(t *testing.T, dir string) string {
		cs := 64 * kib
		size := smallSize(cs)
		opts := "data_file=disk.data"
		if raw {
			opts += ",data_file_raw=on"
		}
		p := createImage(t, dir, "disk.qcow2", size, opts)
		qemuIO(t, p, "qcow2", stdOps(cs, size))
		return p
	}}
}

func backingCases() []oracleCase {
	return []oracleCase{
		{name: "backing/raw", build: func(t *testing.T, dir string) string {
			cs := 64 * kib
			size := smallSize(cs)
			makeRawFile(t, filepath.Join(dir, "base.raw"), size, 0x10)
			p := createImage(t, dir, "disk.qcow2", size, "", "-b", "base.raw", "-F", "raw")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			return p
		}},
		{name: "backing/raw-no-format", build: func(t *testing.T, dir string) string {
			// No backing-format extension: the format is probed.
			cs := 4 * kib
			size := smallSize(cs)
			makeRawFile(t, filepath.Join(dir, "base.img"), size, 0x10)
			p := createImage(t, dir, "disk.qcow2", size, "cluster_size=4096", "-b", "base.img", "-F", "raw")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			// qemu-img create insists on -F: turn the backing-format
			// extension into an unknown one (which must be skipped).
			off := findExtension(t, p, ExtBackingFmt)
			if off < 0 {
				t.Fatal("no backing format extension found")
			}
			testenv.PatchFile(t, p, off, be32(0x7a7a7a7a))
			return p
		}},
		{name: "backing/qcow2", build: func(t *testing.T, dir string) string {
			cs := 64 * kib
			size := smallSize(cs)
			b := createImage(t, dir, "base.qcow2", size, "")
			qemuIO(t, b, "qcow2", []ioOp{write(0x51, 0, size), zero(7*cs, 2*cs)})
			p := createImage(t, dir, "disk.qcow2", size, "", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			return p
		}},
		{name: "backing/v2-over-qcow2", build: func(t *testing.T, dir string) string {
			cs := 512 * int64(1)
			size := smallSize(cs)
			b := createImage(t, dir, "base.qcow2", size, "cluster_size=4096")
			qemuIO(t, b, "qcow2", []ioOp{write(0x52, 1000, size-3000)})
			p := createImage(t, dir, "disk.qcow2", size, "compat=0.10,cluster_size=512", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			return p
		}},
		{name: "backing/3-deep", build: func(t *testing.T, dir string) string {
			size := 6*mib + 512
			b := createImage(t, dir, "base.qcow2", size, "cluster_size=4096")
			qemuIO(t, b, "qcow2", []ioOp{write(0x01, 0, size), discard(mib, 64*kib)})
			m := createImage(t, dir, "mid.qcow2", size, "cluster_size=65536", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, m, "qcow2", []ioOp{write(0x02, 100*kib+3, 2*mib), zero(3*mib, 128*kib), discard(3*mib+128*kib, 64*kib)})
			p := createImage(t, dir, "disk.qcow2", size, "cluster_size=512", "-b", "mid.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0x03, 1*mib+1, 5000), zero(2*mib, 4096), discard(2*mib+8192, 8192), write(0x04, size-600, 600)})
			return p
		}},
		{name: "backing/relative-subdir", build: func(t *testing.T, dir string) string {
			cs := 64 * kib
			size := smallSize(cs)
			b := createImage(t, dir, "base.qcow2", size, "")
			qemuIO(t, b, "qcow2", []ioOp{write(0x53, 0, size)})
			sub := filepath.Join(dir, "sub")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			p := createImage(t, sub, "disk.qcow2", size, "", "-b", "../base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			if h := readHeaderOf(t, p); h.BackingFileSize != uint32(len("../base.qcow2")) {
				t.Fatalf("backing name stored with %d bytes, expected the relative name", h.BackingFileSize)
			}
			return p
		}},
		{name: "backing/small-over-big", build: func(t *testing.T, dir string) string {
			b := createImage(t, dir, "base.qcow2", 8*mib, "cluster_size=4096")
			qemuIO(t, b, "qcow2", []ioOp{write(0x54, 0, 8*mib)})
			p := createImage(t, dir, "disk.qcow2", 3*mib+512, "", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0x55, mib-7, 70000), zero(2*mib, 64*kib)})
			return p
		}},
		{name: "backing/big-over-small-qcow2", build: func(t *testing.T, dir string) string {
			b := createImage(t, dir, "base.qcow2", mib+512, "cluster_size=4096")
			qemuIO(t, b, "qcow2", []ioOp{write(0x56, 0, mib+512)})
			p := createImage(t, dir, "disk.qcow2", 4*mib, "", "-b", "base.qcow2", "-F", "qcow2")
			// Partial writes into the cluster that straddles the base's end.
			qemuIO(t, p, "qcow2", []ioOp{write(0x57, mib+100, 50), write(0x58, 3*mib, 3)})
			return p
		}},
		{name: "backing/big-over-small-raw", noMap: true, build: func(t *testing.T, dir string) string {
			// A raw base whose size is not even a multiple of 512.
			makeRawFile(t, filepath.Join(dir, "base.raw"), 1000001, 0x30)
			p := createImage(t, dir, "disk.qcow2", 4*mib, "cluster_size=4096", "-b", "base.raw", "-F", "raw")
			qemuIO(t, p, "qcow2", []ioOp{write(0x59, 1000001-4096-5, 100), write(0x5b, 2*mib, 3)})
			return p
		}},
		{name: "backing/qcow2-over-compressed", build: func(t *testing.T, dir string) string {
			size := 2*mib + 512
			src := makeRawFile(t, filepath.Join(dir, "src.raw"), size, 0x60)
			qemuImg(t, dir, "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, filepath.Join(dir, "base.qcow2"))
			os.Remove(src)
			p := createImage(t, dir, "disk.qcow2", size, "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", stdOps(512, size))
			return p
		}},
	}
}

func snapshotCases() []oracleCase {
	return []oracleCase{
		{name: "snapshots/v3", snapshots: []string{"s1", "s2", "empty"}, build: func(t *testing.T, dir string) string {
			cs := 64 * kib
			size := smallSize(cs)
			p := createImage(t, dir, "disk.qcow2", size, "")
			qemuImg(t, dir, "snapshot", "-c", "empty", "disk.qcow2")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			qemuImg(t, dir, "snapshot", "-c", "s1", "disk.qcow2")
			// Change data after the snapshot: overwrite shared clusters,
			// zero and discard some.
			qemuIO(t, p, "qcow2", []ioOp{write(0xe1, 100, 2*cs), zero(9*cs, 2*cs), discard(5*cs, 2*cs), write(0xe2, size-10, 10)})
			qemuImg(t, dir, "snapshot", "-c", "s2", "disk.qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0xe3, 3*cs, cs)})
			// Grow the disk: the snapshots keep their own, smaller size.
			qemuImg(t, dir, "resize", "disk.qcow2", strconv.FormatInt(size+2*mib, 10))
			qemuIO(t, p, "qcow2", []ioOp{write(0xe4, size+mib, 4096)})
			return p
		}},
		{name: "snapshots/v2-cluster512", snapshots: []string{"before", "1"}, build: func(t *testing.T, dir string) string {
			cs := int64(512)
			size := smallSize(cs)
			p := createImage(t, dir, "disk.qcow2", size, "compat=0.10,cluster_size=512")
			qemuIO(t, p, "qcow2", stdOps(cs, size))
			qemuImg(t, dir, "snapshot", "-c", "before", "disk.qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0xe5, 0, 100*kib), discard(mib, 64*kib)})
			return p
		}},
		{name: "snapshots/over-backing", snapshots: []string{"snap"}, build: func(t *testing.T, dir string) string {
			size := 3 * mib
			b := createImage(t, dir, "base.qcow2", size, "")
			qemuIO(t, b, "qcow2", []ioOp{write(0xb1, 0, size)})
			p := createImage(t, dir, "disk.qcow2", size, "cluster_size=4096", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0xb2, 5000, 10000), zero(mib, 8192)})
			qemuImg(t, dir, "snapshot", "-c", "snap", "disk.qcow2")
			qemuIO(t, p, "qcow2", []ioOp{write(0xb3, 0, 100*kib), discard(mib, 8192)})
			return p
		}},
	}
}

func TestOracleImages(t *testing.T) {
	needQEMU(t)
	for _, c := range oracleCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := c.build(t, dir)
			checkImage(t, c, dir, path)
		})
	}
}

// checkImage runs every comparison on one built image.
func checkImage(t *testing.T, c oracleCase, dir, path string) {
	before := testenv.HashTree(t, dir)
	out := t.TempDir()
	raw := convertToRaw(t, path, out)
	snapL, snapA := map[string]string{}, map[string]string{}
	for _, s := range c.snapshots {
		snapL[s], snapA[s] = snapshotOracle(t, path, out, s)
	}

	var warnings []string
	img, err := Open(path, OpenOptions{ReadOnly: true, Warn: func(m string) { warnings = append(warnings, m) }})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	for _, f := range img.Files() {
		if _, ok := before[f]; !ok {
			t.Errorf("Files() names %s, which is not one of the files the test made", f)
		}
	}
	compareReads(t, img, raw)
	compareConcurrent(t, img, raw)
	qi := compareInfo(t, img, path)
	if c.dirty && !(qi.DirtyFlag && img.Info().Dirty) {
		t.Errorf("expected a dirty image: qemu says %v, Info says %v", qi.DirtyFlag, img.Info().Dirty)
	}
	if !c.noMap {
		spans := compareMap(t, img, path)
		checkSeeks(t, img, spans)
	}
	for _, s := range c.snapshots {
		sv, err := img.OpenSnapshot(s)
		if err != nil {
			t.Errorf("OpenSnapshot(%q): %v", s, err)
			continue
		}
		if !sv.ReadOnly() {
			t.Errorf("snapshot view %q is not read-only", s)
		}
		if _, err := sv.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
			t.Errorf("WriteAt on snapshot view %q: %v, want ErrReadOnly", s, err)
		}
		t.Run("snapshot="+s, func(t *testing.T) {
			// The snapshot's own disk size and content, as after
			// `qemu-img snapshot -a` ...
			compareReads(t, sv, snapA[s])
			// ... and the same bytes as `qemu-img convert -l` over that
			// size (convert -l keeps the current size; the rest is zeros).
			l := mustOpen(t, snapL[s])
			compareRange(t, "convert -l", sv, l, 0, min(sv.Size(), fileSize(t, l)))
		})
		if err := sv.Close(); err != nil {
			t.Errorf("close snapshot view: %v", err)
		}
	}
	// The active view must still work after snapshot views were closed.
	compareRandom(t, img, mustOpen(t, raw), 20, img.ClusterSize())
	if err := img.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := img.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v, want ErrClosed", err)
	}
	if len(warnings) > 0 {
		t.Logf("warnings: %q", warnings)
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, dir))
}

func fileSize(t testing.TB, f *os.File) int64 {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func mustOpen(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// compareConcurrent reads random ranges from several goroutines at once
// (the FUSE layer does) and checks each against the oracle.
func compareConcurrent(t *testing.T, img *Image, rawPath string) {
	raw := mustOpen(t, rawPath)
	size := img.Size()
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			n := min(int64(64*kib+7), size)
			got, want := make([]byte, n), make([]byte, n)
			for i := int64(0); i < 40; i++ {
				off := (i*7919*4099 + int64(g)*1000003) % (size - n + 1)
				if _, err := raw.ReadAt(want, off); err != nil && err != io.EOF {
					errs <- err.Error()
					return
				}
				if _, err := img.ReadAt(got, off); err != nil && err != io.EOF {
					errs <- fmt.Sprintf("concurrent ReadAt at %d: %v", off, err)
					return
				}
				if j := firstDiff(got, want); j >= 0 {
					errs <- diffMsg("concurrent read", off, got, want, j)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// expectedBytes computes the disk content of [off, off+n) after ops, on an
// image without backing file (unwritten bytes read as zeros).
func expectedBytes(ops []ioOp, off, n int64) []byte {
	out := make([]byte, n)
	for _, o := range ops {
		lo, hi := max(o.off, off), min(o.off+o.n, off+n)
		for i := lo; i < hi; i++ {
			if o.kind == 'w' {
				out[i-off] = o.pat
			} else {
				out[i-off] = 0
			}
		}
	}
	return out
}

// TestOracleHugeSparse: multi-TiB virtual disks that hold a few writes at
// far-apart offsets (and across L1/L2 boundaries). Converting them is out of
// the question, so chosen ranges are compared with the written patterns
// (which qemu-io first confirms with read -P), and Map/SeekData/SeekHole
// with qemu-img map.
func TestOracleHugeSparse(t *testing.T) {
	needQEMU(t)
	cases := []struct {
		name string
		size int64
		opts string
		cs   int64
	}{
		{"4TiB/cluster64k", 4 * tib, "", 64 * kib},
		{"5TiB/cluster2M/extended-l2", 5 * tib, "cluster_size=2M,extended_l2=on", 2 * mib},
		{"100GiB/cluster512", 100 * gib, "cluster_size=512", 512}, // 512-byte clusters cap the size at 128 GiB
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			size := c.size
			// One L2 table maps l2cover bytes; write across such a boundary far out.
			l2cover := c.cs / 8 * c.cs
			if strings.Contains(c.opts, "extended_l2") {
				l2cover /= 2
			}
			far := (size / 2 / l2cover) * l2cover
			ops := []ioOp{
				write(0x11, 0, 100*kib+3),
				write(0x22, size/4+12345, 70000),
				write(0x33, far-c.cs-5, 2*c.cs+10),
				zero(far-c.cs/2, c.cs),
				write(0x44, size-mib, mib-1024),
				write(0x55, size-512, 512),
				write(0x66, size/4*3-1, 2),
			}
			p := createImage(t, dir, "disk.qcow2", size, c.opts)
			qemuIO(t, p, "qcow2", ops)
			// Let QEMU confirm the expected content of each written range.
			var checks []string
			for _, o := range ops {
				exp := expectedBytes(ops, o.off, o.n)
				for i := int64(0); i < o.n; {
					j := i
					for j < o.n && exp[j] == exp[i] {
						j++
					}
					checks = append(checks, fmt.Sprintf("read -P %#x %d %d", exp[i], o.off+i, j-i))
					i = j
				}
			}
			qemuIO(t, p, "qcow2", nil, checks...)

			before := testenv.HashTree(t, dir)
			img, err := Open(p, OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if img.Size() != size {
				t.Fatalf("Size() = %d, want %d", img.Size(), size)
			}
			// Windows around every write, plus far holes.
			for _, o := range ops {
				lo := max(0, o.off-c.cs-7)
				hi := min(size, o.off+o.n+c.cs+7)
				checkExpected(t, img, ops, lo, hi-lo)
			}
			for _, off := range []int64{size / 8, size/8*5 + 4095, size - 3*mib} {
				checkExpected(t, img, ops, off, 1*mib)
			}
			spans := compareMap(t, img, p)
			checkSeeks(t, img, spans)
			img.Close()
			testenv.SameHashes(t, before, testenv.HashTree(t, dir))
		})
	}
}

// checkExpected reads [off, off+n) in odd-sized pieces and compares with the
// content the ops imply.
func checkExpected(t *testing.T, img *Image, ops []ioOp, off, n int64) {
	t.Helper()
	want := expectedBytes(ops, off, n)
	got := make([]byte, n)
	for done := int64(0); done < n; {
		l := min(12345, n-done)
		if _, err := img.ReadAt(got[done:done+l], off+done); err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d bytes at %d): %v", l, off+done, err)
		}
		done += l
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Error(diffMsg("sparse image", off, got, want, i))
	}
}
