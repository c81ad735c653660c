// Helpers shared by the maintenance tests (create, check, snapshot, resize,
// commit/rebase). QEMU is the oracle throughout.

package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mtQemuCheck is `qemu-img check --output=json` on path.
type mtQemuCheckResult struct {
	Corruptions       int   `json:"corruptions"`
	Leaks             int   `json:"leaks"`
	CheckErrors       int   `json:"check-errors"`
	CorruptionsFixed  int   `json:"corruptions-fixed"`
	LeaksFixed        int   `json:"leaks-fixed"`
	ImageEndOffset    int64 `json:"image-end-offset"`
	TotalClusters     int64 `json:"total-clusters"`
	AllocatedClusters int64 `json:"allocated-clusters"`
}

func mtQemuCheck(t testing.TB, path string, extra ...string) mtQemuCheckResult {
	t.Helper()
	args := append([]string{"check", "--output=json"}, extra...)
	cmd := exec.Command("qemu-img", append(args, path)...)
	cmd.Dir = filepath.Dir(path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r mtQemuCheckResult
	if jerr := json.Unmarshal(stdout.Bytes(), &r); jerr != nil {
		t.Fatalf("qemu-img check %s: %v (%v)\n%s\n%s", path, err, jerr, stdout.String(), stderr.String())
	}
	return r
}

// mtRaw returns the guest content as qemu-img reads it (extra: e.g. -l).
func mtRaw(t testing.TB, path string, extra ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "content.raw")
	args := append([]string{"convert", "-U"}, extra...)
	runCombined(t, filepath.Dir(path), "qemu-img", append(args, "-O", "raw", path, out)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mtOurs returns the guest content as this package reads it.
func mtOurs(t testing.TB, path string) []byte {
	t.Helper()
	img, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	defer img.Close()
	buf := make([]byte, img.Size())
	if _, err := img.ReadAt(buf, 0); err != nil && len(buf) > 0 {
		t.Fatalf("ReadAt %s: %v", path, err)
	}
	return buf
}

func mtSameBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if i := firstDifference(got, want); i >= 0 {
		t.Fatalf("%s: first difference at %#x: got %#02x want %#02x", what, i, got[i], want[i])
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// mtIO runs qemu-io commands on an image.
func mtIO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := runCombined(t, filepath.Dir(path), "qemu-io", append(args, path)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %v on %s:\n%s", cmds, path, out)
	}
}

// mtQemuCreate makes an image with qemu-img create.
func mtQemuCreate(t testing.TB, path string, size int64, opts string, extra ...string) string {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, extra...)
	runCombined(t, filepath.Dir(path), "qemu-img", append(args, path, fmt.Sprint(size))...)
	return path
}

type mtMapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Depth  int   `json:"depth"`
	Zero   bool  `json:"zero"`
	Data   bool  `json:"data"`
}

func mtMap(t testing.TB, path string) []mtMapEntry {
	t.Helper()
	out := runCombined(t, filepath.Dir(path), "qemu-img", "map", "-U", "--output=json", path)
	var m []mtMapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", path, err, out)
	}
	return m
}

