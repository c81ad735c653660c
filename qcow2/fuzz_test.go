// Fuzz targets for everything parsed from an untrusted image: the header
// and its extensions, whole images (Open + read + Map), the snapshot table,
// L2 entries / compressed cluster descriptors, and compressed data.
//
// The seed corpora under testdata/fuzz/<FuzzName>/ come from real images
// made by qemu-img/qemu-io; plain `go test` runs them. Regenerate them with
//
//	QCOW2_WRITE_FUZZ_SEEDS=1 go test -run TestFuzzSeedCorpus ./qcow2
//
// Fuzz with, e.g.,
//
//	go test -run=NONE -fuzz=FuzzOpen -fuzztime=20s -fuzzminimizetime=5s ./qcow2
//
// (minimizing every new input for the default 60 s would eat the budget).

package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseHeader(data)
		if err != nil {
			return
		}
		if h.Magic != Magic || (h.Version != 2 && h.Version != 3) {
			t.Fatalf("accepted magic %#x version %d", h.Magic, h.Version)
		}
		if h.Version == 3 && (h.HeaderLength < headerV3Len || h.HeaderLength%8 != 0) {
			t.Fatalf("accepted header_length %d", h.HeaderLength)
		}
		// The header survives a rewrite (as the write path will do).
		if h.HeaderLength <= 4096 {
			h2, err := parseHeader(h.encode())
			if err != nil || h2 != h {
				t.Fatalf("header round trip: %+v -> %+v, %v", h, h2, err)
			}
		}
		if int(h.HeaderLength) > len(data) {
			return
		}
		exts, err := parseExtensions(data[h.HeaderLength:])
		if err != nil {
			return
		}
		for _, e := range exts {
			if e.Type == ExtEnd {
				t.Fatal("end marker returned as an extension")
			}
			if e.Type == ExtFeatureTable {
				parseFeatureTable(e.Data)
			}
		}
		// Unknown extensions must be kept intact through a rewrite.
		again, err := parseExtensions(encodeExtensions(exts))
		if err != nil || !reflect.DeepEqual(again, exts) {
			t.Fatalf("extensions round trip: %v -> %v, %v", exts, again, err)
		}
	})
}

// allocLimit is what one FuzzOpen input may allocate in total: the first
// cluster, L1 table and caches of a small file, with a wide margin.
const allocLimit = 256 << 20

func FuzzOpen(f *testing.F) {
	// One file per fuzzing process, rewritten for every input (a fresh
	// temporary directory per input makes minimization crawl).
	p := filepath.Join(f.TempDir(), "fuzz.qcow2")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		defer func() {
			runtime.ReadMemStats(&ms)
			if n := ms.TotalAlloc - before; n > allocLimit {
				t.Fatalf("allocated %d MiB for a %d-byte image", n>>20, len(data))
			}
		}()

		// Never follow names in the image to other host files.
		img, err := Open(p, OpenOptions{ReadOnly: true, NoBacking: true, NoDataFile: true, CacheSize: 1 << 20})
		if err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("Open error does not name the file: %v", err)
			}
			return
		}
		defer img.Close()
		exerciseImage(t, img)
		for i, s := range img.Snapshots() {
			if i == 3 {
				break
			}
			sv, err := img.OpenSnapshot(s.ID)
			if err != nil {
				continue
			}
			exerciseImage(t, sv)
			sv.Close()
		}
		img.Info()
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		if after, err := os.ReadFile(p); err != nil || !bytes.Equal(after, data) {
			t.Fatalf("read-only open changed the file (%v)", err)
		}
	})
}

