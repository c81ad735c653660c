// imageKit, which builds QEMU-made images for the tests (with qemu-io
// commands writing every kind of cluster), and the read-path image matrix.

package integration

import (
	"fmt"
	"path/filepath"
	"testing"
)

// imageKit builds QEMU-made images inside one directory. Images to be mounted
// go in Dir; backing files, data files and sources go in Dir/bk so they are
// not mistaken for images of the mount.
type imageKit struct {
	t   testing.TB
	Dir string
	Bk  string
	n   int64 // counter making every random source file distinct
}

func newImageKit(t testing.TB, dir string) *imageKit {
	k := &imageKit{t: t, Dir: dir, Bk: filepath.Join(dir, "bk")}
	mkdir(t, dir, "bk")
	mkdir(t, dir, "src")
	return k
}

// Path returns the path of image name (without .qcow2) in Dir.
func (k *imageKit) Path(name string) string { return filepath.Join(k.Dir, name+".qcow2") }

// BkPath returns the path of a helper file in Dir/bk.
func (k *imageKit) BkPath(name string) string { return filepath.Join(k.Bk, name) }

// Rand returns a qemu-io command writing n fresh random bytes at off. Each
// call uses its own random content, so a cluster read from the wrong place
// never matches by accident.
func (k *imageKit) Rand(off, n int64) string {
	k.n++
	src := filepath.Join(k.Dir, "src", fmt.Sprintf("r%d.bin", k.n))
	writeRandomFile(k.t, src, 1000+k.n, int(n))
	return fmt.Sprintf("write -s %s %d %d", src, off, n)
}

// Zero returns a qemu-io write-zeroes command.
func Zero(off, n int64) string { return fmt.Sprintf("write -z %d %d", off, n) }

// Discard returns a qemu-io discard command.
func Discard(off, n int64) string { return fmt.Sprintf("discard %d %d", off, n) }

// Scribble returns a mix of qemu-io writes that leaves an image of size with
// clusters of cs holding every kind of cluster: data (aligned, unaligned,
// across cluster boundaries, at the very end), zero, discarded, untouched.
// size must be at least 16 clusters.
func (k *imageKit) Scribble(cs, size int64) []string {
	if size < 16*cs {
		k.t.Fatalf("Scribble: size %d below 16 clusters of %d", size, cs)
	}
	mid := size / 2
	return []string{
		k.Rand(0, 3*cs+777),
		k.Rand(4*cs, 2*cs),
		Zero(4*cs+cs/2, cs), // zeroes over data, cluster-unaligned
		Zero(6*cs, 2*cs),    // zeroes over nothing
		k.Rand(8*cs, cs),
		Discard(8*cs, cs), // discard of data
		k.Rand(10*cs+7, 13),
		k.Rand(mid-cs/2-100, 2*cs+300),
		k.Rand(size-cs-999, cs+999), // up to the last byte
	}
}

// roImage is one image of the read-path matrix.
type roImage struct {
	Name      string   // NAME.qcow2 in the kit's Dir, exposed as NAME.raw
	Snapshots []string // internal snapshots, exposed as NAME@SNAP.raw
	Build     func(k *imageKit, path string)
}

// plain returns a builder for an image made with qemu-img create -o opts,
// then scribbled on.
func plain(opts string, cs, size int64) func(k *imageKit, path string) {
	return func(k *imageKit, path string) {
		qemuCreate(k.t, path, fmt.Sprint(size), opts, "", "")
		qemuIO(k.t, path, k.Scribble(cs, size)...)
	}
}

