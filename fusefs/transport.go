// The two FUSE transports, chosen per mount (-o uring=auto|on|off): go-fuse's
// /dev/fuse loop and FUSE over io_uring, behind the same node tree.

package fusefs

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/internal/fuseuring"
	"github.com/qcow2fs/qcow2fs/internal/uring"
)

// How requests travel between the kernel and the daemon. The classic
// transport is go-fuse's /dev/fuse loop (read a request, answer with a
// write). FUSE over io_uring (Linux 6.14+, switched on by
// /sys/module/fuse/parameters/enable_uring) hands the kernel ring entries
// that it fills with requests and we answer in place, committing a reply
// and fetching the next request in one command: far fewer system calls and
// context switches per request at deep queues (internal/fuseuring).
//
// Both transports drive the same fuse.RawFileSystem, so the node tree
// knows nothing of them: go-fuse's fuse.Server mounts, answers INIT and
// keeps reading /dev/fuse (FORGET and INTERRUPT still come that way, and
// notifications go out that way); a fuse.ProtocolServer on the same file
// system, told the same INIT, answers what comes through the ring.
const (
	URingAuto = "auto" // io_uring when the kernel offers it, else classic
	URingOn   = "on"   // io_uring or fail
	URingOff  = "off"  // classic
)

// URingEnv, when set, replaces the default (auto) of Options.URing: the
// integration suite runs with QCOW2FS_URING=on to force the transport.
const URingEnv = "QCOW2FS_URING"

// Transport names, as status and the log show them.
const (
	TransportClassic = "classic"
	TransportURing   = "io_uring"
)

// uringDepth is the number of ring entries per queue (per CPU). A queue
// takes the requests of the processes running on its CPU; fio at queue
// depth 32 on one CPU keeps 32 of them busy.
const uringDepth = 32

// uringMode resolves the option and the environment to auto, on or off.
func uringMode(opt string) (string, error) {
	if opt == "" {
		opt = os.Getenv(URingEnv)
	}
	switch strings.ToLower(opt) {
	case "", URingAuto:
		return URingAuto, nil
	case URingOn, "yes", "1", "true":
		return URingOn, nil
	case URingOff, "no", "0", "false":
		return URingOff, nil
	}
	return "", fmt.Errorf("uring=%s: want auto, on or off", opt)
}

// CheckURing validates a uring= value without mounting.
func CheckURing(opt string) error {
	_, err := uringMode(opt)
	return err
}

// uringUsable tells why FUSE over io_uring cannot serve a mount, or "" if
// it can: the kernel must have it switched on, the mount must be made by
// us (root: the transport needs the /dev/fuse descriptor, which
// fusermount3 keeps to itself in go-fuse), and io_uring must be allowed
// (sysctl kernel.io_uring_disabled).
func uringUsable() string {
	if os.Geteuid() != 0 {
		return "needs a mount made as root"
	}
	if !fuseuring.Enabled() {
		return "the kernel has it off (" + fuseuring.EnableParam + " is not Y)"
	}
	r, err := uring.New(1, uring.SetupSQE128)
	if err != nil {
		return err.Error()
	}
	r.Close()
	return ""
}

// mountFD mounts a FUSE file system on mountpoint with a /dev/fuse
// descriptor of our own, as go-fuse's direct mount does, and returns the
// descriptor: go-fuse then serves it as the /dev/fd/N mount point.
func mountFD(mountpoint string, o *fuse.MountOptions) (int, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return -1, err
	}
	fd, err := syscall.Open("/dev/fuse", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	flags := o.DirectMountFlags
	opts := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&syscall.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", o.MaxWrite),
	}
	for _, s := range o.Options {
		switch s {
		case "nodev":
			flags |= syscall.MS_NODEV
		case "nosuid":
			flags |= syscall.MS_NOSUID
		case "noexec":
			flags |= syscall.MS_NOEXEC
		default:
			opts = append(opts, s)
		}
	}
	if o.AllowOther {
		opts = append(opts, "allow_other")
	}
	source := o.FsName
	if source == "" {
		source = o.Name
	}
	if err := syscall.Mount(source, mountpoint, "fuse."+o.Name, flags, strings.Join(opts, ",")); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// replayInit tells ps the INIT the kernel sent to the fuse.Server, so that
