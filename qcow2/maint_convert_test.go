// Differential tests of convert against qemu-img convert (qcow2 and raw
// sources, snapshots, compression, -S, -B with a backing file).

package qcow2

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// convOps is the guest content most convert cases start from: data in
// whole and partial clusters, zero writes, data that reads as zeros
// (which -S leaves unwritten), data at the disk's end.
func convOps(size int64) []ioOp {
	return []ioOp{
		write(0xa1, 0, 3<<20),
		write(0xb2, 5<<20+1024, 7000), // partial clusters
		zero(1<<20, 64<<10),           // zero flag inside data
		write(0, 8<<20, 1<<20),        // data that is all zeros
		write(0xc3, 12<<20, 4096),
		write(0xd4, size-5000, 5000), // the last, partial, cluster
	}
}

// qemuMapJSON is qemu-img map's JSON with the compressed flag.
type qemuMapJSON struct {
	Start, Length int64
	Depth         int
	Present, Zero bool
	Data          bool
}

func qemuMapAll(t *testing.T, path string) []qemuMapJSON {
	t.Helper()
	out := qemuImg(t, filepath.Dir(path), "map", "-U", "--output=json", path)
	var m []qemuMapJSON
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	return m
}

// checkAgainstQEMU: ours and theirs (qemu-img convert's output) hold the
// same disk, both equal to the source, and ours passes qemu-img check.
// (A snapshot's content is only compared with qemu-img's conversion.)
func checkAgainstQEMU(t *testing.T, src, srcFmt, ours, oursFmt, theirs string, snapshot bool) {
	t.Helper()
	dir := filepath.Dir(ours)
	if a, b := qemuImageInfo(t, ours).VirtualSize, qemuImageInfo(t, theirs).VirtualSize; a != b {
		t.Errorf("virtual size %d, qemu-img's %d", a, b)
	}
	qemuImg(t, dir, "compare", "-f", oursFmt, "-F", oursFmt, ours, theirs)
	if !snapshot {
		qemuImg(t, dir, "compare", "-U", "-f", srcFmt, "-F", oursFmt, src, ours)
	}
	if oursFmt == "qcow2" {
		qemuImg(t, dir, "check", ours)
	}
}

type convCase struct {
	name string
	// build makes the source in dir, returning it and its format.
	build func(t *testing.T, dir string) (string, string)
	opts  ConvertOptions
	// qemu are qemu-img convert's options for the same conversion.
	qemu []string
	// verify, when set, looks further at the target.
	verify func(t *testing.T, dir, src, ours, theirs string)
}

func qcowSource(size int64, opts string) func(t *testing.T, dir string) (string, string) {
	return func(t *testing.T, dir string) (string, string) {
		p := createImage(t, dir, "src.qcow2", size, opts)
		qemuIO(t, p, "qcow2", convOps(size))
		return p, "qcow2"
	}
}

