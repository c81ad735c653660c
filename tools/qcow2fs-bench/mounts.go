// Waiting for mounts: whether something is mounted at a point, and waiting
// until a served file shows its size.

package main

import (
	"fmt"
	"os"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// isMounted reports whether anything is mounted at point.
func isMounted(point string) bool {
	_, ok := mounts.Find(point)
	return ok
}

// waitSize waits until path is stat-able with the given size: a FUSE
// server answers only once its mount is ready, and a file mount point
// (QEMU's export) shows the disk's size only once mounted over.
func waitSize(path string, size int64, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := os.Stat(path)
		if err == nil && st.Size() == size {
			return nil
		}
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("size %d, want %d", st.Size(), size)
			}
			return fmt.Errorf("%s not ready after %v: %w", path, timeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}
