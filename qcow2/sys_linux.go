package qcow2

import (
	"fmt"
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

// checkNamedFile vets a file an image names (backing file, external data
// file) before it is opened: an untrusted image must not make us open a
// device, a FIFO (which would block) or a pseudo-file of the kernel.
func checkNamedFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, st.Mode().Type())
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return err
	}
	switch fs.Type {
	case unix.PROC_SUPER_MAGIC, unix.SYSFS_MAGIC, unix.DEBUGFS_MAGIC, unix.SECURITYFS_MAGIC,
		unix.CGROUP_SUPER_MAGIC, unix.CGROUP2_SUPER_MAGIC, unix.TRACEFS_MAGIC, unix.BPF_FS_MAGIC:
		return fmt.Errorf("%s: refusing a file on a kernel pseudo-filesystem", path)
	}
	return nil
}