func TestConvertMatchesQEMU(t *testing.T) {
	needQEMU(t)
	const size = 16<<20 + 3*512 // not a whole number of clusters
	def := ConvertOptions{Sparse: 4096, Threads: 3}
	with := func(f func(o *ConvertOptions)) ConvertOptions { o := def; f(&o); return o }
	compressedSome := func(t *testing.T, dir, src, ours, theirs string) {
		if n, m := qemuCompressedCount(t, ours), qemuCompressedCount(t, theirs); n == 0 || n != m {
			t.Errorf("%d compressed clusters in ours, %d in qemu-img's; want the same, > 0", n, m)
		}
	}
	cases := []convCase{
		{name: "plain", build: qcowSource(size, ""), opts: def},
		{name: "compressed-source", build: func(t *testing.T, dir string) (string, string) {
			p, _ := qcowSource(size, "")(t, dir)
			qemuImg(t, dir, "convert", "-c", "-O", "qcow2", p, "srcz.qcow2")
			return filepath.Join(dir, "srcz.qcow2"), "qcow2"
		}, opts: def},
		{name: "backing-chain-qcow2", build: func(t *testing.T, dir string) (string, string) {
			base := createImage(t, dir, "base.qcow2", size, "cluster_size=4096")
			qemuIO(t, base, "qcow2", convOps(size))
			top := createImage(t, dir, "src.qcow2", size, "", "-b", "base.qcow2", "-F", "qcow2")
			qemuIO(t, top, "qcow2", []ioOp{write(0x55, 2<<20, 100<<10), zero(0, 128<<10), discard(12<<20, 64<<10)})
			return top, "qcow2"
		}, opts: def},
		{name: "backing-chain-raw", build: func(t *testing.T, dir string) (string, string) {
			makeRawFile(t, filepath.Join(dir, "base.raw"), 6<<20, 7) // shorter than the top
			top := createImage(t, dir, "src.qcow2", size, "", "-b", "base.raw", "-F", "raw")
			qemuIO(t, top, "qcow2", []ioOp{write(0x55, 2<<20, 100<<10), zero(0, 128<<10)})
			return top, "qcow2"
		}, opts: def},
		{name: "snapshot", build: func(t *testing.T, dir string) (string, string) {
			p, _ := qcowSource(size, "")(t, dir)
			qemuImg(t, dir, "snapshot", "-c", "snap1", p)
			qemuIO(t, p, "qcow2", []ioOp{write(0x77, 0, 4<<20), zero(12<<20, 1<<20)})
			// qemu-img convert -l takes the image's current size.
			qemuImg(t, dir, "resize", p, "20M")
			return p, "qcow2"
		}, opts: with(func(o *ConvertOptions) { o.Snapshot = "snap1" }), qemu: []string{"-l", "snapshot.name=snap1"}},
		{name: "extended-l2", build: func(t *testing.T, dir string) (string, string) {
			p := createImage(t, dir, "src.qcow2", size, "extended_l2=on,cluster_size=64k")
			qemuIO(t, p, "qcow2", append(convOps(size), write(0x19, 4<<20+2048, 2048), zero(4<<20+8192, 2048)))
			return p, "qcow2"
		}, opts: with(func(o *ConvertOptions) { o.Create.ExtendedL2 = true }), qemu: []string{"-o", "extended_l2=on"}},
		{name: "cluster-512", build: qcowSource(size, "cluster_size=512"),
			opts: with(func(o *ConvertOptions) { o.Create.ClusterSize = 512 }), qemu: []string{"-o", "cluster_size=512"}},
		{name: "cluster-2M", build: qcowSource(size, "cluster_size=2M"),
			opts: with(func(o *ConvertOptions) { o.Create.ClusterSize = 2 << 20 }), qemu: []string{"-o", "cluster_size=2M"}},
		{name: "compress-zlib", build: qcowSource(size, ""),
			opts: with(func(o *ConvertOptions) { o.Compress = true }), qemu: []string{"-c"}, verify: compressedSome},
		{name: "compress-zstd-512", build: qcowSource(size, "cluster_size=512"),
			opts: with(func(o *ConvertOptions) {
				o.Compress = true
				o.Create.CompressionType = "zstd"
				o.Create.ClusterSize = 512
			}),
			qemu: []string{"-c", "-o", "compression_type=zstd,cluster_size=512"}, verify: compressedSome},
		{name: "compress-zstd-2M", build: qcowSource(size, ""),
			opts: with(func(o *ConvertOptions) {
				o.Compress = true
				o.Create.CompressionType = "zstd"
				o.Create.ClusterSize = 2 << 20
			}),
			qemu: []string{"-c", "-o", "compression_type=zstd,cluster_size=2M"}, verify: compressedSome},
		{name: "external-data-file", build: func(t *testing.T, dir string) (string, string) {
			p := createImage(t, dir, "src.qcow2", size, "data_file=src.data")
			qemuIO(t, p, "qcow2", convOps(size))
			return p, "qcow2"
		}, opts: def},
		{name: "raw-in", build: func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "src.raw")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			f.Truncate(size)
			f.Close()
			qemuIO(t, p, "raw", convOps(size))
			return p, "raw"
		}, opts: with(func(o *ConvertOptions) { o.SourceFormat = "raw" }), verify: func(t *testing.T, dir, src, ours, theirs string) {
			for _, e := range qemuMapAll(t, ours) {
				if e.Start >= 8<<20 && e.Start < 9<<20 && e.Data {
					t.Errorf("zeros of the raw source at %d were written: %+v", e.Start, e)
				}
			}
		}},
		{name: "raw-out", build: qcowSource(size, ""),
			opts: with(func(o *ConvertOptions) { o.OutputFormat = "raw" }), qemu: []string{"-O", "raw"},
			verify: func(t *testing.T, dir, src, ours, theirs string) {
				// Holes where the source is unallocated, zero, or data of zeros.
				for _, off := range []int64{1 << 20, 4 << 20, 8 << 20, 8<<20 + 512<<10} {
					if d := seekData(t, ours, off); d == off {
						t.Errorf("raw target has data at %d (want a hole)", off)
					}
				}
			}},
		{name: "raw-out-S0", build: qcowSource(size, ""),
			opts: with(func(o *ConvertOptions) { o.OutputFormat = "raw"; o.Sparse = 0 }), qemu: []string{"-O", "raw", "-S", "0"},
			verify: func(t *testing.T, dir, src, ours, theirs string) {
				var st unix.Stat_t
				if err := unix.Stat(ours, &st); err != nil || st.Blocks*512 < size {
					t.Errorf("-S 0: raw target not fully allocated: %d blocks, %v", st.Blocks, err)
				}
			}},
		{name: "sparse-64k", build: qcowSource(size, ""),
			opts: with(func(o *ConvertOptions) { o.Sparse = 64 << 10 }), qemu: []string{"-S", "64k"},
			verify: func(t *testing.T, dir, src, ours, theirs string) {
				for _, e := range qemuMapAll(t, ours) {
					if e.Start < 9<<20 && e.Start+e.Length > 8<<20 && e.Data {
						t.Errorf("zeros at 8M written: %+v", e)
					}
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, srcFmt := tc.build(t, dir)
			ext, outFmt := ".qcow2", "qcow2"
			if tc.opts.OutputFormat == "raw" {
				ext, outFmt = ".raw", "raw"
			}
			ours := filepath.Join(dir, "ours"+ext)
			if err := Convert(src, ours, tc.opts); err != nil {
				t.Fatal(err)
			}
			theirs := filepath.Join(dir, "theirs"+ext)
			qemuImg(t, dir, append(append([]string{"convert", "-f", srcFmt, "-O", outFmt}, tc.qemu...), src, theirs)...)
			checkAgainstQEMU(t, src, srcFmt, ours, outFmt, theirs, tc.opts.Snapshot != "")
			if tc.verify != nil {
				tc.verify(t, dir, src, ours, theirs)
			}
		})
	}
}

