// Differential tests of commit and rebase against QEMU, their refusals, and
// an idle read-write open leaving the file byte for byte as it was.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// mtCopyDir copies every regular file of src into a new directory (images
// name each other relatively, so chains survive the copy).
func mtCopyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			mtCopy(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
		}
	}
	return dst
}

func TestCommit(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name     string
		baseOpts string // "raw" for a raw backing file
		baseSize int64
		topOpts  string
		topSize  int64
		snap     bool // top has an internal snapshot
		compr    bool
	}
	cases := []tc{
		{name: "qcow2", baseSize: 4 << 20, topSize: 4 << 20},
		{name: "v2", baseOpts: "compat=0.10", baseSize: 4 << 20, topOpts: "compat=0.10", topSize: 4 << 20},
		{name: "raw-base", baseOpts: "raw", baseSize: 4 << 20, topSize: 4 << 20},
		{name: "smaller-base", baseSize: 2 << 20, topSize: 5 << 20},
		{name: "smaller-raw-base", baseOpts: "raw", baseSize: 1 << 20, topSize: 3 << 20},
		{name: "extl2-top", baseSize: 4 << 20, topOpts: "extended_l2=on", topSize: 4 << 20},
		{name: "c512-base-compressed-top", baseOpts: "cluster_size=512", baseSize: 2 << 20, topOpts: "cluster_size=4096", topSize: 2 << 20, compr: true},
		{name: "top-with-snapshot", baseSize: 4 << 20, topSize: 4 << 20, snap: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var bfile, bfmt string
			if c.baseOpts == "raw" {
				bfile, bfmt = "base.raw", "raw"
				b := bytes.Repeat([]byte{0x44}, int(c.baseSize))
				if err := os.WriteFile(filepath.Join(dir, bfile), b, 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				bfile, bfmt = "base.qcow2", "qcow2"
				mtQemuCreate(t, filepath.Join(dir, bfile), c.baseSize, c.baseOpts)
				mtIO(t, filepath.Join(dir, bfile), fmt.Sprintf("write -P 0x44 0 %d", c.baseSize/2))
			}
			top := mtQemuCreate(t, filepath.Join(dir, "top.qcow2"), c.topSize, c.topOpts, "-b", bfile, "-F", bfmt)
			w := "write"
			if c.compr {
				w = "write -c"
			}
			mtIO(t, top, w+" -P 0x55 0 64k", "write -P 0x56 100000 5000", "write -z 512k 128k",
				fmt.Sprintf("write -P 0x57 %d 4096", c.topSize-4096))
			if c.snap {
				runCombined(t, dir, "qemu-img", "snapshot", "-c", "s", top)
				mtIO(t, top, "write -P 0x58 8k 8k")
			}
			var snapBefore []byte
			if c.snap {
				snapBefore = mtRaw(t, top, "-l", "snapshot.name=s")
			}
			want := mtRaw(t, top)
			qdir := mtCopyDir(t, dir)
			runCombined(t, qdir, "qemu-img", "commit", "-q", "top.qcow2")

			var reports int
			if err := Commit(top, MaintenanceOptions{Progress: func(done, total int64) { reports++ }}); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if reports == 0 {
				t.Error("no progress reported")
			}
			qemuCheckClean(t, top)
			if bfmt == "qcow2" {
				qemuCheckClean(t, filepath.Join(dir, bfile))
			}
			mtSameBytes(t, "top after commit", mtRaw(t, top), want)
			mtSameBytes(t, "top after commit (ours)", mtOurs(t, top), want)
			ourBase := filepath.Join(dir, bfile)
			theirBase := filepath.Join(qdir, bfile)
			if bfmt == "raw" {
				a, _ := os.ReadFile(ourBase)
				b, _ := os.ReadFile(theirBase)
				mtSameBytes(t, "raw backing file vs QEMU's commit", a, b)
			} else {
				mtSameBytes(t, "backing file vs QEMU's commit", mtRaw(t, ourBase), mtRaw(t, theirBase))
			}
			// The top is empty: nothing of its own is left.
			for _, e := range mtMap(t, top) {
				if e.Depth == 0 && (e.Data || e.Zero) {
					t.Errorf("top still holds %+v after commit", e)
				}
			}
			if c.snap {
				mtSameBytes(t, "top's snapshot after commit", mtRaw(t, top, "-l", "snapshot.name=s"), snapBefore)
			}
		})
	}
}

