// Tests that qcow2fs hash equals sha256sum (sha1sum, md5sum) of qemu-img's
// raw output and of the mounted file, and that vm.info is what info prints.

package integration

import (
	"path/filepath"
	"strings"
	"testing"
)

// sumOf runs a coreutils checksum tool (sha256sum, ...) on file and returns
// the hex digest.
func sumOf(t *testing.T, tool, file string) string {
	t.Helper()
	f := strings.Fields(run(t, tool, file))
	if len(f) == 0 {
		t.Fatalf("%s %s printed nothing", tool, file)
	}
	return f[0]
}

// qcow2fsHash runs qcow2fs hash and returns the digest, checking the
// "HASH  IMAGE" format of sha256sum.
func qcow2fsHash(t *testing.T, args ...string) string {
	t.Helper()
	out := strings.TrimSpace(run(t, qcow2fsBin, append([]string{"hash"}, args...)...))
	f := strings.Fields(out)
	img := args[len(args)-1]
	if len(f) != 2 || !strings.HasSuffix(out, "  "+img) {
		t.Fatalf("qcow2fs hash %v printed %q, want \"HASH  %s\"", args, out, img)
	}
	return f[0]
}

// TestHash: qcow2fs hash equals sha256sum (sha1sum, md5sum) of
// qemu-img convert -O raw and of the mounted raw file, for a compressed
// image over a backing file, a snapshot, and a sparse 512 MiB image (which it
// hashes without reading its holes); the mount's vm.info is what
// qcow2fs info prints.
func TestHash(t *testing.T) {
	requireTools(t, "sha256sum", "sha1sum", "md5sum")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	base := k.BkPath("base.qcow2")
	qemuCreate(t, base, "12M", "", "", "")
	qemuIO(t, base, k.Scribble(64<<10, 12<<20)...)
	src := k.BkPath("src.qcow2")
	qemuCreate(t, src, "12M", "", "", "")
	qemuIO(t, src, k.Rand(1<<20, 3<<20), Zero(6<<20, 1<<20))
	comp := k.Path("compressed")
	// Only what differs from base.qcow2 is written, compressed.
	run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "-B", "bk/base.qcow2", "-F", "qcow2", src, comp)
	qemuIO(t, comp, k.Rand(2<<20+100, 5000), Discard(9<<20, 64<<10))
	run(t, "qemu-img", "snapshot", "-c", "s1", comp)
	qemuIO(t, comp, k.Rand(0, 64<<10))
	sparse := k.Path("sparse")
	// Small enough for sha256sum (coreutils hashes ~250 MB/s here), large
	// enough that reading the holes would show.
	qemuCreate(t, sparse, "512M", "", "", "")
	qemuIO(t, sparse, k.Rand(0, 100000), k.Rand(256<<20-50, 100), k.Rand(512<<20-65536, 65536))

	for _, img := range []string{comp, sparse} {
		name := strings.TrimSuffix(filepath.Base(img), ".qcow2")
		raw := qemuRawOf(t, img, filepath.Join(dir, name+".raw"))
		for _, c := range []struct{ algo, tool string }{{"sha256", "sha256sum"}, {"sha1", "sha1sum"}, {"md5", "md5sum"}} {
			if img == sparse && c.algo != "sha256" {
				continue // more zeros per algorithm buy nothing
			}
			if got, want := qcow2fsHash(t, "--algo", c.algo, img), sumOf(t, c.tool, raw); got != want {
				t.Errorf("qcow2fs hash --algo %s %s = %s; %s of qemu-img convert -O raw = %s", c.algo, name, got, c.tool, want)
			}
		}
	}
	snapRaw := filepath.Join(dir, "s1.raw")
	qemuToRaw(t, comp, "s1", snapRaw)
	if got, want := qcow2fsHash(t, "--snapshot", "s1", comp), sumOf(t, "sha256sum", snapRaw); got != want {
		t.Errorf("hash --snapshot s1 = %s, sha256sum of the snapshot's raw = %s", got, want)
	}

	// The mounted raw file hashes the same, and NAME.info is info's text.
	mnt := mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, []string{"--ro"}, comp)
	if got, want := sumOf(t, "sha256sum", filepath.Join(mnt, "compressed.raw")), qcow2fsHash(t, comp); got != want {
		t.Errorf("sha256sum of the mounted compressed.raw = %s, qcow2fs hash = %s", got, want)
	}
	info := readFile(filepath.Join(mnt, "compressed.info"))
	if want := run(t, qcow2fsBin, "info", comp); info != want {
		t.Errorf("compressed.info differs from qcow2fs info:\n--- compressed.info\n%s--- qcow2fs info\n%s", info, want)
	}
	if !strings.Contains(info, "s1") || !strings.Contains(info, "base.qcow2") {
		t.Errorf("compressed.info lacks the snapshot or the backing file:\n%s", info)
	}
	unmountQcow2fs(t, mnt, k.Dir)
}