// both parse requests for the same protocol minor and capabilities.
func replayInit(ps *fuse.ProtocolServer, k *fuse.InitIn) error {
	init := *k
	init.Length = uint32(unsafe.Sizeof(init))
	init.Opcode = 26 // FUSE_INIT
	in := unsafe.Slice((*byte)(unsafe.Pointer(&init)), unsafe.Sizeof(init))
	out := make([]byte, 512)
	n, st := ps.HandleRequest([][]byte{in}, [][]byte{out})
	if !st.Ok() {
		return fmt.Errorf("INIT: %v", st)
	}
	if n < 16 {
		return fmt.Errorf("INIT: no reply")
	}
	if e := int32(binary.LittleEndian.Uint32(out[4:])); e != 0 {
		return fmt.Errorf("INIT: %v", syscall.Errno(-e))
	}
	return nil
}

// inlineOps are the operations a ring queue answers on its own thread:
// short, and the bulk of the traffic. Everything else (fsync and flush
// write back caches, release may flush, setattr, fallocate) runs on a
// goroutine of its own, so that it never holds up the queue.
var inlineOps = map[uint32]bool{
	1:  true, // LOOKUP
	3:  true, // GETATTR
	14: true, // OPEN
	15: true, // READ
	16: true, // WRITE
	17: true, // STATFS
	27: true, // OPENDIR
	28: true, // READDIR
	29: true, // RELEASEDIR
	34: true, // ACCESS
	44: true, // READDIRPLUS
	46: true, // LSEEK
}

// uringTune holds the transport's knobs, for measurements:
// QCOW2FS_URING_TUNE=depth=N,pin=0|1,async=all. Pinning each queue's thread to
// its CPU (as libfuse does) measured 1.2-2x faster at QD32 on 2 CPUs.
var uringTune = func() (t struct {
	depth    int
	pin      bool
	allAsync bool
}) {
	t.depth, t.pin = uringDepth, true
	for _, kv := range strings.Split(os.Getenv("QCOW2FS_URING_TUNE"), ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "depth":
			if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 1024 {
				t.depth = n
			}
		case "pin":
			t.pin = v == "1"
		case "async":
			t.allAsync = v == "all"
		}
	}
	return t
}()

// startURing serves the connection of fsrv (mounted on descriptor fd)
// over io_uring too.
func startURing(fsrv *fuse.Server, raw fuse.RawFileSystem, mopts *fuse.MountOptions, fd int, logf func(string, ...any)) (*fuseuring.Transport, error) {
	k := fsrv.KernelSettings()
	if k.Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		return nil, fmt.Errorf("the kernel did not offer FUSE_OVER_IO_URING in INIT")
	}
	ps := fuse.NewProtocolServer(raw, mopts)
	if err := replayInit(ps, k); err != nil {
		return nil, err
	}
	page := os.Getpagesize()
	maxPages := (mopts.MaxWrite-1)/page + 1
	payload := max(mopts.MaxWrite, maxPages*page, 8192)
	return fuseuring.Start(fuseuring.Config{
		FD:          fd,
		Depth:       uringTune.depth,
		PayloadSize: payload,
		Handle: func(in, out [][]byte) int {
			n, st := ps.HandleRequest(in, out)
			if !st.Ok() {
				return 0
			}
			return n
		},
		Async: func(op uint32) bool { return uringTune.allAsync || !inlineOps[op] },
		Pin:   uringTune.pin,
		Logf:  logf,
	})
}

// unmountFD unmounts a mount made by mountFD, retrying for a moment while
// the kernel still counts a file as open (EBUSY right after a close).
func unmountFD(mountpoint string) error {
	var err error
	delay := time.Duration(0)
	for try := 0; try < 5; try++ {
		if err = syscall.Unmount(mountpoint, 0); err == nil || err == syscall.EINVAL {
			return nil
		}
		delay = 2*delay + 5*time.Millisecond
		time.Sleep(delay)
	}
	return err
}

// pollHack does for a mount on our own descriptor what go-fuse's
// WaitMount does for its own mounts (and skips for /dev/fd/N): it makes
// the kernel send one FUSE_POLL, on go-fuse's special file, which go-fuse
// answers ENOSYS, so that the kernel sends no more. Otherwise a FUSE file
// opened by this very process (the unit tests; Go registers every opened
// file with its epoll) makes epoll_ctl wait for a POLL answer while
// holding the runtime's epoll lock, and the scheduler, polling that epoll,
// stalls with it: nothing is left to answer.
func pollHack(mountpoint string) {
	fd, err := syscall.Open(mountpoint+"/.go-fuse-epoll-hack", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}
	unix.Poll(pfd, 0)
	syscall.Close(fd)
}
