// Differential tests of the write path: the same writes through Image and
// through QEMU across image options (versions, cluster sizes, extended L2,
// backing files, snapshots, compression, data file, bitmaps), compared with
// what QEMU reads and checked with qemu-img check.

package qcow2

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func wrun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuCheck runs qemu-img check and fails on corruption or leaks.
func qemuCheck(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
}

// qemuRaw returns the image's content as QEMU reads it.
func qemuRaw(t *testing.T, path string, extra ...string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "out.raw")
	args := append([]string{"convert", "-O", "raw"}, extra...)
	args = append(args, path, raw)
	wrun(t, "qemu-img", args...)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func diffAt(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("length %d vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at %#x: got %#02x want %#02x", i, a[i], b[i])
		}
	}
	return ""
}

type writeCase struct {
	name     string
	opts     string // qemu-img create -o
	size     int64
	backing  string // "", "raw", "qcow2"
	snap     bool
	compr    bool // start from a compressed image
	datafile bool
	bitmaps  bool // persistent dirty bitmaps (one enabled, one disabled)
}

func TestWriteDifferential(t *testing.T) {
	needQEMU(t)
	cases := []writeCase{
		{name: "v3-64k", opts: "compat=1.1,cluster_size=65536", size: 8 << 20},
		{name: "v2-64k", opts: "compat=0.10,cluster_size=65536", size: 8 << 20},
		{name: "v3-512", opts: "compat=1.1,cluster_size=512", size: 2 << 20},
		{name: "v3-4k-rc1", opts: "compat=1.1,cluster_size=4096,refcount_bits=1", size: 4 << 20},
		{name: "v3-4k-rc64", opts: "compat=1.1,cluster_size=4096,refcount_bits=64", size: 4 << 20},
		{name: "v3-2M", opts: "compat=1.1,cluster_size=2097152", size: 16 << 20},
		{name: "lazy", opts: "compat=1.1,lazy_refcounts=on", size: 8 << 20},
		{name: "extl2-64k", opts: "compat=1.1,extended_l2=on,cluster_size=65536", size: 8 << 20},
		{name: "extl2-2M", opts: "compat=1.1,extended_l2=on,cluster_size=2097152", size: 16 << 20},
		{name: "backing-qcow2", opts: "compat=1.1,cluster_size=65536", size: 8 << 20, backing: "qcow2"},
		{name: "backing-raw-v2", opts: "compat=0.10,cluster_size=4096", size: 4 << 20, backing: "raw"},
		{name: "backing-extl2", opts: "compat=1.1,extended_l2=on", size: 8 << 20, backing: "qcow2"},
		{name: "snapshot", opts: "compat=1.1,cluster_size=4096", size: 4 << 20, snap: true},
		{name: "compressed", opts: "compat=1.1", size: 8 << 20, compr: true},
		{name: "datafile", opts: "compat=1.1", size: 8 << 20, datafile: true},
		{name: "bitmaps", opts: "compat=1.1,cluster_size=65536", size: 8 << 20, bitmaps: true},
		{name: "bitmaps-extl2-backing", opts: "compat=1.1,extended_l2=on", size: 8 << 20, backing: "qcow2", bitmaps: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testWriteCase(t, tc) })
	}
}