// exerciseImage reads a few ranges, maps and seeks; errors are fine, panics
// and broken contracts are not.
func exerciseImage(t *testing.T, img *Image) {
	size := img.Size()
	if size < 0 {
		t.Fatalf("negative size %d", size)
	}
	buf := make([]byte, 64<<10+3)
	for _, off := range []int64{0, 511, size / 2, size - 4096, size - 1} {
		if off < 0 || off >= size {
			continue
		}
		n, err := img.ReadAt(buf, off)
		if err == nil && n != len(buf) || n > len(buf) || err == io.EOF && off+int64(n) != size {
			t.Fatalf("ReadAt(%d at %d) = %d, %v (size %d)", len(buf), off, n, err, size)
		}
	}
	const window = 16 << 20
	for _, off := range []int64{0, max(0, size-window)} {
		exts, err := img.Map(off, window)
		if err != nil {
			continue
		}
		next := off
		for _, e := range exts {
			if e.Offset != next || e.Length <= 0 {
				t.Fatalf("Map(%d): extents do not tile: %+v at %d", off, e, next)
			}
			next += e.Length
		}
		if next != min(size, off+window) {
			t.Fatalf("Map(%d) ends at %d, want %d", off, next, min(size, off+window))
		}
	}
	if d, err := img.SeekData(0); err == nil && (d < -1 || d >= size) {
		t.Fatalf("SeekData(0) = %d, size %d", d, size)
	}
	if h, err := img.SeekHole(0); err == nil && (h < 0 || h > size) {
		t.Fatalf("SeekHole(0) = %d, size %d", h, size)
	}
}

func FuzzSnapshotTable(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, n uint16) {
		snaps, err := parseSnapshotTable(bytes.NewReader(data), 0, uint32(n), int64(len(data)))
		if err != nil {
			return
		}
		if len(snaps) != int(n) {
			t.Fatalf("asked for %d snapshots, got %d", n, len(snaps))
		}
		for i := range snaps {
			snaps[i].info(1 << 30)
		}
		// The table survives a rewrite.
		enc := encodeSnapshotTable(snaps)
		again, err := parseSnapshotTable(bytes.NewReader(enc), 0, uint32(len(snaps)), int64(len(enc)))
		if err != nil || !reflect.DeepEqual(again, snaps) {
			t.Fatalf("snapshot table round trip failed: %v", err)
		}
	})
}

func FuzzL2Entry(f *testing.F) {
	f.Fuzz(func(t *testing.T, word, bitmap uint64, clusterBits uint8, extL2, dataFile bool, sub uint8) {
		cb := uint(minClusterBits) + uint(clusterBits)%(maxClusterBits-minClusterBits+1)
		g := newGeometry(cb, extL2 && cb >= 14)
		g.dataFile = dataFile
		i := int(sub) % g.subclusters
		e := l2Entry{word: word, bitmap: bitmap}
		k, err := e.kind(&g, i)
		switch {
		case e.compressed():
			if k != kindCompressed || err != nil {
				t.Fatalf("compressed entry %#x: %v, %v", word, k, err)
			}
			host, length := compressedDescriptor(word, cb)
			if host < 0 || host >= 1<<(62-(cb-8)) || length < 1 || length > 2<<cb {
				t.Fatalf("descriptor %#x (cluster_bits %d): host %#x length %d", word, cb, host, length)
			}
		case err != nil:
		case k == kindNormal:
			host := e.hostOffset()
			if host%g.clusterSize != 0 || host == 0 && !(dataFile && e.copied()) {
				t.Fatalf("entry %#x/%#x: normal cluster at host %#x", word, bitmap, host)
			}
			if g.subclusters > 1 && (!e.subAllocated(i) || e.subZero(i)) {
				t.Fatalf("entry %#x/%#x: subcluster %d normal without its allocation bit", word, bitmap, i)
			}
		case k == kindZero:
			if g.subclusters == 1 && word&oflagZero == 0 || g.subclusters > 1 && !e.subZero(i) {
				t.Fatalf("entry %#x/%#x: zero without a zero flag", word, bitmap)
			}
		}
	})
}

func FuzzDecompress(f *testing.F) {
	f.Add(uint8(CompressionZlib), []byte{0x01, 0x00, 0x02, 0xff, 0xfd, 0xaa, 0xbb}, uint8(0))
	f.Fuzz(func(t *testing.T, typ uint8, in []byte, clusterBits uint8) {
		out := make([]byte, 1<<(minClusterBits+uint(clusterBits)%(maxClusterBits-minClusterBits+1)))
		decompress(typ%3, in, out) // an error is fine; a panic or hang is not
	})
}

// --- seed corpus ---

// seedSet is the seed corpus of one fuzz target: file name -> encoded args.
type seedSet map[string][]any