func TestCommitRefusals(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	alone := mtQemuCreate(t, filepath.Join(dir, "alone.qcow2"), 1<<20, "")
	if err := Commit(alone); err == nil || !strings.Contains(err.Error(), "no backing file") {
		t.Errorf("commit without a backing file: %v", err)
	}
	mtQemuCreate(t, filepath.Join(dir, "base.qcow2"), 1<<20, "")
	top := mtQemuCreate(t, filepath.Join(dir, "top.qcow2"), 1<<20, "", "-b", "base.qcow2", "-F", "qcow2")
	mtIO(t, top, "write -P 1 0 4k")
	// The top in use (mounted read-write): refused, nothing written.
	img, err := Open(top, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var le *LockError
	if err := Commit(top); !errors.As(err, &le) {
		t.Errorf("commit of an image in use: %v", err)
	}
	img.Close()
	// The backing file in use by another reader of it: refused.
	other, err := Open(filepath.Join(dir, "base.qcow2"), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Commit(top); !errors.As(err, &le) {
		t.Errorf("commit into a backing file in use: %v", err)
	}
	other.Close()
	qemuCheckClean(t, top)
	if got := mtRaw(t, filepath.Join(dir, "base.qcow2")); !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Error("backing file changed by a refused commit")
	}
}

func TestRebase(t *testing.T) {
	needQEMU(t)
	type tc struct {
		name       string
		topOpts    string
		newBacking string // file name in the test dir ("" removes the backing file)
		newFormat  string
		unsafe     bool
	}
	cases := []tc{
		{name: "drop-middle", newBacking: "base0.qcow2", newFormat: "qcow2"},
		{name: "drop-middle-probe-format", newBacking: "base0.qcow2"},
		{name: "standalone", newBacking: ""},
		{name: "onto-raw", newBacking: "other.raw", newFormat: "raw"},
		{name: "onto-shorter", newBacking: "short.qcow2", newFormat: "qcow2"},
		{name: "extl2-top", topOpts: "extended_l2=on", newBacking: "other.raw", newFormat: "raw"},
		{name: "v2-top", topOpts: "compat=0.10", newBacking: "base0.qcow2", newFormat: "qcow2"},
		{name: "unsafe", newBacking: "other.raw", newFormat: "raw", unsafe: true},
		{name: "unsafe-remove", newBacking: "", unsafe: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			const size = 4 << 20
			b0 := mtQemuCreate(t, filepath.Join(dir, "base0.qcow2"), size, "")
			mtIO(t, b0, "write -P 0x10 0 4M")
			b1 := mtQemuCreate(t, filepath.Join(dir, "base1.qcow2"), size, "", "-b", "base0.qcow2", "-F", "qcow2")
			mtIO(t, b1, "write -P 0x11 1M 1M", "write -z 3M 64k")
			raw := bytes.Repeat([]byte{0x10}, size)
			copy(raw[2<<20:], bytes.Repeat([]byte{0x99}, 700000))
			if err := os.WriteFile(filepath.Join(dir, "other.raw"), raw, 0o644); err != nil {
				t.Fatal(err)
			}
			short := mtQemuCreate(t, filepath.Join(dir, "short.qcow2"), 1<<20, "")
			mtIO(t, short, "write -P 0x10 0 1M")
			top := mtQemuCreate(t, filepath.Join(dir, "top.qcow2"), size, c.topOpts, "-b", "base1.qcow2", "-F", "qcow2")
			mtIO(t, top, "write -P 0x20 0 100k", "write -P 0x21 1500k 3000", "write -z 2M 4096")
			before := mtRaw(t, top)

			qdir := mtCopyDir(t, dir)
			qargs := []string{"rebase", "-q", "-b", c.newBacking}
			if c.newFormat != "" {
				qargs = append(qargs, "-F", c.newFormat)
			} else if c.newBacking != "" {
				qargs = append(qargs, "-F", "qcow2")
			}
			if c.unsafe {
				qargs = append(qargs, "-u")
			}
			runCombined(t, qdir, "qemu-img", append(qargs, "top.qcow2")...)

			if err := Rebase(top, c.newBacking, c.newFormat, c.unsafe); err != nil {
				t.Fatalf("Rebase: %v", err)
			}
			qemuCheckClean(t, top)
			in := qemuImageInfo(t, top)
			if in.BackingFilename != c.newBacking {
				t.Errorf("backing file %q, want %q", in.BackingFilename, c.newBacking)
			}
			qin := qemuImageInfo(t, filepath.Join(qdir, "top.qcow2"))
			if in.BackingFormat != qin.BackingFormat {
				t.Errorf("backing format %q, QEMU's rebase wrote %q", in.BackingFormat, qin.BackingFormat)
			}
			if !reflect.DeepEqual(in.FormatSpecific.Data, qin.FormatSpecific.Data) {
				t.Errorf("format-specific info %+v, QEMU's %+v", in.FormatSpecific.Data, qin.FormatSpecific.Data)
			}
			got := mtRaw(t, top)
			mtSameBytes(t, "content vs QEMU's rebase", got, mtRaw(t, filepath.Join(qdir, "top.qcow2")))
			mtSameBytes(t, "content (ours)", mtOurs(t, top), got)
			if !c.unsafe {
				mtSameBytes(t, "content kept by a safe rebase", got, before)
			}
			// The header still opens everywhere and takes writes.
			mtIO(t, top, "write -P 0x30 0 4k")
			qemuCheckClean(t, top)
		})
	}
}

