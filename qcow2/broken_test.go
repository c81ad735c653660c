// Hand-made broken images: each must be refused (or, for damage found only
// while reading, fail the read) with an error that names the file and says
// what is wrong — never a panic, never silently wrong data.

package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// brokenCase makes a damaged image in dir and returns its path.
type brokenCase struct {
	name string
	make func(t *testing.T, dir string) string
	// want are substrings the error must contain (case-insensitive).
	want []string
	// notFormat: the error need not be a *FormatError (e.g. a missing
	// file is an os error), but it must still name the file in want.
	notFormat bool
}

// goodImage is the starting point for most cases: a v3 image with 64 KiB
// clusters, an L2 table and a data cluster.
func goodImage(t *testing.T, dir, name, opts string) string {
	t.Helper()
	p := createImage(t, dir, name, 1*mib, opts)
	qemuIO(t, p, "qcow2", []ioOp{write(0xaa, 0, 4096)})
	return p
}

// patched returns a brokenCase.make that patches a good image.
func patched(off int64, b []byte) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		p := goodImage(t, dir, "disk.qcow2", "")
		testenv.PatchFile(t, p, off, b)
		return p
	}
}

func truncated(n int64) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		p := goodImage(t, dir, "disk.qcow2", "")
		if err := os.Truncate(p, n); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// Header field offsets (docs/interop/qcow2.txt).
const (
	hdrVersion        = 4
	hdrBackingOffset  = 8
	hdrBackingSize    = 16
	hdrClusterBits    = 20
	hdrSize           = 24
	hdrCryptMethod    = 32
	hdrL1Size         = 36
	hdrL1Offset       = 40
	hdrRefTableOffset = 48
	hdrRefTableClust  = 56
	hdrNbSnapshots    = 60
	hdrSnapshotsOff   = 64
	hdrIncompat       = 72
	hdrRefcountOrder  = 96
	hdrHeaderLength   = 100
	hdrCompression    = 104
)