func TestCreateMatrix(t *testing.T) {
	needQEMU(t)
	const size = 3<<20 + 100 // rounded up to 3 MiB + 512
	type tc struct {
		name    string
		o       CreateOptions
		backing string // "qcow2" or "raw": a 4 MiB backing file is made
	}
	cases := []tc{
		{name: "default", o: CreateOptions{Size: size}},
		{name: "v2", o: CreateOptions{Size: size, Version: 2}},
		{name: "c512", o: CreateOptions{Size: size, ClusterSize: 512}},
		{name: "c2M", o: CreateOptions{Size: size, ClusterSize: 2 << 20}},
		{name: "c4k-lazy", o: CreateOptions{Size: size, ClusterSize: 4096, LazyRefcounts: true}},
		{name: "extl2", o: CreateOptions{Size: size, ExtendedL2: true}},
		{name: "refbits1", o: CreateOptions{Size: size, RefcountBits: 1}},
		{name: "refbits8", o: CreateOptions{Size: size, RefcountBits: 8, ClusterSize: 4096}},
		{name: "refbits64-c512", o: CreateOptions{Size: size, RefcountBits: 64, ClusterSize: 512}},
		{name: "zstd", o: CreateOptions{Size: size, CompressionType: "zstd"}},
		{name: "prealloc-metadata", o: CreateOptions{Size: size, Preallocation: "metadata", ClusterSize: 4096}},
		{name: "prealloc-falloc", o: CreateOptions{Size: size, Preallocation: "falloc"}},
		{name: "prealloc-full-v2", o: CreateOptions{Size: size, Preallocation: "full", Version: 2}},
		{name: "prealloc-metadata-extl2", o: CreateOptions{Size: size, Preallocation: "metadata", ExtendedL2: true, ClusterSize: 16384}},
		{name: "datafile", o: CreateOptions{Size: size, DataFile: "datafile.raw"}},
		{name: "datafile-raw", o: CreateOptions{Size: size, DataFile: "datafile.raw", DataFileRaw: true}},
		{name: "datafile-raw-full", o: CreateOptions{Size: size, DataFile: "datafile.raw", DataFileRaw: true, Preallocation: "full"}},
		{name: "backing-qcow2", o: CreateOptions{BackingFile: "base.qcow2"}, backing: "qcow2"},
		{name: "backing-raw-fmt", o: CreateOptions{BackingFile: "base.raw", BackingFormat: "raw", Size: size}, backing: "raw"},
		{name: "backing-extl2-prealloc", o: CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2", ExtendedL2: true, Preallocation: "metadata"}, backing: "qcow2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			var baseContent []byte
			switch c.backing {
			case "qcow2":
				base := mtQemuCreate(t, filepath.Join(dir, "base.qcow2"), 4<<20, "")
				mtIO(t, base, "write -P 0x5a 0 1M", "write -P 0x5b 3M 1M")
				baseContent = mtRaw(t, base)
			case "raw":
				baseContent = bytes.Repeat([]byte{0x77}, 4<<20)
				if err := os.WriteFile(filepath.Join(dir, "base.raw"), baseContent, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := Create(path, c.o); err != nil {
				t.Fatalf("Create: %v", err)
			}
			qemuCheckClean(t, path)
			o := c.o
			_ = o.normalize(path)
			wantSize := int64(size+511) &^ 511
			if c.o.Size == 0 {
				wantSize = 4 << 20
			}
			in := qemuImageInfo(t, path)
			d := in.FormatSpecific.Data
			compat := "1.1"
			if o.Version == 2 {
				compat = "0.10"
			}
			check := func(field string, got, want any) {
				t.Helper()
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("qemu-img info %s = %v, want %v", field, got, want)
				}
			}
			check("virtual-size", in.VirtualSize, wantSize)
			check("cluster-size", in.ClusterSize, o.ClusterSize)
			check("compat", d.Compat, compat)
			check("lazy-refcounts", d.LazyRefcounts, o.LazyRefcounts)
			check("refcount-bits", d.RefcountBits, o.RefcountBits)
			if o.Version >= 3 {
				check("compression-type", d.CompressionType, o.CompressionType)
				check("extended-l2", d.ExtendedL2, o.ExtendedL2)
			}
			check("data-file", d.DataFile, o.DataFile)
			check("data-file-raw", d.DataFileRaw, o.DataFileRaw)
			check("backing-filename", in.BackingFilename, o.BackingFile)
			if c.backing != "" {
				check("backing-filename-format", in.BackingFormat, c.backing)
			}
			if o.Preallocation != "off" {
				for _, e := range mtMap(t, path) {
					if !e.Data && c.backing == "" || e.Depth != 0 && c.backing == "" {
						t.Errorf("preallocated image: qemu-img map shows an unallocated run %+v", e)
					}
				}
			}
			// Content before any write: zeros or the backing file.
			want := make([]byte, wantSize)
			copy(want, baseContent)
			mtSameBytes(t, "qemu's view of the new image", mtRaw(t, path), want)
			mtSameBytes(t, "our view of the new image", mtOurs(t, path), want)
			// QEMU writes into it; both read it back the same.
			mtIO(t, path, "write -P 0xab 65536 70000", "read -P 0xab 65536 70000", "write -z 2M 512")
			qemuCheckClean(t, path)
			mtSameBytes(t, "our view after qemu-io writes", mtOurs(t, path), mtRaw(t, path))
			// And our writer too.
			img, err := Open(path, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.WriteAt(bytes.Repeat([]byte{0xcd}, 5000), wantSize-5000); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, path)
			mtSameBytes(t, "our view after our writes", mtOurs(t, path), mtRaw(t, path))
		})
	}
}

