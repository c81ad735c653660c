// Package fuseuring serves FUSE requests over io_uring (Linux 6.14+,
// CONFIG_FUSE_IO_URING, /sys/module/fuse/parameters/enable_uring): instead
// of read(2) on /dev/fuse and a write(2) of each reply, the daemon lends
// the kernel ring entries — a header buffer and a payload buffer each —
// with FUSE_IO_URING_CMD_REGISTER commands, and the kernel completes a
// command when it has put a request in its entry. The daemon answers in
// the same buffers and hands the entry back with one
// FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which also waits for the next
// request: one io_uring_enter can carry the replies and fetch the next
// requests of many entries.
//
// The kernel has one queue per possible CPU and puts a request on the
// queue of the CPU its caller runs on; the connection switches to the
// ring only once every queue has an entry registered. FORGET and
// INTERRUPT still come through /dev/fuse, and notifications are still
// written there: the classic reader stays, with little to do.
//
// The package knows the ring protocol and nothing of FUSE operations: a
// Handler turns a request (its bytes as an iovec) into a reply.
package fuseuring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qcow2fs/qcow2fs/internal/uring"
)

// Kernel ABI (include/uapi/linux/fuse.h, 7.42).
const (
	cmdRegister       = 1 // FUSE_IO_URING_CMD_REGISTER
	cmdCommitAndFetch = 2 // FUSE_IO_URING_CMD_COMMIT_AND_FETCH

	// struct fuse_uring_req_header: in_out[128], op_in[128],
	// struct fuse_uring_ent_in_out {flags, commit_id, payload_sz, padding, reserved}.
	hdrInOut    = 0
	hdrOpIn     = 128
	hdrEntInOut = 256
	hdrSize     = 256 + 32

	entCommitID  = hdrEntInOut + 8
	entPayloadSz = hdrEntInOut + 16

	inHeaderSize  = 40 // struct fuse_in_header
	outHeaderSize = 16 // struct fuse_out_header

	// struct fuse_uring_cmd_req in the SQE's command area.
	cmdReqCommitID = 8
	cmdReqQID      = 16
)

// EnableParam is the kernel's switch for FUSE over io_uring.
const EnableParam = "/sys/module/fuse/parameters/enable_uring"

// Enabled tells whether the running kernel has FUSE over io_uring switched
// on. A kernel without it has no such parameter.
func Enabled() bool {
	b, err := os.ReadFile(EnableParam)
	return err == nil && strings.TrimSpace(string(b)) == "Y"
}

// Handler answers one request: in holds the request as /dev/fuse would
// deliver it (fuse_in_header, the operation's header, the payload), out is
// where the reply goes (fuse_out_header, then the rest). It returns the
// number of bytes of reply written to out; 0 means no reply.
type Handler func(in, out [][]byte) int

// Config describes the ring entries of a connection.
type Config struct {
	// FD is a /dev/fuse descriptor of the connection, initialised (INIT
	// answered with FUSE_OVER_IO_URING). The transport dups it.
	FD int
	// Depth is the number of ring entries per queue.
	Depth int
	// PayloadSize is the size of each entry's payload buffer: at least
	// the connection's max_write and max_pages pages.
	PayloadSize int
	Handle      Handler
	// Async, when set, tells which operations (by FUSE opcode) are
	// answered on a goroutine of their own rather than on the queue's
	// thread: those that may block for long (fsync, flush) and would
	// hold up the requests behind them.
	Async func(opcode uint32) bool
	// Pin binds each queue's thread to the queue's CPU.
	Pin bool
	// Logf receives unexpected conditions.
	Logf func(format string, args ...any)
}

// Transport is the set of queues serving one connection.
type Transport struct {
	fd     int
	cfg    Config
	queues []*queue
	wg     sync.WaitGroup
}

// Queues is the number of queues the kernel expects: one per possible CPU.
func Queues() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, err
	}
	// "0-3", "0", "0-1,4-5": the kernel counts num_possible_cpus(), and
	// queue ids are CPU numbers, so the highest number + 1.
	last := -1
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		_, hi, found := strings.Cut(part, "-")
		if !found {
			hi = part
		}
		n, err := strconv.Atoi(hi)
		if err != nil {
			return 0, fmt.Errorf("/sys/devices/system/cpu/possible: %q", b)
		}
		last = max(last, n)
	}
	return last + 1, nil
}