// TestFuzzSeedCorpus checks that every fuzz target has its QEMU-made seed
// corpus in testdata (so plain `go test` runs real images through the
// parsers); with QCOW2_WRITE_FUZZ_SEEDS=1 it first rebuilds the corpus.
func TestFuzzSeedCorpus(t *testing.T) {
	if os.Getenv("QCOW2_WRITE_FUZZ_SEEDS") == "1" {
		needQEMU(t)
		writeSeeds(t, buildSeeds(t))
	}
	for _, name := range []string{"FuzzParseHeader", "FuzzOpen", "FuzzSnapshotTable", "FuzzL2Entry"} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", name, "*"))
		if err != nil || len(files) < 3 {
			t.Errorf("%s: seed corpus missing or thin (%d files, %v); regenerate with QCOW2_WRITE_FUZZ_SEEDS=1", name, len(files), err)
		}
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
				t.Errorf("%s: not a corpus file (%v)", p, err)
				continue
			}
			if name == "FuzzOpen" {
				checkOpenSeed(t, p, b)
			}
		}
	}
}

// checkOpenSeed makes sure a FuzzOpen seed is a valid image, so the fuzzer
// starts from inputs that reach the deep paths (L2 tables, decompression).
func checkOpenSeed(t *testing.T, p string, corpus []byte) {
	line := strings.TrimSpace(strings.TrimPrefix(string(corpus), "go test fuzz v1\n"))
	q, ok := strings.CutPrefix(line, "[]byte(")
	q, ok2 := strings.CutSuffix(q, ")")
	data, err := strconv.Unquote(q)
	if !ok || !ok2 || err != nil {
		t.Errorf("%s: cannot decode seed (%v)", p, err)
		return
	}
	img := writeAndOpen(t, []byte(data))
	if img == nil {
		return
	}
	defer img.Close()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Errorf("%s: seed image does not read: %v", p, err)
	}
}

func writeAndOpen(t *testing.T, data []byte) *Image {
	p := filepath.Join(t.TempDir(), "seed.qcow2")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, OpenOptions{ReadOnly: true, NoBacking: true, NoDataFile: true})
	if err != nil {
		t.Errorf("seed image does not open: %v", err)
		return nil
	}
	return img
}