func seekData(t *testing.T, path string, off int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil {
		return -1
	}
	return d
}

// TestConvertBacking: -B writes only what differs from the backing file:
// clusters equal to it stay unallocated (qemu-img map: not in the top
// layer), zeros over its data become zero clusters; the result matches
// the source, for a qcow2 and a raw backing file, plain and compressed.
func TestConvertBacking(t *testing.T) {
	needQEMU(t)
	const size = 8 << 20
	for _, bfmt := range []string{"qcow2", "raw"} {
		for _, compress := range []bool{false, true} {
			name := bfmt
			if compress {
				name += "-c"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				var base string
				if bfmt == "qcow2" {
					base = createImage(t, dir, "base.qcow2", size, "")
				} else {
					base = filepath.Join(dir, "base.raw")
					os.WriteFile(base, nil, 0o644)
					os.Truncate(base, size)
				}
				shared := []ioOp{write(0x11, 0, 2<<20), write(0x22, 4<<20, 1<<20), write(0x33, 7<<20, 64<<10)}
				qemuIO(t, base, bfmt, shared)
				// The source: a standalone image with the same data, but for
				// one changed cluster, a zeroed cluster, and new data.
				src := createImage(t, dir, "src.qcow2", size, "")
				qemuIO(t, src, "qcow2", append(shared,
					write(0x44, 1<<20, 64<<10), // differs
					zero(4<<20, 64<<10),        // zeros over backing data
					write(0x55, 6<<20, 128<<10)))
				target := filepath.Join(dir, "t.qcow2")
				err := Convert(src, target, ConvertOptions{BackingFile: filepath.Base(base), BackingFormat: bfmt, Sparse: 4096, Compress: compress, Threads: 2})
				if err != nil {
					t.Fatal(err)
				}
				qemuImg(t, dir, "compare", "-f", "qcow2", "-F", "qcow2", src, target)
				qemuImg(t, dir, "check", target)
				out := string(qemuImg(t, dir, "info", target))
				if !strings.Contains(out, "backing file: "+filepath.Base(base)) {
					t.Errorf("target's backing file not %s:\n%s", filepath.Base(base), out)
				}
				// In the top layer (depth 0): exactly the changed clusters.
				var top []span
				for _, e := range qemuMapAll(t, target) {
					if e.Depth == 0 && e.Present {
						top = append(top, span{Start: e.Start, End: e.Start + e.Length, Data: e.Data})
					}
				}
				want := []span{{Start: 1 << 20, End: 1<<20 + 64<<10, Data: true}, {Start: 4 << 20, End: 4<<20 + 64<<10}, {Start: 6 << 20, End: 6<<20 + 128<<10, Data: true}}
				if len(top) != len(want) {
					t.Fatalf("top layer holds %v, want %v", top, want)
				}
				for i := range want {
					if top[i].Start != want[i].Start || top[i].End != want[i].End || top[i].Data != want[i].Data {
						t.Errorf("top layer holds %v, want %v", top, want)
						break
					}
				}
			})
		}
	}
}

