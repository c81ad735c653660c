package qcow2

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openNoAtime opens with O_NOATIME where permitted (owner or root), so that
// even a read-only open leaves the file's times alone.
func openNoAtime(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOATIME|syscall.O_CLOEXEC, 0)
	if err == nil {
		return f, nil
	}
	if pe, ok := err.(*os.PathError); ok && pe.Err == syscall.EPERM {
		return os.OpenFile(path, flag|syscall.O_CLOEXEC, 0)
	}
	return nil, err
}

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func allocatedBytes(f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// punchHole deallocates a byte range of f; it then reads as zeros.
func punchHole(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