func brokenCases() []brokenCase {
	return []brokenCase{
		{name: "bad-magic", make: patched(0, []byte("QFI\x00")), want: []string{"magic"}},
		{name: "empty-file", make: truncated(0), want: []string{"too short"}},
		{name: "truncated-header-50", make: truncated(50), want: []string{"too short"}},
		{name: "truncated-v3-header-90", make: truncated(90), want: []string{"too short"}},
		{name: "truncated-inside-header-extensions", make: truncated(110), want: []string{"header"}},
		{name: "version-4", make: patched(hdrVersion, be32(4)), want: []string{"version 4"}},
		{name: "version-1", make: patched(hdrVersion, be32(1)), want: []string{"version 1"}},
		{name: "l1-past-eof", make: patched(hdrL1Offset, be64(1<<40)), want: []string{"L1 table", "end of the file"}},
		{name: "l1-unaligned", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "")
			h := readHeaderOf(t, p)
			testenv.PatchFile(t, p, hdrL1Offset, be64(h.L1TableOffset+512))
			return p
		}, want: []string{"L1 table", "aligned"}},
		{name: "l1-zero-offset", make: patched(hdrL1Offset, be64(0)), want: []string{"L1 table"}},
		{name: "l1-size-beyond-qemu-limit", make: patched(hdrL1Size, be32(32<<20/8+1)), want: []string{"L1 table too large"}},
		{name: "l1-too-small-for-size", make: patched(hdrSize, be64(1<<50)), want: []string{"L1 table too small"}},
		{name: "virtual-size-huge", make: patched(hdrSize, be64(1<<63)), want: []string{"size"}},
		{name: "refcount-table-past-eof", make: patched(hdrRefTableOffset, be64(1<<44)), want: []string{"refcount table"}},
		{name: "refcount-table-unaligned", make: patched(hdrRefTableOffset, be64(0x10000+8)), want: []string{"refcount table"}},
		{name: "refcount-table-too-large", make: patched(hdrRefTableClust, be32(1<<20)), want: []string{"refcount table"}},
		{name: "incompatible-bit-10", make: patched(hdrIncompat, be64(1<<10)), want: []string{"incompatible", "bit 10"}},
		{name: "incompatible-bit-63", make: patched(hdrIncompat, be64(1<<63)), want: []string{"incompatible", "bit 63"}},
		{name: "crypt-method-aes", make: patched(hdrCryptMethod, be32(1)), want: []string{"AES"}},
		{name: "crypt-method-unknown", make: patched(hdrCryptMethod, be32(7)), want: []string{"encryption"}},
		{name: "encrypted-luks", make: createLUKS, want: []string{"LUKS"}},
		{name: "cluster-bits-8", make: patched(hdrClusterBits, be32(8)), want: []string{"cluster_bits 8"}},
		{name: "cluster-bits-22", make: patched(hdrClusterBits, be32(22)), want: []string{"cluster_bits 22"}},
		{name: "cluster-bits-huge", make: patched(hdrClusterBits, be32(0xffffffff)), want: []string{"cluster_bits"}},
		{name: "refcount-order-7", make: patched(hdrRefcountOrder, be32(7)), want: []string{"refcount_order 7"}},
		{name: "header-length-odd", make: patched(hdrHeaderLength, be32(105)), want: []string{"header_length 105"}},
		{name: "header-length-short", make: patched(hdrHeaderLength, be32(100)), want: []string{"header_length 100"}},
		{name: "header-length-huge", make: patched(hdrHeaderLength, be32(1<<20)), want: []string{"header_length"}},
		{name: "compression-type-unknown", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "compression_type=zstd")
			testenv.PatchFile(t, p, hdrCompression, []byte{9})
			return p
		}, want: []string{"compression type 9"}},
		{name: "compression-type-without-bit", make: patched(hdrCompression, []byte{1}), want: []string{"compression type"}},
		{name: "extension-runs-past-cluster", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "")
			off := findExtension(t, p, ExtFeatureTable)
			if off < 0 {
				t.Fatal("no feature table extension")
			}
			testenv.PatchFile(t, p, off+4, be32(0x10000))
			return p
		}, want: []string{"extension", "past"}},
		{name: "extension-area-unterminated", make: func(t *testing.T, dir string) string {
			// Fill the rest of the first cluster with 8-byte extensions of
			// an unknown type and no end marker.
			p := goodImage(t, dir, "disk.qcow2", "")
			h := readHeaderOf(t, p)
			area := make([]byte, 64*kib-int64(h.HeaderLength))
			for i := 0; i+8 <= len(area); i += 8 {
				binary.BigEndian.PutUint32(area[i:], 0x12345678)
			}
			testenv.PatchFile(t, p, int64(h.HeaderLength), area)
			return p
		}, want: []string{"extension"}},
		{name: "snapshot-table-past-eof", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "")
			testenv.PatchFile(t, p, hdrNbSnapshots, be32(1))
			testenv.PatchFile(t, p, hdrSnapshotsOff, be64(1<<40))
			return p
		}, want: []string{"snapshot table"}},
		// (A bad snapshot entry does not refuse the image, as in QEMU:
		// TestSnapshotBadEntry.)
		{name: "too-many-snapshots", make: patched(hdrNbSnapshots, be32(1<<20)), want: []string{"snapshots"}},
		{name: "backing-name-outside-cluster", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "")
			testenv.PatchFile(t, p, hdrBackingOffset, be64(uint64(64*kib-4)))
			testenv.PatchFile(t, p, hdrBackingSize, be32(100))
			return p
		}, want: []string{"backing file name"}},
		{name: "backing-name-too-long", make: func(t *testing.T, dir string) string {
			p := goodImage(t, dir, "disk.qcow2", "")
			testenv.PatchFile(t, p, hdrBackingOffset, be64(4096))
			testenv.PatchFile(t, p, hdrBackingSize, be32(5000))
			return p
		}, want: []string{"backing file name"}},
		{name: "backing-loop-a-b-a", make: func(t *testing.T, dir string) string {
			createImage(t, dir, "x.qcow2", 1*mib, "")
			createImage(t, dir, "b.qcow2", 1*mib, "", "-b", "x.qcow2", "-F", "qcow2")
			a := createImage(t, dir, "a.qcow2", 1*mib, "", "-b", "b.qcow2", "-F", "qcow2")
			renameBacking(t, filepath.Join(dir, "b.qcow2"), "a.qcow2")
			return a
		}, want: []string{"loop", "a.qcow2"}},
		{name: "backing-loop-self", make: func(t *testing.T, dir string) string {
			createImage(t, dir, "x.qcow2", 1*mib, "")
			a := createImage(t, dir, "a.qcow2", 1*mib, "", "-b", "x.qcow2", "-F", "qcow2")
			renameBacking(t, a, "a.qcow2")
			return a
		}, want: []string{"loop", "a.qcow2"}},
		{name: "backing-missing", notFormat: true, make: func(t *testing.T, dir string) string {
			createImage(t, dir, "gone.qcow2", 1*mib, "")
			a := createImage(t, dir, "disk.qcow2", 1*mib, "", "-b", "gone.qcow2", "-F", "qcow2")
			os.Remove(filepath.Join(dir, "gone.qcow2"))
			return a
		}, want: []string{"disk.qcow2", "gone.qcow2", "no such file"}},
		{name: "backing-format-unknown", notFormat: true, make: func(t *testing.T, dir string) string {
			createImage(t, dir, "base.qcow2", 1*mib, "")
			a := createImage(t, dir, "disk.qcow2", 1*mib, "", "-b", "base.qcow2", "-F", "qcow2")
			testenv.PatchFile(t, a, findExtension(t, a, ExtBackingFmt)+8, []byte("vmdk2"))
			return a
		}, want: []string{"backing", "vmdk2"}},
		{name: "backing-broken", notFormat: true, make: func(t *testing.T, dir string) string {
			b := createImage(t, dir, "base.qcow2", 1*mib, "")
			a := createImage(t, dir, "disk.qcow2", 1*mib, "", "-b", "base.qcow2", "-F", "qcow2")
			testenv.PatchFile(t, b, hdrIncompat, be64(1<<20))
			return a
		}, want: []string{"disk.qcow2", "base.qcow2", "bit 20"}},
		{name: "data-file-missing", make: func(t *testing.T, dir string) string {
			p := createImage(t, dir, "disk.qcow2", 1*mib, "data_file=disk.data")
			os.Remove(filepath.Join(dir, "disk.data"))
			return p
		}, want: []string{"external data file", "disk.data"}},
		{name: "data-file-bit-without-name", make: func(t *testing.T, dir string) string {
			p := createImage(t, dir, "disk.qcow2", 1*mib, "data_file=disk.data")
			testenv.PatchFile(t, p, findExtension(t, p, ExtDataFile), be32(0x7a7a7a7a))
			return p
		}, want: []string{"external data file"}},
	}
}

