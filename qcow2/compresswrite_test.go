// Tests of WriteCompressed against QEMU: check clean, convert equal, exactly
// the compressible clusters mapped compressed, and copy-on-write from them.

package qcow2

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// compressContent fills cluster i of a test disk: incompressible noise,
// compressible text, twice half noise and half zeros (two runs of just
// over half a cluster: the second crosses into the next host cluster), or
// all zeros.
func compressContent(rng *rand.Rand, i int, cs int64) (data []byte, compressible bool) {
	data = make([]byte, cs)
	switch i % 5 {
	case 1:
		for o := 0; o < len(data); {
			o += copy(data[o:], fmt.Sprintf("cluster %d line %d: the quick brown fox\n", i, o/40))
		}
		return data, true
	case 0:
		rng.Read(data)
		return data, false
	case 2, 3:
		rng.Read(data[:cs/2])
		return data, true
	default:
		return data, true
	}
}

// qemuCompressedMap lists, per guest cluster, whether qemu-img map shows
// it as a compressed data cluster (QEMU 7 has no "compressed" field, but
// gives no host offset for a compressed cluster).
func qemuCompressedMap(t *testing.T, path string, cs int64, n int) []bool {
	t.Helper()
	var runs []struct {
		Start, Length int64
		Data          bool
		Offset        *int64
		Compressed    *bool
	}
	if err := json.Unmarshal(qemuImg(t, filepath.Dir(path), "map", "--output=json", path), &runs); err != nil {
		t.Fatal(err)
	}
	out := make([]bool, n)
	for _, r := range runs {
		c := r.Data && r.Offset == nil
		if r.Compressed != nil {
			c = *r.Compressed
		}
		for o := r.Start; o < r.Start+r.Length; o += cs {
			out[o/cs] = c
		}
	}
	return out
}

