// Tests of page cache coherence between vm.raw and its partition file:
// changes through one seen at once through the other, also under
// concurrent load on overlapping sub-page ranges.

package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// partStart is where partition 1 of coherenceImage begins on the disk.
const partStart = 1 << 20

// coherenceImage makes a 16 MiB qcow2 image with one MBR partition of
// 8 MiB at 1 MiB, mounts it read-write with --partitions and returns the
// open (buffered, not O_DIRECT) whole-disk and partition files.
func coherenceImage(t *testing.T, flags ...string) (mnt, img string, whole, p1 *os.File) {
	t.Helper()
	requireTools(t, "sfdisk")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img = k.Path("vm")
	partitionedQcow2(t, img, "label: dos\n2048,8M,83\n", k)
	mnt = mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, append([]string{"--partitions"}, flags...), img)
	open := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(mnt, name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	return mnt, img, open("vm.raw"), open("vm-p1.raw")
}

// readAt reads n bytes at off from f.
func readAt(t *testing.T, f *os.File, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", f.Name(), off, err)
	}
	return b
}

// expectSame reads [off, off+len(want)) of f and compares.
func expectSame(t *testing.T, what string, f *os.File, off int64, want []byte) {
	t.Helper()
	if got := readAt(t, f, off, len(want)); !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: %s at %d differs from byte %d on (got %#x, want %#x): stale page cache", what, filepath.Base(f.Name()), off, i, got[i], want[i])
	}
}

// TestPartitionCoherence: vm.raw and vm-p1.raw show the same bytes of one
// disk, and each keeps its own kernel page cache. A write, write-zeroes or
// punch-hole through one must be visible at once through the other, also
// where the other's pages are cached and its descriptor stays open.
func TestPartitionCoherence(t *testing.T) {
	mnt, img, whole, p1 := coherenceImage(t)

	// Sub-page ranges on both sides of a page boundary.
	const off, n = 4096 + 1000, 6000
	fill := func(b byte) []byte { return bytes.Repeat([]byte{b}, n) }

	// Cache the range in both files, then write through the whole disk.
	readAt(t, p1, off-1000, n+2000)
	readAt(t, whole, partStart+off-1000, n+2000)
	if _, err := whole.WriteAt(fill(0xa1), partStart+off); err != nil {
		t.Fatal(err)
	}
	expectSame(t, "write through vm.raw", p1, off, fill(0xa1))

	// The reverse direction.
	readAt(t, whole, partStart+off, n)
	if _, err := p1.WriteAt(fill(0xb2), off); err != nil {
		t.Fatal(err)
	}
	expectSame(t, "write through vm-p1.raw", whole, partStart+off, fill(0xb2))

	// Write-zeroes through the partition, punch-hole through the disk.
	readAt(t, whole, partStart+off, n)
	if err := unix.Fallocate(int(p1.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		t.Fatal(err)
	}
	expectSame(t, "zero range through vm-p1.raw", whole, partStart+off, make([]byte, n))
	if _, err := p1.WriteAt(fill(0xc3), off); err != nil {
		t.Fatal(err)
	}
	readAt(t, p1, off, n)
	if err := unix.Fallocate(int(whole.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, partStart+off, n); err != nil {
		t.Fatal(err)
	}
	expectSame(t, "punch hole through vm.raw", p1, off, make([]byte, n))

	// A write to the disk outside the partition leaves it alone, one
	// crossing its start shows the part inside.
	readAt(t, p1, 0, 8192)
	edge := bytes.Repeat([]byte{0xd4}, 8192)
	if _, err := whole.WriteAt(edge, partStart-4096); err != nil {
		t.Fatal(err)
	}
	expectSame(t, "write across the partition's start", p1, 0, edge[4096:])

	whole.Close()
	p1.Close()
	unmountQcow2fs(t, mnt, img)
	qemuCheckClean(t, img)
}

// TestPartitionCoherenceUnderLoad: writers and readers on both files at
// once, on overlapping sub-page ranges (the kernel keeps a partly written
// page locked while its write is sent to the daemon, and invalidation
// needs that lock), must neither hang nor end incoherent.
func TestPartitionCoherenceUnderLoad(t *testing.T) {
	mnt, img, whole, p1 := coherenceImage(t)
	const span = 64 << 10
	deadline := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	worker := func(f *os.File, base int64, seed byte) {
		defer wg.Done()
		buf := make([]byte, 3000)
		rd := make([]byte, 9000)
		for i := 0; time.Now().Before(deadline); i++ {
			off := base + int64((i*1237+int(seed)*511)%(span-len(buf)))
			for j := range buf {
				buf[j] = seed + byte(i)
			}
			if _, err := f.WriteAt(buf, off); err != nil {
				errs <- fmt.Errorf("write %s: %w", f.Name(), err)
				return
			}
			if _, err := f.ReadAt(rd, base+int64(i*4093%(span-len(rd)))); err != nil {
				errs <- fmt.Errorf("read %s: %w", f.Name(), err)
				return
			}
		}
	}
	for i := 0; i < 2; i++ {
		wg.Add(2)
		go worker(whole, partStart, byte(1+i))
		go worker(p1, 0, byte(100+i))
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		// Fail every stuck request, so the test ends.
		abortFuse(mnt)
		t.Fatalf("readers and writers on vm.raw and vm-p1.raw hang (deadlock in the daemon's cache invalidation?)")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Quiet now: both files must show the same bytes.
	a := readAt(t, whole, partStart, span)
	b := readAt(t, p1, 0, span)
	if !bytes.Equal(a, b) {
		t.Errorf("after the load vm.raw and vm-p1.raw disagree")
	}
	whole.Close()
	p1.Close()
	unmountQcow2fs(t, mnt, img)
	qemuCheckClean(t, img)
}