// compressed returns a builder that scribbles on a source image and
// converts it with qemu-img convert -c using the compression type ctype,
// then applies the qemu-io commands over.
func compressed(ctype string, over func(k *imageKit) []string) func(k *imageKit, path string) {
	return func(k *imageKit, path string) {
		const cs, size = 64 << 10, 8 << 20
		src := k.BkPath(filepath.Base(path) + ".src.qcow2")
		qemuCreate(k.t, src, fmt.Sprint(size), "", "", "")
		cmds := append(k.Scribble(cs, size), k.Rand(1<<20, 3<<20)) // plenty of compressible-or-not data
		qemuIO(k.t, src, cmds...)
		run(k.t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type="+ctype, src, path)
		if over != nil {
			qemuIO(k.t, path, over(k)...)
		}
	}
}

// readMatrix lists the images the read path must show exactly as QEMU does.
func readMatrix() []roImage {
	const k64 = 64 << 10
	return []roImage{
		{Name: "v2-64k", Build: plain("compat=0.10", k64, 8<<20)},
		{Name: "v3-512", Build: plain("cluster_size=512", 512, 1<<20)},
		{Name: "v3-4k-rc1", Build: plain("cluster_size=4096,refcount_bits=1", 4096, 4<<20)},
		{Name: "v3-64k-rc64", Build: plain("refcount_bits=64", k64, 8<<20)},
		{Name: "v3-2m", Build: plain("cluster_size=2M", 2<<20, 40<<20)},
		{Name: "lazy", Build: plain("lazy_refcounts=on", k64, 8<<20)},
		{Name: "dirty", Build: func(k *imageKit, path string) {
			// A writer killed with lazy refcounts on leaves the dirty bit set
			// and the refcounts stale.
			qemuCreate(k.t, path, "8M", "lazy_refcounts=on", "", "")
			args := []string{"-f", "qcow2"}
			for _, c := range append(k.Scribble(k64, 8<<20), "abort") {
				args = append(args, "-c", c)
			}
			_ = execute(k.Dir, "qemu-io", append(args, path)...) // exits on SIGABRT by design
			if !qemuInfo(k.t, path).Dirty {
				k.t.Fatalf("%s: qemu-io abort did not leave the image dirty", path)
			}
		}},
		{Name: "prealloc-metadata", Build: plain("preallocation=metadata", k64, 8<<20)},
		{Name: "prealloc-falloc", Build: plain("preallocation=falloc", k64, 8<<20)},
		{Name: "zlib", Build: compressed("zlib", nil)},
		{Name: "zstd", Build: compressed("zstd", nil)},
		{Name: "zstd-overwritten", Build: compressed("zstd", func(k *imageKit) []string {
			return []string{k.Rand(1<<20+100, 5000), Zero(2<<20, k64), k.Rand(3<<20-10, k64+20), Discard(4<<20, k64)}
		})},
		{Name: "extl2", Build: func(k *imageKit, path string) {
			plain("extended_l2=on", k64, 8<<20)(k, path)
			// Subcluster-sized pieces (2 KiB subclusters for 64 KiB clusters).
			qemuIO(k.t, path,
				k.Rand(12*k64+3*2048+5, 100),
				k.Rand(13*k64+2048, 4096),
				Zero(13*k64+4096, 2048),
				Zero(14*k64+30*2048, 4096), // across a cluster boundary
			)
		}},
		{Name: "extl2-backing", Build: func(k *imageKit, path string) {
			base := k.BkPath("extl2-base.qcow2")
			qemuCreate(k.t, base, "8M", "", "", "")
			qemuIO(k.t, base, k.Rand(0, 4<<20))
			qemuCreate(k.t, path, "8M", "extended_l2=on", base, "qcow2")
			// Partly written clusters: the rest of each shows the backing file.
			qemuIO(k.t, path,
				k.Rand(3*2048+5, 100),
				k.Rand(k64+2048, 4096),
				Zero(2*k64+4096, 2048),
				Discard(3*k64, 8192),
				k.Rand(4<<20-1000, 3000), // straddles the end of the backing data
			)
		}},
		{Name: "chain3", Build: func(k *imageKit, path string) {
			// base <- mid <- chain3, every backing name relative.
			base, mid := k.BkPath("base3.qcow2"), k.BkPath("mid3.qcow2")
			qemuCreate(k.t, base, "8M", "compat=0.10", "", "")
			qemuIO(k.t, base, k.Rand(0, 6<<20))
			qemuCreate(k.t, mid, "8M", "cluster_size=4096", "base3.qcow2", "qcow2")
			qemuIO(k.t, mid, k.Rand(1<<20+3, 1<<20), Zero(3<<20, 100<<10), Discard(4<<20, k64))
			qemuCreate(k.t, path, "8M", "", "bk/mid3.qcow2", "qcow2")
			qemuIO(k.t, path, k.Rand(1<<20+k64/2, k64), k.Rand(5<<20-7, 20), Zero(2<<20, 3*k64))
		}},
		{Name: "rawbk", Build: func(k *imageKit, path string) {
			base := k.BkPath("rawbase.raw")
			writeRandomFile(k.t, base, 77, 6<<20) // a raw backing file shorter than the image
			qemuCreate(k.t, path, "8M", "", "bk/rawbase.raw", "raw")
			qemuIO(k.t, path, k.Rand(100, 5000), Zero(k64, k64), Discard(3*k64, 2*k64), k.Rand(6<<20-300, 600))
		}},
		{Name: "small-over-big", Build: func(k *imageKit, path string) {
			base := k.BkPath("big.qcow2")
			qemuCreate(k.t, base, "32M", "", "", "")
			qemuIO(k.t, base, k.Rand(0, 2<<20), k.Rand(6<<20, 4<<20), k.Rand(20<<20, 1<<20))
			qemuCreate(k.t, path, "8M", "", "bk/big.qcow2", "qcow2")
			qemuIO(k.t, path, k.Rand(7<<20+5, 100))
		}},
		{Name: "big-over-small", Build: func(k *imageKit, path string) {
			base := k.BkPath("small.qcow2")
			qemuCreate(k.t, base, fmt.Sprint(8<<20+1536), "", "", "")
			qemuIO(k.t, base, k.Rand(0, 8<<20+1536))
			qemuCreate(k.t, path, "32M", "", "bk/small.qcow2", "qcow2")
			// A write straddling the backing file's end: the cluster's tail
			// past that end must read as zeros.
			qemuIO(k.t, path, k.Rand(8<<20-1000, 100), k.Rand(20<<20, 5000))
		}},
		{Name: "snap", Snapshots: []string{"S1", "S2"}, Build: func(k *imageKit, path string) {
			qemuCreate(k.t, path, "8M", "", "", "")
			qemuIO(k.t, path, k.Scribble(k64, 8<<20)...)
			run(k.t, "qemu-img", "snapshot", "-c", "S1", path)
			qemuIO(k.t, path, k.Rand(100, 3*k64), Zero(5*k64, k64), Discard(8*k64, k64))
			run(k.t, "qemu-img", "snapshot", "-c", "S2", path)
			// The active layer grows past the snapshots' disk size.
			run(k.t, "qemu-img", "resize", "-q", path, "12M")
			qemuIO(k.t, path, k.Rand(2*k64, 10), k.Rand(10<<20, k64))
		}},
		{Name: "extdata", Build: func(k *imageKit, path string) {
			// QEMU 7.2 resolves a relative data_file name against its working
			// directory, not the image's; an absolute name is unambiguous.
			qemuCreate(k.t, path, "8M", "data_file="+k.BkPath("extdata.bin"), "", "")
			qemuIO(k.t, path, k.Scribble(k64, 8<<20)...)
		}},
		{Name: "extdata-raw", Build: func(k *imageKit, path string) {
			qemuCreate(k.t, path, "8M", "data_file="+k.BkPath("extdata-raw.bin")+",data_file_raw=on", "", "")
			qemuIO(k.t, path, k.Scribble(k64, 8<<20)...)
		}},
		{Name: "bitmap", Build: func(k *imageKit, path string) {
			qemuCreate(k.t, path, "8M", "", "", "")
			run(k.t, "qemu-img", "bitmap", "--add", path, "bm0")
			qemuIO(k.t, path, k.Scribble(k64, 8<<20)...)
		}},
		{Name: "oddsize", Build: func(k *imageKit, path string) {
			size := int64(5<<20 + 1536) // not a multiple of the cluster size
			qemuCreate(k.t, path, fmt.Sprint(size), "", "", "")
			qemuIO(k.t, path, k.Rand(0, 1000), k.Rand(size-5000, 5000))
		}},
	}
}