// Start registers cfg.Depth entries on every queue and starts serving.
// It returns once every queue has registered its entries, or with the
// first error (the kernel then falls back to /dev/fuse for the requests).
func Start(cfg Config) (*Transport, error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	nq, err := Queues()
	if err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(uintptr(cfg.FD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup /dev/fuse: %w", err)
	}
	t := &Transport{fd: fd, cfg: cfg}
	errs := make(chan error, nq)
	for qid := 0; qid < nq; qid++ {
		q := &queue{t: t, qid: qid}
		t.queues = append(t.queues, q)
		t.wg.Add(1)
		go q.run(errs)
	}
	var first error
	for range nq {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		// The queues that did register stop when the connection ends;
		// the kernel serves /dev/fuse meanwhile (a failed REGISTER
		// switches the connection back).
		go func() { t.wg.Wait(); unix.Close(fd) }()
		return nil, first
	}
	go func() { t.wg.Wait(); unix.Close(fd) }()
	return t, nil
}

// Wait blocks until every queue has stopped: the connection ended
// (unmount, abort) and every request taken from the ring was answered.
func (t *Transport) Wait() { t.wg.Wait() }

// entry is one ring entry: its buffers live outside the Go heap (mmap), as
// the kernel keeps their addresses.
type entry struct {
	idx     int
	hdr     []byte
	payload []byte
	iov     *[2]unix.Iovec
	in      [3][]byte
	out     [2][]byte
	replied int // bytes of reply, set before the commit
}

type queue struct {
	t       *Transport
	qid     int
	ring    *uring.Ring
	ents    []*entry
	mem     [][]byte
	live    int // entries the kernel may still complete
	pending int // entries with a commit to submit

	// Answers of async requests, handed back to the queue's thread.
	doneMu  sync.Mutex
	done    []*entry
	efd     int
	efdBuf  []byte // 8 bytes, mmapped
	efdLive bool
	async   sync.WaitGroup
}

const wakeTag = ^uint64(0)

func (q *queue) run(started chan<- error) {
	defer q.t.wg.Done()
	// The ring belongs to this thread (SINGLE_ISSUER, DEFER_TASKRUN: the
	// kernel copies requests into the entries when this thread waits in
	// io_uring_enter), and the thread to the queue's CPU, where the
	// requests of its queue come from.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if q.t.cfg.Pin {
		var set unix.CPUSet
		set.Set(q.qid)
		unix.SchedSetaffinity(0, &set) // best effort: the CPU may be offline
	}
	err := q.setup()
	if err != nil {
		q.teardown()
		started <- fmt.Errorf("queue %d: %w", q.qid, err)
		return
	}
	started <- nil
	q.loop()
	q.async.Wait()
	q.teardown()
}