func testWriteCase(t *testing.T, tc writeCase) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	want := make([]byte, tc.size)
	rng := rand.New(rand.NewSource(int64(len(tc.name)) * 7919))
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Intn(255) + 1)
		}
	}
	args := []string{"create", "-q", "-f", "qcow2", "-o", tc.opts}
	switch tc.backing {
	case "raw":
		base := filepath.Join(dir, "base.raw")
		fill(want[:tc.size*3/4]) // backing shorter than the image
		if err := os.WriteFile(base, want[:tc.size*3/4], 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-b", "base.raw", "-F", "raw")
	case "qcow2":
		base := filepath.Join(dir, "base.qcow2")
		wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", base, fmt.Sprint(tc.size))
		wrun(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x5a 0 %d", tc.size/2), "-c", fmt.Sprintf("write -z %d 65536", tc.size/4), base)
		for i := int64(0); i < tc.size/2; i++ {
			want[i] = 0x5a
		}
		clear(want[tc.size/4 : tc.size/4+65536])
		args = append(args, "-b", "base.qcow2", "-F", "qcow2")
	}
	if tc.datafile {
		args = append(args, "-o", "data_file="+filepath.Join(dir, "img.data"))
	}
	if tc.compr {
		src := filepath.Join(dir, "src.raw")
		fill(want[:tc.size/2])
		os.WriteFile(src, want, 0o644)
		wrun(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", tc.opts, src, img)
	} else {
		wrun(t, "qemu-img", append(args, img, fmt.Sprint(tc.size))...)
	}
	if tc.bitmaps {
		wrun(t, "qemu-img", "bitmap", "--add", img, "b0")
		wrun(t, "qemu-img", "bitmap", "--add", "-g", "4096", "--disable", img, "b1")
	}
	var snapWant []byte
	if tc.snap {
		wrun(t, "qemu-io", "-c", fmt.Sprintf("write -P 0x33 0 %d", tc.size/2), img)
		for i := int64(0); i < tc.size/2; i++ {
			want[i] = 0x33
		}
		wrun(t, "qemu-img", "snapshot", "-c", "s1", img)
		snapWant = append([]byte(nil), want...)
	}
	var warns []string
	im, err := Open(img, OpenOptions{Warn: func(s string) { warns = append(warns, s) }})
	if err != nil {
		t.Fatal(err)
	}
	cs := im.ClusterSize()
	for op := 0; op < 300; op++ {
		var off, n int64
		switch rng.Intn(3) {
		case 0: // small unaligned
			off = rng.Int63n(tc.size)
			n = rng.Int63n(min(3*cs, 200000)) + 1
		case 1: // cluster aligned
			off = rng.Int63n(tc.size/cs) * cs
			n = cs * (rng.Int63n(4) + 1)
		default: // anywhere, spanning
			off = rng.Int63n(tc.size)
			n = rng.Int63n(tc.size/8) + 1
		}
		n = min(n, tc.size-off)
		if os.Getenv("WDEBUG") != "" {
			t.Logf("op %d off %d n %d", op, off, n)
		}
		switch k := rng.Intn(10); {
		case k < 6:
			b := make([]byte, n)
			fill(b)
			if _, err := im.WriteAt(b, off); err != nil {
				t.Fatalf("op %d write %d+%d: %v", op, off, n, err)
			}
			copy(want[off:], b)
		case k < 8:
			if err := im.WriteZeroes(off, n); err != nil {
				t.Fatalf("op %d zero %d+%d: %v", op, off, n, err)
			}
			clear(want[off : off+n])
		default:
			if err := im.Discard(off, n); err != nil {
				t.Fatalf("op %d discard %d+%d: %v", op, off, n, err)
			}
			clear(want[off : off+n])
		}
		if op%50 == 0 {
			if err := im.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if op%37 == 0 || os.Getenv("WDEBUG") != "" {
			got := make([]byte, tc.size)
			if _, err := im.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if d := diffAt(got, want); d != "" {
				t.Fatalf("after op %d: read back: %s", op, d)
			}
		}
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Errorf("warnings: %v", warns)
	}
	qemuCheck(t, img)
	if d := diffAt(qemuRaw(t, img), want); d != "" {
		t.Fatalf("qemu reads: %s", d)
	}
	if tc.bitmaps {
		// Kept, not in use, flags as they were (QEMU's view).
		info := wrun(t, "qemu-img", "info", "--output=json", img)
		for _, want := range []string{`"name": "b0"`, `"name": "b1"`, `"granularity": 4096`} {
			if !strings.Contains(info, want) {
				t.Fatalf("bitmaps after writes: %s missing from qemu-img info:\n%s", want, info)
			}
		}
		if strings.Contains(info, "in-use") {
			t.Fatalf("a bitmap is still in use after close:\n%s", info)
		}
	}
	if snapWant != nil {
		if d := diffAt(qemuRaw(t, img, "-l", "snapshot.name=s1"), snapWant); d != "" {
			t.Fatalf("snapshot s1 changed: %s", d)
		}
	}
	// Reopen and read back through our own reader too.
	im, err = Open(img, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	got := make([]byte, tc.size)
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("reopened: %s", diffAt(got, want))
	}
}
