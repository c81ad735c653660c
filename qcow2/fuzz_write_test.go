// FuzzOpenWrite: mutated images opened read-write and written, zeroed,
// discarded and flushed must not panic, hang or allocate without bound.

package qcow2

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// FuzzOpenWrite opens mutated images read-write and writes, zeroes,
// discards and flushes at places derived from the input: no panic, no hang,
// bounded memory, errors that name the file.
func FuzzOpenWrite(f *testing.F) {
	if _, err := exec.LookPath("qemu-img"); err == nil {
		dir := f.TempDir()
		for i, opts := range []string{"compat=0.10,cluster_size=4096", "compat=1.1,cluster_size=65536",
			"compat=1.1,extended_l2=on,cluster_size=16384", "compat=1.1,cluster_size=512,refcount_bits=1"} {
			p := filepath.Join(dir, "seed.qcow2")
			os.Remove(p)
			if exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, p, "1M").Run() != nil {
				continue
			}
			exec.Command("qemu-io", "-c", "write -P 0x61 0 64k", "-c", "write -z 128k 64k", p).Run()
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b, uint64(i)*0x9e3779b97f4a7c15)
			}
		}
	}
	p := filepath.Join(f.TempDir(), "fuzz.qcow2")
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		if len(data) > 4<<20 {
			return
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		img, err := Open(p, OpenOptions{NoBacking: true, NoDataFile: true, CacheSize: 1 << 20})
		if err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("Open error does not name the file: %v", err)
			}
			return
		}
		size := img.Size()
		buf := make([]byte, 8192)
		var b [8]byte
		for i := 0; i < 12 && size > 0; i++ {
			seed = seed*6364136223846793005 + 1442695040888963407
			binary.LittleEndian.PutUint64(b[:], seed)
			off := int64(seed>>11) % size
			n := min(int64(seed>>40)%8192+1, size-off)
			switch seed % 5 {
			case 0, 1:
				img.WriteAt(buf[:n], off)
			case 2:
				img.WriteZeroes(off, n)
			case 3:
				img.Discard(off, n)
			default:
				img.Flush()
			}
			img.ReadAt(buf[:n], off)
		}
		img.Close()
		runtime.ReadMemStats(&ms)
		if n := ms.TotalAlloc - before; n > allocLimit {
			t.Fatalf("allocated %d MiB for a %d-byte image", n>>20, len(data))
		}
	})
}
