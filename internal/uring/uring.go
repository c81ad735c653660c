// Package uring is a small io_uring binding on golang.org/x/sys/unix: ring
// setup (optionally with 128-byte SQEs, which IORING_OP_URING_CMD needs for
// its 80-byte command area), the mmapped submission and completion rings,
// and io_uring_enter. It knows the few opcodes qcow2fs uses (NOP, READ,
// URING_CMD) and nothing of what a command means.
//
// A Ring is not safe for concurrent use: one goroutine, usually locked to
// its OS thread, owns it (see IORING_SETUP_SINGLE_ISSUER).
package uring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Setup flags (include/uapi/linux/io_uring.h).
const (
	SetupCoopTaskrun  = 1 << 8
	SetupTaskrunFlag  = 1 << 9
	SetupSQE128       = 1 << 10
	SetupCQE32        = 1 << 11
	SetupSingleIssuer = 1 << 12
	SetupDeferTaskrun = 1 << 13
)

// Opcodes.
const (
	OpNop      = 0
	OpRead     = 22
	OpURingCmd = 46
)

const (
	enterGetEvents = 1 << 0
	featSingleMmap = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	sqeSize64 = 64
	cqeSize16 = 16

	// CmdSize is the size of the command area of a 128-byte SQE.
	CmdSize = 80
)

// params is struct io_uring_params.
type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFD         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// Ring is one io_uring instance.
type Ring struct {
	fd      int
	flags   uint32
	sqeSize int
	cqeSize int

	ringMem []byte // SQ and CQ rings (one mapping with IORING_FEAT_SINGLE_MMAP)
	cqMem   []byte // the CQ ring when mapped on its own
	sqeMem  []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqEntries      uint32
	sqArray        []uint32
	sqeTail        uint32 // SQEs handed out, not yet made visible
	sqeHead        uint32 // SQEs made visible to the kernel

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []byte
}