// renameBacking overwrites an image's backing file name with one of the
// same length.
func renameBacking(t *testing.T, path, name string) {
	t.Helper()
	h := readHeaderOf(t, path)
	if int(h.BackingFileSize) != len(name) {
		t.Fatalf("backing name of %s has %d bytes, %q has %d", path, h.BackingFileSize, name, len(name))
	}
	testenv.PatchFile(t, path, int64(h.BackingFileOffset), []byte(name))
}

func TestBrokenImages(t *testing.T) {
	needQEMU(t)
	for _, c := range brokenCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := c.make(t, dir)
			img, err := Open(path, OpenOptions{ReadOnly: true})
			if err == nil {
				img.Close()
				t.Fatalf("Open succeeded; want an error containing %q", c.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) {
				t.Errorf("error does not name the file %s: %v", path, err)
			}
			for _, w := range c.want {
				if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			var fe *FormatError
			if !c.notFormat && !errors.As(err, &fe) {
				t.Errorf("error is %T, want a *FormatError: %v", err, err)
			}
			t.Logf("%v", err)
		})
	}
}

// Damage found only when a cluster is read: Open succeeds, ReadAt and Map
// of the damaged range fail with a *FormatError naming the file, and
// undamaged ranges still read.
func TestBrokenAtReadTime(t *testing.T) {
	needQEMU(t)
	cases := []struct {
		name string
		// damage patches the image given its header, the L1 entry 0 value
		// and the L2 entry 0 value (read from the file).
		damage func(t *testing.T, p string, h Header, l2off int64, l2e uint64)
		opts   string
		want   string
	}{
		{name: "l1-entry-unaligned", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, int64(h.L1TableOffset), be64(uint64(l2off+512)|oflagCopied))
		}, want: "not cluster-aligned"},
		{name: "l1-entry-past-eof", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, int64(h.L1TableOffset), be64(uint64(1<<40)|oflagCopied))
		}, want: "L2 table"},
		{name: "l2-entry-unaligned", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, l2off, be64(l2e+512))
		}, want: "not cluster-aligned"},
		{name: "compressed-past-eof", opts: "compression_type=zlib", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, l2off, be64(oflagCompressed|1<<40))
		}, want: "compressed cluster"},
		{name: "compressed-garbage-zlib", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			// Point at the L1 table: not a deflate stream.
			testenv.PatchFile(t, p, l2off, be64(oflagCompressed|h.L1TableOffset))
		}, want: "compressed cluster"},
		{name: "compressed-garbage-zstd", opts: "compression_type=zstd", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, l2off, be64(oflagCompressed|h.L1TableOffset))
		}, want: "compressed cluster"},
		{name: "extended-l2-allocated-and-zero", opts: "extended_l2=on", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, l2off+8, be64(1|1<<32))
		}, want: "both allocated and zero"},
		{name: "extended-l2-allocated-without-cluster", opts: "extended_l2=on", damage: func(t *testing.T, p string, h Header, l2off int64, l2e uint64) {
			testenv.PatchFile(t, p, l2off, be64(0))
		}, want: "unallocated cluster"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := createImage(t, dir, "disk.qcow2", 4*mib, c.opts)
			qemuIO(t, p, "qcow2", []ioOp{write(0xaa, 0, 64*kib), write(0xbb, 3*mib, 4096)})
			h := readHeaderOf(t, p)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			var b [8]byte
			f.ReadAt(b[:], int64(h.L1TableOffset))
			l2off := int64(binary.BigEndian.Uint64(b[:]) & l1EntryOffsetMask)
			f.ReadAt(b[:], l2off)
			l2e := binary.BigEndian.Uint64(b[:])
			f.Close()
			c.damage(t, p, h, l2off, l2e)

			var warned []string
			img, err := Open(p, OpenOptions{ReadOnly: true, Warn: func(m string) { warned = append(warned, m) }})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer img.Close()
			buf := make([]byte, 8192)
			_, err = img.ReadAt(buf, 0)
			checkReadErr(t, "ReadAt", err, p, c.want)
			if !strings.HasPrefix(c.name, "compressed") {
				// Block status does not decompress (nor does QEMU's), so
				// only the metadata cases fail there too.
				_, err = img.Map(0, 8192)
				checkReadErr(t, "Map", err, p, c.want)
				_, err = img.SeekHole(0)
				checkReadErr(t, "SeekHole", err, p, c.want)
			}
			// The undamaged cluster at 3 MiB still reads.
			if n, err := img.ReadAt(buf[:4096], 3*mib); err != nil || n != 4096 || buf[0] != 0xbb || buf[4095] != 0xbb {
				if !strings.HasPrefix(c.name, "l1-") { // L1 entry 0 maps the whole disk
					t.Errorf("ReadAt of an undamaged cluster: %d, %v, %#x", n, err, buf[0])
				}
			}
			t.Logf("warnings: %q", warned)
		})
	}
}