func TestRebaseRefusals(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	top := mtQemuCreate(t, filepath.Join(dir, "top.qcow2"), 1<<20, "")
	for name, err := range map[string]error{
		"onto itself":         Rebase(top, "top.qcow2", "qcow2", false),
		"missing new backing": Rebase(top, "none.qcow2", "qcow2", false),
		"unsafe, no format":   Rebase(top, "none.qcow2", "", true),
		"bad format":          Rebase(top, "top.qcow2", "vmdk", true),
		"raw data file":       Rebase(mtQemuCreate(t, filepath.Join(dir, "df.qcow2"), 1<<20, "data_file=df.raw,data_file_raw=on"), "top.qcow2", "qcow2", true),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	qemuCheckClean(t, top)
	if in := qemuImageInfo(t, top); in.BackingFilename != "" {
		t.Fatalf("refused rebase left backing file %q", in.BackingFilename)
	}
}

// TestRebaseUnsafeMissingOldBacking: -u only rewrites the name, so the old
// backing file need not exist (the usual reason for -u: it moved).
func TestRebaseUnsafeMissingOldBacking(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	moved := filepath.Join(dir, "moved.qcow2")
	if err := os.Rename(base, moved); err != nil {
		t.Fatal(err)
	}
	if err := Rebase(top, moved, "qcow2", true); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, top)
	out := wrun(t, "qemu-img", "info", top)
	if !strings.Contains(out, "moved.qcow2") {
		t.Fatalf("backing name not rewritten:\n%s", out)
	}
}

// TestIdleWritableOpenKeepsFile: a read-write open that writes nothing
// leaves the file byte for byte as it was (length included).
func TestIdleWritableOpenKeepsFile(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "i.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
	wrun(t, "qemu-io", "-c", "write -P 0x11 0 100k", path)
	wrun(t, "qemu-img", "snapshot", "-c", "s", path)
	before, _ := os.ReadFile(path)
	im, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	im.ReadAt(buf, 0)
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatalf("idle writable open changed the file (%d → %d bytes)", len(before), len(after))
	}
}
