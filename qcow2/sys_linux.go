// Linux system calls behind the host files: O_NOATIME opens of regular files
// only, fdatasync, hole punching, allocated size, and the vetting of files an
// image names.

package qcow2

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openNoAtime opens with O_NOATIME where permitted (owner or root), so that
// even a read-only open leaves the file's times alone. Only a regular file
// is opened: a FIFO would block the open until a writer comes (for ever),
// and a device is no image file. The open itself is O_NONBLOCK, so that
// a FIFO swapped in after the check cannot block it either; the flag is
// cleared before the file is used.
func openNoAtime(path string, flag int) (*os.File, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, &os.PathError{Op: "open", Path: path, Err: notRegular(st.Mode())}
	}
	flag |= syscall.O_CLOEXEC | syscall.O_NONBLOCK
	fd, err := unix.Open(path, flag|syscall.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = unix.Open(path, flag, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = notRegular(st.Mode())
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return f, nil
}

// notRegular says what a path that should be an image file is instead.
func notRegular(m os.FileMode) error {
	what := "not a regular file"
	switch {
	case m&os.ModeNamedPipe != 0:
		what = "a FIFO (named pipe), not a regular file"
	case m&os.ModeCharDevice != 0:
		what = "a character device, not a regular file"
	case m&os.ModeDevice != 0:
		what = "a block device, not a regular file"
	case m&os.ModeSocket != 0:
		what = "a socket, not a regular file"
	case m.IsDir():
		what = "a directory, not a regular file"
	}
	return errors.New(what)
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

// startWriteback asks the kernel to start writing f's dirty pages to disk
// now and returns without waiting for them (sync_file_range with
// SYNC_FILE_RANGE_WRITE). It promises nothing about durability: that is
// still fdatasync's job, which then finds little left to write. Files
// that are not plain host files (test wrappers) are left alone.
func startWriteback(f hostFile) {
	if o, ok := f.(osFile); ok {
		_ = unix.SyncFileRange(int(o.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
}
