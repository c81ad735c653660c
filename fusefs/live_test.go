// Tests of suspend and resume under concurrent writes (meant for -race):
// writes read back, snapshot files follow changes, a resized image is refused.

package fusefs

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// Suspend and resume under concurrent writes (run with -race: the images
// are swapped behind the gate while requests wait): every write reads
// back, snapshots taken while suspended appear as files,
// one deleted meanwhile disappears, and a resume with another size is
// refused and leaves the mount suspended.
func TestSuspendResume(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	path := makeImage(t, dir) // 4M, snapshot s1
	img, err := qcow2.Open(path, qcow2.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(mnt, []*qcow2.Image{img}, Options{})
	if err != nil {
		img.Close()
		t.Fatal(err)
	}
	reopen := func() *qcow2.Image {
		t.Helper()
		n, err := qcow2.Open(path, qcow2.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Cleanup(func() {
		if srv.Suspended() {
			if _, err := srv.Resume([]*qcow2.Image{reopen()}); err != nil {
				t.Errorf("cleanup resume: %v", err)
			}
		}
		unmount(t, srv)
		for _, i := range srv.Images() {
			i.Flush()
			i.Close()
		}
	})

	raw := filepath.Join(mnt, "img.raw")
	const block = 4096
	var stop atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	want := map[int64]byte{}
	errs := make(chan error, 8)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			f, err := os.OpenFile(raw, os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf := make([]byte, block)
			for i := 0; !stop.Load(); i++ {
				off := int64((w*64+i%64)*block) + 3<<20 // each writer its own blocks, in the last MiB
				b := byte(i)
				for j := range buf {
					buf[j] = b
				}
				if _, err := f.WriteAt(buf, off); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[off] = b
				mu.Unlock()
			}
		}(w)
	}
	for round := 0; round < 4; round++ {
		time.Sleep(50 * time.Millisecond)
		if err := srv.Suspend(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if !srv.Suspended() || srv.Images() != nil {
			t.Fatal("not suspended after Suspend")
		}
		name := "r" + string(rune('0'+round))
		// In process: a fork now would wait for ever, its inherited
		// descriptors of the mount flushing on exec (the gate is closed).
		if err := qcow2.SnapshotCreate(path, name); err != nil {
			t.Fatal(err)
		}
		if round == 1 {
			if err := qcow2.SnapshotDelete(path, "s1"); err != nil {
				t.Fatal(err)
			}
		}
		rep, err := srv.Resume([]*qcow2.Image{reopen()})
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Added) != 1 || rep.Added[0] != "img@"+name+".raw" {
			t.Fatalf("round %d: added %v", round, rep.Added)
		}
		if _, err := os.Stat(filepath.Join(mnt, "img@"+name+".raw")); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "img@s1.raw")); !os.IsNotExist(err) {
		t.Fatalf("img@s1.raw after its snapshot was deleted: %v", err)
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// Every last write reads back.
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, block)
	for off, b := range want {
		if _, err := f.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{b}, block)) {
			t.Fatalf("block at %d: got %#x..., want %#x", off, got[0], b)
		}
	}

	// A resize while suspended: resume refuses, the mount stays suspended.
	if err := srv.Suspend(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := qcow2.Resize(path, 8<<20, false); err != nil {
		t.Fatal(err)
	}
	bad := reopen()
	if _, err := srv.Resume([]*qcow2.Image{bad}); err == nil {
		t.Fatal("resume accepted an image of another size")
	}
	bad.Close()
	if !srv.Suspended() {
		t.Fatal("a refused resume left the mount not suspended")
	}
	if err := qcow2.Resize(path, 4<<20, true); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Resume([]*qcow2.Image{reopen()}); err != nil {
		t.Fatal(err)
	}
}
