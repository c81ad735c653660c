// Tests of hostile and failing host files: named devices, FIFOs and /proc
// files refused, ENOSPC on a small tmpfs and injected EIO corrupting nothing.

package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestHostileNamedFiles: an image naming a device, a FIFO or a /proc file as
// its backing or data file is refused at once (a FIFO must not hang us).
func TestHostileNamedFiles(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/dev/zero", "/proc/self/environ", "/sys/kernel/mm/transparent_hugepage/enabled", fifo, dir} {
		if _, err := os.Stat(target); err != nil {
			continue
		}
		for _, fmtName := range []string{"raw", ""} {
			path := filepath.Join(dir, "h.qcow2")
			os.Remove(path)
			args := []string{"create", "-q", "-f", "qcow2", "-u", "-b", target}
			if fmtName != "" {
				args = append(args, "-F", fmtName)
			} else {
				args = append(args, "-F", "raw")
			}
			args = append(args, path, "1M")
			wrun(t, "qemu-img", args...)
			done := make(chan error, 1)
			go func() {
				im, err := Open(path, OpenOptions{ReadOnly: true})
				if err == nil {
					im.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("backing %s accepted", target)
				} else if !strings.Contains(err.Error(), path) {
					t.Errorf("backing %s: error does not name the image: %v", target, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("backing %s: open hangs", target)
			}
		}
	}
}

// TestHostENOSPC: the host file system fills up during allocation. The write
// fails with ENOSPC, the image stays consistent, and once space returns the
// same writes succeed.
func TestHostENOSPC(t *testing.T) {
	needQEMU(t)
	if os.Geteuid() != 0 {
		testenv.Lacking(t, "root (to mount a small tmpfs)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dir).Run()
	path := filepath.Join(dir, "n.qcow2")
	wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, "64M")
	im, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64<<20)
	buf := bytes.Repeat([]byte{0x5a}, 256<<10)
	var failedAt int64 = -1
	for off := int64(0); off < 8<<20; off += int64(len(buf)) {
		if _, err := im.WriteAt(buf, off); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write at %d: %v, want ENOSPC", off, err)
			}
			failedAt = off
			break
		}
		copy(want[off:], buf)
	}
	if failedAt < 0 {
		t.Fatal("never ran out of space")
	}
	flushErr := im.Flush() // may fail too; nothing must be lost
	// Space returns.
	if out, err := exec.Command("mount", "-o", "remount,size=64M", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	for off := failedAt; off < 8<<20; off += int64(len(buf)) {
		if _, err := im.WriteAt(buf, off); err != nil {
			t.Fatalf("write at %d after space returned: %v (flush during ENOSPC: %v)", off, err, flushErr)
		}
		copy(want[off:], buf)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
		t.Fatalf("qemu-img check after ENOSPC: %v\n%s", err, out)
	}
	if d := diffAt(qemuRaw(t, path), want); d != "" {
		t.Fatal(d)
	}
}

// eioFile fails writes with EIO while armed.
type eioFile struct {
	hostFile
	mu    sync.Mutex
	armed int // fail this many writes
}

func (f *eioFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	fail := f.armed > 0
	if fail {
		f.armed--
	}
	f.mu.Unlock()
	if fail {
		return 0, &os.PathError{Op: "write", Path: "injected", Err: syscall.EIO}
	}
	return f.hostFile.WriteAt(p, off)
}

// TestHostEIO: I/O errors from the host file surface as EIO and corrupt
// nothing: after the errors stop, the image checks clean and holds every
// write that succeeded.
func TestHostEIO(t *testing.T) {
	needQEMU(t)
	for _, failWrites := range []int{1, 3} {
		for _, at := range []int{0, 1, 5} { // which write fails first
			t.Run(fmt.Sprintf("fail%d-at%d", failWrites, at), func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "e.qcow2")
				wrun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M")
				ef := &eioFile{}
				old := wrapHostFile
				wrapHostFile = func(_ string, f hostFile) hostFile { ef.hostFile = f; return ef }
				im, err := Open(path, OpenOptions{})
				wrapHostFile = old
				if err != nil {
					t.Fatal(err)
				}
				want := make([]byte, 8<<20)
				sawEIO := false
				for i := 0; i < 40; i++ {
					if i == at {
						ef.mu.Lock()
						ef.armed = failWrites
						ef.mu.Unlock()
					}
					off := int64(i) * 200000 % (8<<20 - 70000)
					data := bytes.Repeat([]byte{byte(i + 1)}, 70000)
					_, werr := im.WriteAt(data, off)
					if werr == nil && i%7 == 0 {
						werr = im.Flush()
					}
					if werr != nil {
						if !errors.Is(werr, syscall.EIO) {
							t.Fatalf("write %d: %v, want EIO", i, werr)
						}
						sawEIO = true
						// Unknown whether the failed op landed: take it
						// from what the image now reads.
						got := make([]byte, len(data))
						im.ReadAt(got, off)
						copy(want[off:], got)
						continue
					}
					copy(want[off:], data)
				}
				if !sawEIO {
					t.Fatal("no injected error surfaced")
				}
				// A metadata write failing inside Flush: EIO, then a retry works.
				if _, err := im.WriteAt(bytes.Repeat([]byte{0xee}, 5000), 3<<20+123); err != nil {
					t.Fatal(err)
				}
				copy(want[3<<20+123:], bytes.Repeat([]byte{0xee}, 5000))
				ef.mu.Lock()
				ef.armed = failWrites
				ef.mu.Unlock()
				if err := im.Flush(); !errors.Is(err, syscall.EIO) {
					t.Fatalf("flush with failing metadata writes: %v, want EIO", err)
				}
				ef.mu.Lock()
				ef.armed = 0
				ef.mu.Unlock()
				if err := im.Flush(); err != nil {
					t.Fatalf("flush retry: %v", err)
				}
				if err := im.Close(); err != nil {
					t.Fatalf("close after errors stopped: %v", err)
				}
				out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
				var ee *exec.ExitError
				if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
					t.Fatalf("qemu-img check: %v\n%s", err, out)
				}
				if d := diffAt(qemuRaw(t, path), want); d != "" {
					t.Fatal(d)
				}
			})
		}
	}
}