func checkReadErr(t *testing.T, what string, err error, path, want string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s of damaged range succeeded; want an error containing %q", what, want)
		return
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
		t.Errorf("%s error %q should name %s and contain %q", what, err, path, want)
	}
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Errorf("%s error is %T, want a *FormatError: %v", what, err, err)
	}
}

// An image with the corrupt bit set is readable read-only (with a warning)
// and refused read-write.
func TestCorruptBitReadOnly(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := goodImage(t, dir, "disk.qcow2", "")
	testenv.PatchFile(t, p, hdrIncompat, be64(IncompatCorrupt))
	raw := convertToRaw(t, p, t.TempDir())
	before := testenv.HashTree(t, dir)

	var warned []string
	img, err := Open(p, OpenOptions{ReadOnly: true, Warn: func(m string) { warned = append(warned, m) }})
	if err != nil {
		t.Fatalf("read-only Open of a corrupt-flagged image: %v", err)
	}
	compareReads(t, img, raw)
	if !img.Info().Corrupt {
		t.Error("Info().Corrupt is false")
	}
	img.Close()
	if len(warned) == 0 || !strings.Contains(warned[0], "corrupt") || !strings.Contains(warned[0], p) {
		t.Errorf("want a warning naming the file and the corrupt bit, got %q", warned)
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, dir))

	img, err = Open(p, OpenOptions{})
	if err == nil {
		img.Close()
		t.Fatal("read-write Open of a corrupt-flagged image succeeded")
	}
	if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("read-write Open error should name the file and the corrupt bit: %v", err)
	}
}

