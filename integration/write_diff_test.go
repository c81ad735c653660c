// Differential tests of the write path through a mount: a seeded random
// workload applied to the mounted image and to a raw file, then compared by
// qemu-img, with the image clean and its snapshots unchanged.

package integration

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// rwCase is one image of the write-path matrix.
type rwCase struct {
	Name     string
	Opts     string // qemu-img create -o
	Cluster  int64
	Size     int64
	ExtL2    bool // 16-byte L2 entries
	Ops      int
	Snapshot string // internal snapshot the workload must not disturb
	// GrowsRefcountTable: the workload must outgrow the refcount table
	// (checked, so the case keeps testing what it claims to).
	GrowsRefcountTable bool
	// Build, when set, makes the image itself (backing files, conversion);
	// otherwise it is qemu-img create -o Opts, then scribbled on.
	Build func(k *imageKit, c rwCase, path string)
}

func (c rwCase) l2Span() int64 {
	entry := int64(8)
	if c.ExtL2 {
		entry = 16
	}
	return c.Cluster / entry * c.Cluster
}

// prefill leaves data, zero and discarded clusters at the hot spots of the
// workload, including across the first L2-table boundary.
func (c rwCase) prefill(k *imageKit) []string {
	cmds := k.Scribble(c.Cluster, c.Size)
	if span := c.l2Span(); span+c.Cluster < c.Size {
		cmds = append(cmds, k.Rand(span-c.Cluster-100, 2*c.Cluster+200))
	}
	return cmds
}

// withBacking returns a builder of an image (options opts) over a backing
// file of format bfmt ("qcow2" or "raw") that is smaller than the image, so
// the workload also writes past the backing file's end.
func withBacking(bfmt, opts string) func(k *imageKit, c rwCase, path string) {
	return func(k *imageKit, c rwCase, path string) {
		bsize := c.Size * 3 / 4
		var base string
		if bfmt == "raw" {
			base = k.BkPath("base.raw")
			writeRandomFile(k.t, base, 11, int(bsize/2))
			if err := os.Truncate(base, bsize); err != nil {
				k.t.Fatal(err)
			}
		} else {
			base = k.BkPath("base.qcow2")
			qemuCreate(k.t, base, fmt.Sprint(bsize), "", "", "")
			qemuIO(k.t, base, append(k.Scribble(64<<10, bsize), k.Rand(0, bsize/2))...)
		}
		qemuCreate(k.t, path, fmt.Sprint(c.Size), opts, "bk/"+filepath.Base(base), bfmt)
		qemuIO(k.t, path, k.Rand(c.Cluster/2, 3*c.Cluster), Zero(5*c.Cluster, c.Cluster+100), Discard(9*c.Cluster, c.Cluster))
	}
}

