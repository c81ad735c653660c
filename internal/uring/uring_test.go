// Tests of the io_uring binding on the real kernel: NOPs through a wrapping
// ring, 64- and 128-byte SQEs, a pipe read, a URING_CMD to a file that has
// none.

package uring

import (
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newRing(t *testing.T, entries, flags uint32) *Ring {
	t.Helper()
	r, err := New(entries, flags)
	if err != nil {
		t.Fatalf("New(%d, %#x): %v", entries, flags, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestParamsLayout(t *testing.T) {
	// struct io_uring_params is 120 bytes; the kernel rejects other sizes'
	// reserved fields being non-zero, so a wrong layout shows up here.
	if n := unsafe.Sizeof(params{}); n != 120 {
		t.Fatalf("sizeof(params) = %d, want 120", n)
	}
}

func TestNops(t *testing.T) {
	for _, flags := range []uint32{0, SetupSQE128, SetupSQE128 | SetupSingleIssuer | SetupDeferTaskrun} {
		r := newRing(t, 4, flags)
		// More NOPs than SQ entries: the ring must wrap.
		for round := 0; round < 5; round++ {
			for i := 0; i < 4; i++ {
				s, err := r.GetSQE()
				if err != nil {
					t.Fatalf("flags %#x: GetSQE %d: %v", flags, i, err)
				}
				s.PrepNop(uint64(round*10 + i))
			}
			if _, err := r.GetSQE(); err != ErrSQFull {
				t.Fatalf("flags %#x: fifth GetSQE: %v, want ErrSQFull", flags, err)
			}
			if _, err := r.Submit(4); err != nil {
				t.Fatalf("flags %#x: Submit: %v", flags, err)
			}
			seen := map[uint64]bool{}
			for i := 0; i < 4; i++ {
				c, err := r.WaitCQE()
				if err != nil {
					t.Fatal(err)
				}
				if c.Res != 0 {
					t.Errorf("NOP result %d", c.Res)
				}
				seen[c.UserData] = true
				r.Advance(1)
			}
			for i := 0; i < 4; i++ {
				if !seen[uint64(round*10+i)] {
					t.Errorf("flags %#x: no completion for NOP %d (got %v)", flags, round*10+i, seen)
				}
			}
		}
		if sz := len(mustSQE(t, r)); (flags&SetupSQE128 != 0) != (sz == 128) {
			t.Errorf("flags %#x: SQE of %d bytes", flags, sz)
		}
	}
}

func mustSQE(t *testing.T, r *Ring) SQE {
	s, err := r.GetSQE()
	if err != nil {
		t.Fatal(err)
	}
	s.PrepNop(0)
	return s
}

func TestReadPipe(t *testing.T) {
	r := newRing(t, 8, SetupSQE128)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 16)
	s, _ := r.GetSQE()
	s.PrepRead(p[0], buf, -1, 42)
	if _, err := r.Submit(0); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.PeekCQE(); ok {
		t.Fatal("a read of an empty pipe completed")
	}
	unix.Write(p[1], []byte("hello"))
	c, err := r.WaitCQE()
	if err != nil {
		t.Fatal(err)
	}
	r.Advance(1)
	if c.UserData != 42 || c.Res != 5 || string(buf[:5]) != "hello" {
		t.Fatalf("CQE %+v, buf %q", c, buf[:5])
	}
}

// A URING_CMD to a file whose driver has no uring_cmd fails in its CQE,
// with the command bytes where the kernel expects them.
func TestURingCmdUnsupported(t *testing.T) {
	r := newRing(t, 8, SetupSQE128)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	s, _ := r.GetSQE()
	s.PrepURingCmd(p[0], 1, 0, 0, 7)
	if len(s.Cmd()) != CmdSize {
		t.Fatalf("command area of %d bytes", len(s.Cmd()))
	}
	s.Cmd()[0] = 1
	c, err := r.WaitCQE()
	if err != nil {
		t.Fatal(err)
	}
	r.Advance(1)
	if c.UserData != 7 || c.Res >= 0 {
		t.Fatalf("CQE %+v, want an error", c)
	}
	if e := syscall.Errno(-c.Res); e != syscall.EOPNOTSUPP && e != syscall.EBADF && e != syscall.EINVAL {
		t.Logf("URING_CMD on a pipe: %v", e)
	}
	small := newRing(t, 2, 0)
	if (small.sqeSize == 64) != (len(mustSQE(t, small).Cmd()) == 0) {
		t.Fatal("a 64-byte SQE has a command area")
	}
}
