// qcow2fs hash: the hash of an image's (or a snapshot's) virtual disk,
// with reading and hashing in parallel and zero runs hashed without a read.

package main

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

const hashUsage = `Usage: qcow2fs hash [--algo sha256|sha1|md5] [--snapshot NAME] IMAGE...

Prints the hash of each image's virtual disk: what the raw file (vm.raw
in a mount, or "qemu-img convert -O raw") hashes to, in the format of
sha256sum ("HASH  IMAGE"). Runs of zeros and unallocated clusters are not
read: the block status says they are zeros, so a sparse image costs only
the hashing of its zeros. Images are opened read-only (an image mounted
read-only can be hashed meanwhile; one open for writing cannot).
`

// hashAlgos are the supported --algo values.
var hashAlgos = map[string]func() hash.Hash{
	"sha256": sha256.New,
	"sha1":   sha1.New,
	"md5":    md5.New,
}

func cmdHash(args []string) error {
	fs := newFlagSet("hash", hashUsage)
	algo := fs.String("algo", "sha256", "hash `ALGORITHM`: sha256, sha1 or md5")
	snap := fs.String("snapshot", "", "hash the internal snapshot `NAME` (or ID) instead of the active disk")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	newHash, ok := hashAlgos[*algo]
	if !ok {
		return usagef("hash: --algo must be sha256, sha1 or md5, not %q", *algo)
	}
	if fs.NArg() == 0 {
		return usagef("hash: need at least one IMAGE (see qcow2fs hash --help)")
	}
	failed := false
	for _, path := range fs.Args() {
		sum, err := hashFile(path, *snap, newHash())
		if err != nil {
			if fs.NArg() == 1 {
				return err
			}
			// Like sha256sum: report, go on with the others, fail at the end.
			fmt.Fprintf(os.Stderr, "qcow2fs: %s\n", daemon.OneLine(err.Error()))
			failed = true
			continue
		}
		fmt.Printf("%s  %s\n", sum, path)
	}
	if failed {
		return &exitCode{exitError}
	}
	return nil
}

// hashFile opens the image (or one of its snapshots) read-only and hashes
// its virtual disk.
func hashFile(path, snapshot string, h hash.Hash) (string, error) {
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true})
	if err != nil {
		return "", openError(path, err)
	}
	defer img.Close()
	if snapshot != "" {
		view, err := img.OpenSnapshot(snapshot)
		if err != nil {
			return "", fmt.Errorf("%s: snapshot %q: %w", path, snapshot, err)
		}
		defer view.Close()
		img = view
	}
	if err := hashImage(img, h); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Hashing reads and hashes in parallel: a reader goroutine walks the
// block status and fills buffers with data runs, the caller's goroutine
// hashes them in order, and zero runs are hashed from one shared buffer of
// zeros without any read.
const (
	hashChunk    = 4 << 20 // bytes per read and per hash call
	hashBuffers  = 3       // reads in flight ahead of the hash
	hashMapRange = 1 << 30 // block status asked per Map call
)

// hashPiece is one run for the hasher: data in buf[:n], or n zero bytes
// when buf is nil.
type hashPiece struct {
	buf []byte
	n   int64
}

// hashImage writes the whole virtual disk into h.
func hashImage(img *qcow2.Image, h io.Writer) error {
	// Zeros to hash for unallocated runs. Made here, not at package level:
	// every run of the binary (each mount and its daemon) would otherwise
	// start with 4 MiB on the heap, which made main's init the slowest.
	hashZeros := make([]byte, hashChunk)
	free := make(chan []byte, hashBuffers)
	for range hashBuffers {
		free <- make([]byte, hashChunk)
	}
	pieces := make(chan hashPiece, hashBuffers)
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(pieces)
		errc <- readPieces(img, free, pieces, stop)
	}()
	var herr error
	for p := range pieces {
		if herr == nil {
			if p.buf != nil {
				_, herr = h.Write(p.buf[:p.n])
			}
			for n := p.n; p.buf == nil && n > 0 && herr == nil; {
				k := min(n, hashChunk)
				_, herr = h.Write(hashZeros[:k])
				n -= k
			}
			if herr != nil {
				close(stop) // the reader ends; the loop drains what it sent
			}
		}
		if p.buf != nil {
			free <- p.buf
		}
	}
	if err := <-errc; err != nil {
		return err
	}
	return herr
}

// readPieces walks [0, size) in block-status order and sends each run.
func readPieces(img *qcow2.Image, free chan []byte, out chan<- hashPiece, stop <-chan struct{}) error {
	size := img.Size()
	for off := int64(0); off < size; {
		exts, err := img.Map(off, min(hashMapRange, size-off))
		if err != nil {
			return fmt.Errorf("block status at %d: %w", off, err)
		}
		if len(exts) == 0 {
			return fmt.Errorf("block status at %d: no extents", off)
		}
		for _, e := range exts {
			if e.Offset != off || e.Length <= 0 {
				return fmt.Errorf("block status at %d: extent [%d, +%d) leaves a gap", off, e.Offset, e.Length)
			}
			if e.Kind != qcow2.ExtentData {
				select {
				case out <- hashPiece{n: e.Length}:
				case <-stop:
					return nil
				}
				off += e.Length
				continue
			}
			for end := e.Offset + e.Length; off < end; {
				var buf []byte
				select {
				case buf = <-free:
				case <-stop:
					return nil
				}
				n := min(int64(len(buf)), end-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read at %d: %w", off, err)
				}
				out <- hashPiece{buf: buf, n: n}
				off += n
			}
		}
	}
	return nil
}