// TestCompressSplit: CompressCluster then StoreCompressed writes what
// WriteCompressed writes; CompressCluster runs concurrently and touches
// nothing; StoreCompressed packs in the order stored.
func TestCompressSplit(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	const cs = 64 << 10
	p := createImage(t, dir, "t.qcow2", 8*cs+1024, "")
	img, err := Open(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	datas := make([][]byte, 9)
	ccs := make([]CompressedCluster, 9)
	done := make(chan error, 9)
	for i := range datas {
		n := cs
		if i == 8 {
			n = 1024
		}
		datas[i] = bytes.Repeat([]byte{byte(i + 1), 0, byte(i)}, n/3+1)[:n]
		if i == 3 {
			rand.New(rand.NewSource(3)).Read(datas[i]) // incompressible
		}
		go func(i int) {
			var err error
			ccs[i], err = img.CompressCluster(int64(i)*cs, datas[i])
			done <- err
		}(i)
	}
	for range datas {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := img.CompressCluster(100, datas[0]); err == nil {
		t.Error("CompressCluster at an unaligned offset: no error")
	}
	if _, err := img.CompressCluster(0, datas[0][:100]); err == nil {
		t.Error("CompressCluster of a short cluster: no error")
	}
	for i := range ccs {
		if err := img.StoreCompressed(ccs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.StoreCompressed(CompressedCluster{}); err == nil {
		t.Error("StoreCompressed of a zero CompressedCluster: no error")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, dir, "check", p)
	raw := convertToRaw(t, p, dir)
	got, _ := os.ReadFile(raw)
	want := bytes.Join(datas, nil)
	if !bytes.Equal(got, want) {
		t.Errorf("content differs at %d", firstDiff(got, want))
	}
	if n := qemuCompressedCount(t, p); n != 8 {
		t.Errorf("%d compressed clusters, want all but cluster 3 (8)", n)
	}
	if ccs[3].Compressed() || !ccs[0].Compressed() {
		t.Errorf("Compressed(): cluster 3 %v (want false), cluster 0 %v (want true)", ccs[3].Compressed(), ccs[0].Compressed())
	}
}