// NoDataFile refuses images that need a data file, and NoBacking refuses a
// read-write open of an image with a backing file (untrusted images must not
// expose host files; see TestNoBackingTopLayer for the read-only case).
func TestRefuseExternalFiles(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	createImage(t, dir, "base.qcow2", mib, "")
	withBacking := createImage(t, dir, "over.qcow2", mib, "", "-b", "base.qcow2", "-F", "qcow2")
	withData := createImage(t, dir, "data.qcow2", mib, "data_file=data.bin")
	for _, c := range []struct {
		path string
		opts OpenOptions
		want string
	}{
		{withBacking, OpenOptions{NoBacking: true}, "base.qcow2"},
		{withData, OpenOptions{ReadOnly: true, NoDataFile: true}, "data.bin"},
	} {
		img, err := Open(c.path, c.opts)
		if err == nil {
			img.Close()
			t.Errorf("%s opened with %+v", c.path, c.opts)
			continue
		}
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v should be a FormatError naming the image and %s", c.path, err, c.want)
		}
	}
}

// createLUKS makes a LUKS-encrypted image. qemu-img times PBKDF2 with the
// thread's CPU clock and gives up ("Unable to get accurate CPU usage") when
// a loaded machine starves it, so it gets a few tries.
func createLUKS(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "disk.qcow2")
	var out []byte
	var err error
	for try := 0; try < 8; try++ {
		os.Remove(path)
		out, err = exec.Command("qemu-img", "create", "-q", "--object", "secret,id=sec0,data=abc",
			"-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", path, "1M").CombinedOutput()
		if err == nil {
			return path
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("qemu-img create (LUKS): %v\n%s", err, out)
	return ""
}

// TestNoBackingTopLayer: read-only with NoBacking shows the top layer alone
// and opens nothing the image names.
func TestNoBackingTopLayer(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	base := createImage(t, dir, "base.qcow2", mib, "")
	runCmd(t, dir, "qemu-io", "-c", "write -P 0x11 0 1M", "base.qcow2")
	over := createImage(t, dir, "over.qcow2", mib, "", "-b", "base.qcow2", "-F", "qcow2")
	runCmd(t, dir, "qemu-io", "-c", "write -P 0x22 65536 4096", "over.qcow2")
	os.Remove(base) // must not be needed
	img, err := Open(over, OpenOptions{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if len(img.Files()) != 1 {
		t.Errorf("files opened: %v", img.Files())
	}
	buf := make([]byte, 8192)
	img.ReadAt(buf, 65536-4096)
	if buf[0] != 0 || buf[4096] != 0x22 {
		t.Fatalf("top layer alone: %#x %#x", buf[0], buf[4096])
	}
}