func (q *queue) setup() error {
	cfg := q.t.cfg
	var err error
	// Room for a commit per entry and the wake-up read.
	q.ring, err = uring.New(uint32(cfg.Depth+1), uring.SetupSQE128|uring.SetupSingleIssuer|uring.SetupDeferTaskrun)
	if err != nil {
		// DEFER_TASKRUN needs Linux 6.1; SQE128 is what the command needs.
		q.ring, err = uring.New(uint32(cfg.Depth+1), uring.SetupSQE128)
		if err != nil {
			return err
		}
	}
	page := os.Getpagesize()
	payloadSize := (cfg.PayloadSize + page - 1) / page * page
	small, err := unix.Mmap(-1, 0, (cfg.Depth*(hdrSize+32)+8+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap headers: %w", err)
	}
	q.mem = append(q.mem, small)
	payloads, err := unix.Mmap(-1, 0, cfg.Depth*payloadSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("mmap payload buffers: %w", err)
	}
	q.mem = append(q.mem, payloads)
	for i := 0; i < cfg.Depth; i++ {
		e := &entry{idx: i}
		e.hdr = small[i*hdrSize : (i+1)*hdrSize : (i+1)*hdrSize]
		iovOff := cfg.Depth*hdrSize + i*32
		e.iov = (*[2]unix.Iovec)(unsafe.Pointer(&small[iovOff]))
		e.payload = payloads[i*payloadSize : (i+1)*payloadSize : (i+1)*payloadSize]
		e.iov[0].Base = &e.hdr[0]
		e.iov[0].SetLen(hdrSize)
		e.iov[1].Base = &e.payload[0]
		e.iov[1].SetLen(payloadSize)
		q.ents = append(q.ents, e)
	}
	q.efdBuf = small[cfg.Depth*(hdrSize+32) : cfg.Depth*(hdrSize+32)+8]
	q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	if err := q.armWake(); err != nil {
		return err
	}
	for _, e := range q.ents {
		s, err := q.ring.GetSQE()
		if err != nil {
			return err
		}
		q.prepCmd(s, e, cmdRegister, 0)
	}
	if _, err := q.ring.Submit(0); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	q.live = len(q.ents)
	// A REGISTER that fails completes at once; one that succeeds only
	// completes with a request (handled by the loop).
	for {
		c, ok := q.ring.PeekCQE()
		if !ok || c.Res >= 0 {
			return nil
		}
		q.ring.Advance(1)
		if c.UserData == wakeTag {
			return fmt.Errorf("eventfd read: %w", syscall.Errno(-c.Res))
		}
		return fmt.Errorf("FUSE_IO_URING_CMD_REGISTER: %w", syscall.Errno(-c.Res))
	}
}

func (q *queue) teardown() {
	if q.ring != nil {
		q.ring.Close()
	}
	if q.efd > 0 {
		unix.Close(q.efd)
	}
	for _, m := range q.mem {
		unix.Munmap(m)
	}
	q.mem = nil
}

func (q *queue) armWake() error {
	s, err := q.ring.GetSQE()
	if err != nil {
		return err
	}
	s.PrepRead(q.efd, q.efdBuf, 0, wakeTag)
	q.efdLive = true
	return nil
}

func (q *queue) prepCmd(s uring.SQE, e *entry, op uint32, commitID uint64) {
	s.PrepURingCmd(q.t.fd, op, uintptr(unsafe.Pointer(e.iov)), 2, uint64(e.idx))
	cmd := s.Cmd()
	binary.LittleEndian.PutUint64(cmd[cmdReqCommitID:], commitID)
	binary.LittleEndian.PutUint16(cmd[cmdReqQID:], uint16(q.qid))
}

// loop serves until every entry has ended.
func (q *queue) loop() {
	for q.live > 0 {
		c, err := q.ring.WaitCQE()
		if err != nil {
			q.t.cfg.Logf("FUSE io_uring queue %d: %v", q.qid, err)
			if errors.Is(err, syscall.EBADF) || errors.Is(err, syscall.EINVAL) {
				return
			}
			continue
		}
		for {
			q.complete(c)
			q.ring.Advance(1)
			var ok bool
			if c, ok = q.ring.PeekCQE(); !ok {
				break
			}
		}
	}
}

func (q *queue) complete(c uring.CQE) {
	if c.UserData == wakeTag {
		q.efdLive = false
		if c.Res < 0 && c.Res != -int32(syscall.EINTR) && c.Res != -int32(syscall.EAGAIN) {
			q.t.cfg.Logf("FUSE io_uring queue %d: eventfd: %v", q.qid, syscall.Errno(-c.Res))
			return
		}
		q.doneMu.Lock()
		done := q.done
		q.done = nil
		q.doneMu.Unlock()
		for _, e := range done {
			q.commit(e)
		}
		if q.live > 0 {
			q.armWake()
		}
		return
	}
	if c.UserData >= uint64(len(q.ents)) {
		q.t.cfg.Logf("FUSE io_uring queue %d: completion for unknown entry %d", q.qid, c.UserData)
		return
	}
	e := q.ents[c.UserData]
	if c.Res < 0 {
		// ENOTCONN, ECONNABORTED: the connection is gone and the entry
		// with it. Anything else is a bug worth a line in the log.
		if err := syscall.Errno(-c.Res); err != syscall.ENOTCONN && err != syscall.ECONNABORTED && err != syscall.ECANCELED {
			q.t.cfg.Logf("FUSE io_uring queue %d entry %d: %v", q.qid, e.idx, err)
		}
		q.live--
		return
	}
	opcode := binary.LittleEndian.Uint32(e.hdr[hdrInOut+4:])
	if q.t.cfg.Async != nil && q.t.cfg.Async(opcode) {
		q.async.Add(1)
		go func() {
			defer q.async.Done()
			q.handle(e)
			q.doneMu.Lock()
			q.done = append(q.done, e)
			q.doneMu.Unlock()
			var one [8]byte
			binary.LittleEndian.PutUint64(one[:], 1)
			unix.Write(q.efd, one[:])
		}()
		return
	}
	q.handle(e)
	q.commit(e)
}

// handle runs the handler on the request in e and leaves the reply there.
func (q *queue) handle(e *entry) {
	h := e.hdr
	length := int(binary.LittleEndian.Uint32(h[hdrInOut:]))
	unique := binary.LittleEndian.Uint64(h[hdrInOut+8:])
	payloadSz := int(binary.LittleEndian.Uint32(h[entPayloadSz:]))
	opLen := length - inHeaderSize - payloadSz
	n := 0
	if opLen >= 0 && opLen <= hdrEntInOut-hdrOpIn && payloadSz <= len(e.payload) {
		e.in = [3][]byte{h[hdrInOut : hdrInOut+inHeaderSize], h[hdrOpIn : hdrOpIn+opLen], e.payload[:payloadSz]}
		e.out = [2][]byte{h[hdrInOut : hdrInOut+outHeaderSize], e.payload}
		n = q.t.cfg.Handle(e.in[:], e.out[:])
	} else {
		q.t.cfg.Logf("FUSE io_uring: malformed request (length %d, payload %d)", length, payloadSz)
	}
	if n < outHeaderSize {
		// No reply (or none possible): the entry must still go back,
		// with an error the kernel passes on to the caller.
		errno := syscall.EIO
		binary.LittleEndian.PutUint32(h[hdrInOut:], outHeaderSize)
		binary.LittleEndian.PutUint32(h[hdrInOut+4:], uint32(-int32(errno)))
		binary.LittleEndian.PutUint64(h[hdrInOut+8:], unique)
		n = outHeaderSize
	}
	binary.LittleEndian.PutUint32(h[entPayloadSz:], uint32(n-outHeaderSize))
	e.replied = n
}

// commit queues the reply in e and the fetch of its next request; the
// next wait submits it.
func (q *queue) commit(e *entry) {
	commitID := binary.LittleEndian.Uint64(e.hdr[entCommitID:])
	s, err := q.ring.GetSQE()
	if err != nil {
		// Cannot happen: the SQ has a slot per entry and the wake-up.
		if _, err := q.ring.Submit(0); err == nil {
			s, err = q.ring.GetSQE()
		}
		if err != nil {
			q.t.cfg.Logf("FUSE io_uring queue %d: no SQE for a commit: %v", q.qid, err)
			q.live--
			return
		}
	}
	q.prepCmd(s, e, cmdCommitAndFetch, commitID)
}

// Refuse tells the kernel that the connection of fd will not be served
// over io_uring after all, when INIT offered it but no entry could be
// registered: a REGISTER the kernel rejects switches the connection back
// to /dev/fuse (requests would otherwise wait for the ring for ever).
func Refuse(fd int) error {
	r, err := uring.New(1, uring.SetupSQE128)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := r.GetSQE()
	if err != nil {
		return err
	}
	// No iovec pair: the kernel answers EINVAL and gives up the ring.
	s.PrepURingCmd(fd, cmdRegister, 0, 0, 0)
	c, err := r.WaitCQE()
	if err != nil {
		return err
	}
	r.Advance(1)
	if c.Res >= 0 {
		return fmt.Errorf("the kernel accepted an empty REGISTER")
	}
	return nil
}