// New sets up a ring with room for entries submissions (a power of two is
// not required; the kernel rounds up) and the given Setup* flags.
func New(entries uint32, flags uint32) (*Ring, error) {
	var p params
	p.flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &Ring{fd: int(fd), flags: flags, sqeSize: sqeSize64, cqeSize: cqeSize16}
	if flags&SetupSQE128 != 0 {
		r.sqeSize = 2 * sqeSize64
	}
	if flags&SetupCQE32 != 0 {
		r.cqeSize = 2 * cqeSize16
	}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Ring) mapRings(p *params) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*r.cqeSize
	single := p.features&featSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	r.ringMem, err = unix.Mmap(r.fd, offSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap SQ ring: %w", err)
	}
	cq := r.ringMem
	if !single {
		r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return fmt.Errorf("mmap CQ ring: %w", err)
		}
		cq = r.cqMem
	}
	r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*r.sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap SQEs: %w", err)
	}
	sq := r.ringMem
	r.sqHead = (*uint32)(unsafe.Pointer(&sq[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&sq[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&sq[p.sqOff.ringMask]))
	r.sqEntries = *(*uint32)(unsafe.Pointer(&sq[p.sqOff.ringEntries]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&sq[p.sqOff.array])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	r.cqes = cq[p.cqOff.cqes : int(p.cqOff.cqes)+int(p.cqEntries)*r.cqeSize]
	r.sqeTail = atomic.LoadUint32(r.sqTail)
	r.sqeHead = r.sqeTail
	return nil
}

// Close unmaps the rings and closes the ring's descriptor; the kernel
// cancels whatever is still in flight.
func (r *Ring) Close() error {
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.ringMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqMem, r.ringMem = nil, nil, nil
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// SQE is one submission queue entry, 64 or 128 bytes of the shared mapping.
type SQE []byte

// ErrSQFull means every SQE is taken until the next Submit.
var ErrSQFull = errors.New("io_uring submission queue full")

// GetSQE returns a zeroed free SQE, to be filled with one of the Prep
// methods and handed to the kernel by the next Submit.
func (r *Ring) GetSQE() (SQE, error) {
	head := atomic.LoadUint32(r.sqHead)
	if r.sqeTail-head >= r.sqEntries {
		return nil, ErrSQFull
	}
	i := r.sqeTail & r.sqMask
	r.sqeTail++
	s := SQE(r.sqeMem[int(i)*r.sqeSize : (int(i)+1)*r.sqeSize])
	clear(s)
	return s, nil
}

func (s SQE) put8(off int, v uint8)   { s[off] = v }
func (s SQE) put16(off int, v uint16) { *(*uint16)(unsafe.Pointer(&s[off])) = v }
func (s SQE) put32(off int, v uint32) { *(*uint32)(unsafe.Pointer(&s[off])) = v }
func (s SQE) put64(off int, v uint64) { *(*uint64)(unsafe.Pointer(&s[off])) = v }

// Field offsets of struct io_uring_sqe.
const (
	sqeOpcode   = 0
	sqeFD       = 4
	sqeOff      = 8 // also cmd_op (u32) for URING_CMD
	sqeAddr     = 16
	sqeLen      = 24
	sqeUserData = 32
	sqeCmd      = 48
)

// PrepNop makes s a no-op that completes with result 0.
func (s SQE) PrepNop(userData uint64) {
	s.put8(sqeOpcode, OpNop)
	s.put64(sqeUserData, userData)
}

// PrepRead makes s a read of len(buf) bytes at offset off of fd (-1: the
// file position). buf must stay valid and unmoved until the completion:
// memory outside the Go heap (mmap) or kept alive by the caller.
func (s SQE) PrepRead(fd int, buf []byte, off int64, userData uint64) {
	s.put8(sqeOpcode, OpRead)
	s.put32(sqeFD, uint32(int32(fd)))
	s.put64(sqeOff, uint64(off))
	if len(buf) > 0 {
		s.put64(sqeAddr, uint64(uintptr(unsafe.Pointer(&buf[0]))))
	}
	s.put32(sqeLen, uint32(len(buf)))
	s.put64(sqeUserData, userData)
}

// PrepURingCmd makes s an IORING_OP_URING_CMD to the driver behind fd:
// cmdOp is the driver's command number, addr and length go in the SQE's
// addr and len fields (their meaning is the driver's). The driver's
// command data goes in Cmd(), which needs a 128-byte SQE.
func (s SQE) PrepURingCmd(fd int, cmdOp uint32, addr uintptr, length uint32, userData uint64) {
	s.put8(sqeOpcode, OpURingCmd)
	s.put32(sqeFD, uint32(int32(fd)))
	s.put32(sqeOff, cmdOp)
	s.put64(sqeAddr, uint64(addr))
	s.put32(sqeLen, length)
	s.put64(sqeUserData, userData)
}

// Cmd is the command area of a 128-byte SQE (80 bytes), nil for a 64-byte one.
func (s SQE) Cmd() []byte {
	if len(s) < sqeCmd+CmdSize {
		return nil
	}
	return s[sqeCmd : sqeCmd+CmdSize]
}

// flushSQ makes the SQEs handed out since the last flush visible to the
// kernel and returns how many are waiting for submission.
func (r *Ring) flushSQ() uint32 {
	tail := atomic.LoadUint32(r.sqTail)
	for ; r.sqeHead != r.sqeTail; r.sqeHead++ {
		r.sqArray[tail&r.sqMask] = r.sqeHead & r.sqMask
		tail++
	}
	atomic.StoreUint32(r.sqTail, tail) // release: the SQEs before the tail
	return tail - atomic.LoadUint32(r.sqHead)
}

// Submit hands the prepared SQEs to the kernel and, if wait > 0, waits
// until at least wait completions are ready. It returns the number of
// SQEs the kernel consumed. EINTR is retried.
func (r *Ring) Submit(wait uint32) (int, error) {
	n := r.flushSQ()
	var flags uintptr
	if wait > 0 {
		flags |= enterGetEvents
	}
	if n == 0 && wait == 0 {
		return 0, nil
	}
	for {
		got, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(wait), flags, 0, 0)
		switch errno {
		case 0:
			return int(got), nil
		case syscall.EINTR:
			// Nothing was submitted when interrupted before the
			// submission; the SQ head tells what was.
			n = atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
			continue
		default:
			return 0, fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
}

// CQE is one completion.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// PeekCQE returns the oldest completion without waiting, if there is one.
// It stays in the ring until Advance.
func (r *Ring) PeekCQE() (CQE, bool) {
	head := atomic.LoadUint32(r.cqHead)
	if head == atomic.LoadUint32(r.cqTail) { // acquire: the CQE before the tail
		return CQE{}, false
	}
	off := int(head&r.cqMask) * r.cqeSize
	c := r.cqes[off : off+cqeSize16]
	return CQE{
		UserData: *(*uint64)(unsafe.Pointer(&c[0])),
		Res:      *(*int32)(unsafe.Pointer(&c[8])),
		Flags:    *(*uint32)(unsafe.Pointer(&c[12])),
	}, true
}

// Advance releases n completions returned by PeekCQE.
func (r *Ring) Advance(n uint32) {
	atomic.AddUint32(r.cqHead, n)
}

// WaitCQE returns the oldest completion, submitting what is prepared and
// waiting for one if there is none.
func (r *Ring) WaitCQE() (CQE, error) {
	for {
		if c, ok := r.PeekCQE(); ok {
			return c, nil
		}
		if _, err := r.Submit(1); err != nil {
			return CQE{}, err
		}
	}
}