func writeSeeds(t *testing.T, seeds map[string]seedSet) {
	for target, set := range seeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, args := range set {
			var b strings.Builder
			b.WriteString("go test fuzz v1\n")
			for _, a := range args {
				switch v := a.(type) {
				case []byte:
					fmt.Fprintf(&b, "[]byte(%q)\n", v)
				default:
					fmt.Fprintf(&b, "%T(%v)\n", v, v)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// buildSeeds makes small images with QEMU and cuts seeds from them.
func buildSeeds(t *testing.T) map[string]seedSet {
	dir := t.TempDir()
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seeds := map[string]seedSet{"FuzzParseHeader": {}, "FuzzOpen": {}, "FuzzSnapshotTable": {}, "FuzzL2Entry": {}}
	ops := []ioOp{write(0x11, 0, 1500), zero(2048, 1024), write(0x22, 5000, 700), discard(512, 512), write(0x33, 60*kib, 100)}

	// Whole small images for FuzzOpen (512-byte clusters keep them small),
	// and their first bytes for FuzzParseHeader.
	images := []struct{ name, opts string }{
		{"v2", "compat=0.10,cluster_size=512"},
		{"v3", "cluster_size=512"},
		{"v3-lazy-refcount1", "cluster_size=512,lazy_refcounts=on,refcount_bits=1"},
		{"v3-refcount64", "cluster_size=512,refcount_bits=64"},
		{"v3-zstd", "cluster_size=512,compression_type=zstd"},
		{"extended-l2", "cluster_size=16384,extended_l2=on"},
	}
	for _, im := range images {
		p := createImage(t, dir, im.name+".qcow2", 64*kib, im.opts)
		qemuIO(t, p, "qcow2", ops)
		b := read(p)
		seeds["FuzzOpen"][im.name] = []any{b}
		seeds["FuzzParseHeader"][im.name] = []any{b[:min(len(b), 1024)]}
	}
	// Compressed clusters (deflate and zstd).
	src := makeRawFile(t, filepath.Join(dir, "src.raw"), 16*kib, 0x40)
	for _, ct := range []string{"zlib", "zstd"} {
		p := filepath.Join(dir, "compressed-"+ct+".qcow2")
		qemuImg(t, dir, "convert", "-c", "-O", "qcow2", "-o", "cluster_size=512,compression_type="+ct, src, p)
		b := read(p)
		seeds["FuzzOpen"]["compressed-"+ct] = []any{b}
		seeds["FuzzParseHeader"]["compressed-"+ct] = []any{b[:1024]}
		// Compressed descriptors from the first L2 table.
		h := readHeaderOf(t, p)
		l2 := int64(binary.BigEndian.Uint64(b[h.L1TableOffset:]) & l1EntryOffsetMask)
		for i := int64(0); i < 4; i++ {
			w := binary.BigEndian.Uint64(b[l2+8*i:])
			seeds["FuzzL2Entry"][fmt.Sprintf("compressed-%s-%d", ct, i)] = []any{w, uint64(0), uint8(0), false, false, uint8(0)}
		}
	}
	// Internal snapshots: the whole image, and the table for FuzzSnapshotTable.
	p := createImage(t, dir, "snap.qcow2", 64*kib, "cluster_size=512")
	qemuIO(t, p, "qcow2", ops)
	qemuImg(t, dir, "snapshot", "-c", "first", "snap.qcow2")
	qemuIO(t, p, "qcow2", []ioOp{write(0x44, 0, 4096)})
	qemuImg(t, dir, "snapshot", "-c", "second-with-a-longer-name", "snap.qcow2")
	qemuImg(t, dir, "resize", "snap.qcow2", "128K")
	b := read(p)
	seeds["FuzzOpen"]["snapshots"] = []any{b}
	h := readHeaderOf(t, p)
	seeds["FuzzSnapshotTable"]["two"] = []any{b[h.SnapshotsOffset:min(int(h.SnapshotsOffset)+512, len(b))], uint16(2)}
	seeds["FuzzSnapshotTable"]["one"] = []any{b[h.SnapshotsOffset:min(int(h.SnapshotsOffset)+512, len(b))], uint16(1)}
	seeds["FuzzSnapshotTable"]["three-truncated"] = []any{b[h.SnapshotsOffset:min(int(h.SnapshotsOffset)+150, len(b))], uint16(3)}

	// Headers that name other files or carry more extensions.
	createImage(t, dir, "base.qcow2", 64*kib, "cluster_size=512")
	for name, extra := range map[string][]string{
		"backing":  {"-b", "base.qcow2", "-F", "qcow2"},
		"datafile": {"-o", "data_file=data.bin,data_file_raw=on"},
		"luks":     {"--object", "secret,id=s0,data=x", "-o", "encrypt.format=luks,encrypt.key-secret=s0"},
	} {
		p := createImage(t, dir, name+".qcow2", 64*kib, "cluster_size=512", extra...)
		seeds["FuzzParseHeader"][name] = []any{read(p)[:1024]}
	}
	p = createImage(t, dir, "bitmap.qcow2", 64*kib, "cluster_size=512")
	qemuImg(t, dir, "bitmap", "--add", "bitmap.qcow2", "b0")
	seeds["FuzzParseHeader"]["bitmap"] = []any{read(p)[:1024]}
	seeds["FuzzOpen"]["bitmap"] = []any{read(p)}

	// L2 entries: standard, zero, extended (word + bitmap).
	for _, im := range []string{"v3", "extended-l2"} {
		b := read(filepath.Join(dir, im+".qcow2"))
		h := readHeaderOf(t, filepath.Join(dir, im+".qcow2"))
		l2 := int64(binary.BigEndian.Uint64(b[h.L1TableOffset:]) & l1EntryOffsetMask)
		ext := im == "extended-l2"
		esz := int64(8)
		if ext {
			esz = 16
		}
		for i := int64(0); i < 6; i++ {
			w := binary.BigEndian.Uint64(b[l2+esz*i:])
			var bm uint64
			if ext {
				bm = binary.BigEndian.Uint64(b[l2+esz*i+8:])
			}
			seeds["FuzzL2Entry"][fmt.Sprintf("%s-%d", im, i)] = []any{w, bm, uint8(h.ClusterBits - minClusterBits), ext, false, uint8(i)}
		}
	}
	seeds["FuzzL2Entry"]["datafile-offset0"] = []any{oflagCopied, uint64(0), uint8(7), false, true, uint8(0)}
	return seeds
}