func qemuCompressedCount(t *testing.T, path string) int {
	t.Helper()
	out, _ := tryCmd(filepath.Dir(path), "qemu-img", "check", "--output=json", path)
	var r struct {
		Compressed int `json:"compressed-clusters"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("qemu-img check --output=json: %v\n%s", err, out)
	}
	return r.Compressed
}

// TestWriteCompressed: clusters of every kind of content written with
// WriteCompressed, QEMU the oracle: check clean, convert equals the data,
// the compressible clusters (only those) mapped compressed, our reader
// agrees; then partial overwrites (copy-on-write from a compressed
// cluster) and compressed rewrites of allocated clusters keep it so.
func TestWriteCompressed(t *testing.T) {
	needQEMU(t)
	for _, tc := range []struct {
		cluster int64
		n       int
		opts    string
	}{
		{4096, 64, "compression_type=zlib"},
		{4096, 64, "compression_type=zstd"},
		{65536, 24, "compression_type=zlib"},
		{65536, 24, "compression_type=zstd,extended_l2=on"},
		{65536, 24, "compression_type=zlib,extended_l2=on,refcount_bits=1"},
		{2 << 20, 6, "compression_type=zlib"},
		{2 << 20, 6, "compression_type=zstd,extended_l2=on"},
	} {
		t.Run(fmt.Sprintf("cluster%d-%s", tc.cluster, tc.opts), func(t *testing.T) {
			dir := t.TempDir()
			cs := tc.cluster
			// The last cluster is a partial one.
			size := int64(tc.n)*cs - 1536
			path := createImage(t, dir, "c.qcow2", size, "cluster_size="+strconv.FormatInt(cs, 10)+","+tc.opts)
			rng := rand.New(rand.NewSource(cs + int64(len(tc.opts))))
			want := make([]byte, size)
			compressible := make([]bool, tc.n)
			img, err := Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.n {
				d, ok := compressContent(rng, i, cs)
				off := int64(i) * cs
				d = d[:min(cs, size-off)]
				copy(want[off:], d)
				compressible[i] = ok
				if err := img.WriteCompressed(off, d); err != nil {
					t.Fatalf("cluster %d: %v", i, err)
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			verify := func(stage string, expectCompressed []bool) {
				t.Helper()
				qemuCheckClean(t, path)
				raw := filepath.Join(dir, stage+".raw")
				qemuImg(t, dir, "convert", "-O", "raw", path, raw)
				got, err := os.ReadFile(raw)
				if err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(got, want); i >= 0 {
					t.Fatalf("%s: qemu-img convert differs at %d", stage, i)
				}
				m := qemuCompressedMap(t, path, cs, tc.n)
				nc := 0
				for i, c := range expectCompressed {
					if m[i] != c {
						t.Fatalf("%s: cluster %d compressed=%v in qemu-img map, want %v", stage, i, m[i], c)
					}
					if c {
						nc++
					}
				}
				if got := qemuCompressedCount(t, path); got != nc {
					t.Fatalf("%s: qemu-img check counts %d compressed clusters, want %d", stage, got, nc)
				}
				r, err := Open(path, OpenOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				buf := make([]byte, size)
				if _, err := r.ReadAt(buf, 0); err != nil {
					t.Fatal(err)
				}
				if i := firstDiff(buf, want); i >= 0 {
					t.Fatalf("%s: our reader differs at %d", stage, i)
				}
			}
			verify("written", compressible)
			// Packed back to back: runs share host clusters, and some run
			// crosses into the next host cluster.
			if !strings.Contains(tc.opts, "refcount_bits=1") {
				r, err := Open(path, OpenOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				hostClusters := map[int64]bool{}
				ncomp, crossing := 0, 0
				r.s.mu.Lock()
				for c := range int64(tc.n) {
					e, err := r.lookup(c)
					if err != nil {
						t.Fatal(err)
					}
					if !e.compressed() {
						continue
					}
					if e.bitmap != 0 {
						t.Fatalf("compressed entry with subcluster bitmap %#x", e.bitmap)
					}
					host, length := compressedDescriptor(e.word, r.s.g.clusterBits)
					ncomp++
					hostClusters[host>>r.s.g.clusterBits] = true
					end := host&^511 + (length+host&511+511)/512*512
					if (end-1)>>r.s.g.clusterBits != host>>r.s.g.clusterBits {
						crossing++
					}
				}
				r.s.mu.Unlock()
				r.Close()
				if len(hostClusters) >= ncomp || crossing == 0 {
					t.Fatalf("%d compressed clusters in %d host clusters, %d crossing a cluster boundary", ncomp, len(hostClusters), crossing)
				}
			}
			// Smaller than the same disk written normally (packed: the
			// compressed runs share host clusters unless 1-bit refcounts
			// forbid it).
			plain := createImage(t, dir, "plain.qcow2", size, "cluster_size="+strconv.FormatInt(cs, 10)+","+tc.opts)
			pimg, err := Open(plain, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pimg.WriteAt(want, 0); err != nil {
				t.Fatal(err)
			}
			if err := pimg.Close(); err != nil {
				t.Fatal(err)
			}
			ci, err1 := os.Stat(path)
			pi, err2 := os.Stat(plain)
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			packs := !strings.Contains(tc.opts, "refcount_bits=1")
			if ci.Size() > pi.Size() || packs && ci.Size() == pi.Size() {
				t.Fatalf("compressed image is %d bytes, the plain one %d", ci.Size(), pi.Size())
			}

			// Overwrite through WriteAt (copy-on-write out of compressed
			// clusters), and rewrite allocated clusters compressed.
			img, err = Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			state := append([]bool(nil), compressible...)
			for i := 0; i < tc.n; i += 3 {
				off := int64(i)*cs + cs/4
				p := bytes.Repeat([]byte{byte(0x40 + i)}, 777)
				if _, err := img.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], p)
				state[i] = false
			}
			for _, i := range []int{1, 3, 4} {
				off := int64(i) * cs
				d := bytes.Repeat([]byte("rewritten "), int(cs)/10+1)[:cs]
				if _, err := img.WriteAt(d[:100], off); err != nil { // make it a normal cluster first
					t.Fatal(err)
				}
				if err := img.WriteCompressed(off, d); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], d)
				state[i] = true
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			verify("overwritten", state)
		})
	}
}