// TestCreateLongTableRuns: with 512-byte clusters and 64-bit refcounts a
// refcount block covers only 64 clusters, fewer than the L1 table of a
// 1 GiB image needs: the run allocator must place the blocks around it.
func TestCreateLongTableRuns(t *testing.T) {
	needQEMU(t)
	path := filepath.Join(t.TempDir(), "img.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 30, ClusterSize: 512, RefcountBits: 64}); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	mtIO(t, path, "write -P 1 0 64k", "write -P 2 1023M 1M", "read -P 2 1023M 1M")
	qemuCheckClean(t, path)
	if err := Resize(path, 3<<30, false); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	if err := SnapshotCreate(path, "s"); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	mtIO(t, path, "write -P 3 3071M 1M", "read -P 2 1023M 1M", "read -P 3 3071M 1M")
	qemuCheckClean(t, path)
}

func TestCreateValidation(t *testing.T) {
	dir := t.TempDir()
	bad := []CreateOptions{
		{Size: 1 << 20, ClusterSize: 1000},
		{Size: 1 << 20, ClusterSize: 256},
		{Size: 1 << 20, ClusterSize: 4 << 20},
		{Size: 1 << 20, Version: 4},
		{Size: 1 << 20, Version: 2, LazyRefcounts: true},
		{Size: 1 << 20, Version: 2, RefcountBits: 8},
		{Size: 1 << 20, RefcountBits: 3},
		{Size: 1 << 20, RefcountBits: 128},
		{Size: 1 << 20, ExtendedL2: true, ClusterSize: 8192},
		{Size: 1 << 20, Version: 2, ExtendedL2: true},
		{Size: 1 << 20, Version: 2, CompressionType: "zstd"},
		{Size: 1 << 20, CompressionType: "lzo"},
		{Size: 1 << 20, Version: 2, DataFile: "d.raw"},
		{Size: 1 << 20, DataFileRaw: true},
		{Size: 1 << 20, Preallocation: "everything"},
		{Size: -1},
		{Size: 1 << 62, ClusterSize: 512},
		{BackingFile: "does-not-exist.qcow2"},
		{BackingFile: "does-not-exist.qcow2", BackingFormat: "vmdk"},
		{Size: 1 << 20, BackingFormat: "raw"},
	}
	for i, o := range bad {
		path := filepath.Join(dir, fmt.Sprintf("bad%d.qcow2", i))
		err := Create(path, o)
		if err == nil {
			t.Errorf("Create(%+v) succeeded, want an error", o)
			continue
		}
		if !strings.Contains(err.Error(), dir) {
			t.Errorf("Create(%+v): error %q does not name the file", o, err)
		}
	}
	// Backing file plus preallocation needs extended L2.
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Create(filepath.Join(dir, "p.qcow2"), CreateOptions{BackingFile: "base.raw", Preallocation: "metadata"}); err == nil {
		t.Error("backing file + preallocation without extended L2 accepted")
	}
}

func TestCreateRefusesImageInUse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "busy.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	err = Create(path, CreateOptions{Size: 2 << 20})
	var le *LockError
	if !errors.As(err, &le) {
		t.Fatalf("Create over an image open read-write: %v, want a *LockError", err)
	}
	if img.Size() != 1<<20 {
		t.Fatal("size changed")
	}
}