func writeMatrix() []rwCase {
	const (
		k64 = 64 << 10
		mb  = 1 << 20
	)
	return []rwCase{
		{Name: "v2-64k", Opts: "compat=0.10", Cluster: k64, Size: 640 * mb, Ops: 3000},
		{Name: "v3-512", Opts: "cluster_size=512", Cluster: 512, Size: 2 * mb, Ops: 4500},
		// 64-bit refcounts in 512-byte clusters: a refcount block covers only
		// 64 clusters, so the refcount table fills and must grow.
		{Name: "v3-512-rc64", Cluster: 512, Size: 8 * mb, Ops: 9000, GrowsRefcountTable: true, Build: func(k *imageKit, c rwCase, path string) {
			// The one-cluster table maps 2 MiB of host file; fill most of it.
			qemuCreate(k.t, path, fmt.Sprint(c.Size), "cluster_size=512,refcount_bits=64", "", "")
			qemuIO(k.t, path, append(c.prefill(k), k.Rand(4*mb, 3*mb/2))...)
		}},
		{Name: "v3-4k-rc1", Opts: "cluster_size=4096,refcount_bits=1", Cluster: 4096, Size: 16 * mb, Ops: 4500},
		{Name: "v3-64k", Opts: "", Cluster: k64, Size: 640 * mb, Ops: 3000},
		{Name: "v3-2m", Opts: "cluster_size=2M", Cluster: 2 * mb, Size: 513 << 30, Ops: 600},
		{Name: "lazy-refcounts", Opts: "lazy_refcounts=on", Cluster: k64, Size: 64 * mb, Ops: 3000},
		{Name: "extl2-64k", Opts: "extended_l2=on", Cluster: k64, ExtL2: true, Size: 300 * mb, Ops: 3000},
		{Name: "extl2-16k", Opts: "extended_l2=on,cluster_size=16384", Cluster: 16384, ExtL2: true, Size: 20 * mb, Ops: 3000},
		{Name: "backing-qcow2", Cluster: k64, Size: 32 * mb, Ops: 2400, Build: withBacking("qcow2", "")},
		{Name: "backing-raw", Cluster: k64, Size: 32 * mb, Ops: 2400, Build: withBacking("raw", "")},
		{Name: "backing-extl2", Cluster: k64, ExtL2: true, Size: 32 * mb, Ops: 2400, Build: withBacking("qcow2", "extended_l2=on")},
		// v2 has no zero flag: zeroes over a backing file must be real zeros.
		{Name: "backing-v2", Cluster: k64, Size: 32 * mb, Ops: 2400, Build: withBacking("qcow2", "compat=0.10")},
		{Name: "compressed-zlib", Cluster: k64, Size: 32 * mb, Ops: 2400, Build: func(k *imageKit, c rwCase, path string) {
			src := k.BkPath("src.qcow2")
			qemuCreate(k.t, src, fmt.Sprint(c.Size), "", "", "")
			qemuIO(k.t, src, append(c.prefill(k), k.Rand(0, 4*mb), k.Rand(c.Size/2-2*mb, 4*mb))...)
			run(k.t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zlib", src, path)
		}},
		{Name: "snapshot", Cluster: k64, Size: 32 * mb, Ops: 2400, Snapshot: "S", Build: func(k *imageKit, c rwCase, path string) {
			qemuCreate(k.t, path, fmt.Sprint(c.Size), "", "", "")
			qemuIO(k.t, path, append(c.prefill(k), k.Rand(c.Size-3*mb, 3*mb))...)
			run(k.t, "qemu-img", "snapshot", "-c", "S", path)
			// Some clusters diverge from the snapshot before the workload,
			// the rest are still shared with it.
			qemuIO(k.t, path, k.Rand(100, 2*c.Cluster), Zero(c.Size-2*mb, c.Cluster))
		}},
		{Name: "extdata", Cluster: k64, Size: 64 * mb, Ops: 2400, Build: func(k *imageKit, c rwCase, path string) {
			qemuCreate(k.t, path, fmt.Sprint(c.Size), "data_file="+k.BkPath("data.bin"), "", "")
			qemuIO(k.t, path, c.prefill(k)...)
		}},
		// Persistent dirty bitmaps are kept (not leaked, not left in use).
		{Name: "bitmaps", Cluster: k64, Size: 64 * mb, Ops: 2400, Build: func(k *imageKit, c rwCase, path string) {
			qemuCreate(k.t, path, fmt.Sprint(c.Size), "", "", "")
			qemuIO(k.t, path, c.prefill(k)...)
			run(k.t, "qemu-img", "bitmap", "--add", path, "b0")
			run(k.t, "qemu-img", "bitmap", "--add", "-g", "4096", "--disable", path, "b1")
		}},
		{Name: "extdata-raw", Cluster: k64, Size: 64 * mb, Ops: 2400, Build: func(k *imageKit, c rwCase, path string) {
			qemuCreate(k.t, path, fmt.Sprint(c.Size), "data_file="+k.BkPath("data.bin")+",data_file_raw=on", "", "")
			qemuIO(k.t, path, c.prefill(k)...)
		}},
	}
}

// TestWriteDifferential applies a seeded random workload of writes,
// discards and zero-ranges both to an image mounted read-write and to a
// plain raw file, then requires qemu-img to find the two identical and the
// image clean (no errors, no leaks), and internal snapshots unchanged.
func TestWriteDifferential(t *testing.T) {
	requireEnv(t)
	for _, c := range writeMatrix() {
		t.Run(c.Name, func(t *testing.T) { runDifferential(t, c) })
	}
}

func runDifferential(t *testing.T, c rwCase) {
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mnt := mkdir(t, dir, "mnt")
	img := k.Path(c.Name)
	if c.Build != nil {
		c.Build(k, c, img)
	} else {
		qemuCreate(t, img, fmt.Sprint(c.Size), c.Opts, "", "")
		qemuIO(t, img, c.prefill(k)...)
	}

	// The reference starts as QEMU's view of the image (backing data included).
	refPath := filepath.Join(dir, "ref.raw")
	qemuToRaw(t, img, "", refPath)
	var snapBefore string
	if c.Snapshot != "" {
		snapBefore = filepath.Join(dir, "snap-before.raw")
		qemuToRaw(t, img, c.Snapshot, snapBefore)
	}

	refTableBefore := refcountTableClusters(t, img)

	mountQcow2fs(t, mnt, nil, img)
	exposed := filepath.Join(mnt, c.Name+".raw")
	mounted, err := os.OpenFile(exposed, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open %s for writing on a read-write mount: %v", exposed, err)
	}
	defer mounted.Close()
	ref, err := os.OpenFile(refPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()

	ops := genWorkload(seedFor(t, c.Name), workloadShape{Size: c.Size, Cluster: c.Cluster, L2Span: c.l2Span(), Ops: c.Ops * stressFactor(t)})
	if err := applyWorkload(mounted, ref, ops); err != nil {
		t.Fatalf("workload on %s: %v", exposed, err)
	}
	if err := mounted.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", exposed, err)
	}
	// Read everything back through the mount while it is small enough.
	if c.Size <= 64<<20 {
		if err := compareRange(mounted, ref, 0, c.Size); err != nil {
			t.Errorf("mounted file vs reference after the workload: %v", err)
		}
	}
	mounted.Close()

	unmountQcow2fs(t, mnt, k.Dir)
	qemuCompareRaw(t, refPath, img)
	qemuCheckClean(t, img)
	if after := refcountTableClusters(t, img); c.GrowsRefcountTable && after <= refTableBefore {
		t.Errorf("the workload left the refcount table at %d clusters: it no longer tests table growth", after)
	}
	if c.Snapshot != "" {
		snapAfter := filepath.Join(dir, "snap-after.raw")
		qemuToRaw(t, img, c.Snapshot, snapAfter)
		compareFiles(t, snapAfter, snapBefore)
	}
}

// refcountTableClusters reads refcount_table_clusters from img's header.
func refcountTableClusters(t *testing.T, img string) uint32 {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], 56); err != nil {
		t.Fatalf("read header of %s: %v", img, err)
	}
	return binary.BigEndian.Uint32(b[:])
}

// stressFactor multiplies workload lengths: QCOW2FS_STRESS=N (default 1).
func stressFactor(t *testing.T) int {
	s := os.Getenv("QCOW2FS_STRESS")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("QCOW2FS_STRESS=%q: want a positive integer", s)
	}
	return n
}
