// Unit tests of the mount locks: exclusion and hand-over, and the keys a
// mount locks.

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestTakeLockExcludesAndHandsOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mp-x.lock")
	first, err := takeLock(path, time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := takeLock(path, time.Now().Add(50*time.Millisecond)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second lock while held: %v, want a timeout", err)
	}
	if pid := lockHolder(path); pid != os.Getpid() {
		t.Errorf("lock file names pid %d, want %d", pid, os.Getpid())
	}
	// A waiter that opened the file before the holder removed it must not
	// settle for the removed file's lock.
	got := make(chan heldLock, 1)
	go func() {
		h, err := takeLock(path, time.Now().Add(5*time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- h
	}()
	time.Sleep(100 * time.Millisecond)
	(&mountLocks{held: []heldLock{first}}).release()
	h := <-got
	defer (&mountLocks{held: []heldLock{h}}).release()
	var a, b syscall.Stat_t
	if err := syscall.Fstat(int(h.f.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(path, &b); err != nil {
		t.Fatalf("the waiter holds a lock but %s is gone: %v", path, err)
	}
	if a.Ino != b.Ino {
		t.Errorf("the waiter holds the lock of a removed file")
	}
}

func TestMountLockKeys(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	link := filepath.Join(dir, "b.qcow2")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(img, link); err != nil {
		t.Fatal(err)
	}
	keys := mountLockKeys("/mnt/x", []string{img, link, filepath.Join(dir, "new-overlay.qcow2")})
	if len(keys) != 3 {
		t.Fatalf("%d keys for a mount point, one image under two names and a new file: %+v", len(keys), keys)
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1].file >= keys[i].file {
			t.Errorf("keys not in one order: %+v", keys)
		}
	}
	mp := 0
	for _, k := range keys {
		if strings.HasPrefix(k.file, "mp-") && k.what == "mount point /mnt/x" {
			mp++
		}
	}
	if mp != 1 {
		t.Errorf("mount point key missing: %+v", keys)
	}
	imgKey := func(keys []lockKey, name string) string {
		for _, k := range keys {
			if k.what == "image "+name {
				return k.file
			}
		}
		return ""
	}
	if a, b := imgKey(keys, img), imgKey(mountLockKeys("/mnt/y", []string{link}), link); a == "" || a != b {
		t.Errorf("one image under two names gets two locks: %q, %q", a, b)
	}
}
