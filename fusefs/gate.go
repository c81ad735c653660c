// The gate every image request passes through, so that a mount can be
// suspended: new requests wait while it is closed, and closing waits (up to
// a deadline) for those inside.

package fusefs

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// gate is what every request that touches an image passes through, so
// that the mount can be suspended (live.go): while the gate is closed, new
// requests wait inside the daemon — they do not fail — and closing it waits
// until the requests already inside have left. Like an RWMutex whose
// writer gives up after a deadline.
type gate struct {
	mu       sync.Mutex
	closed   bool
	inflight int
	// opened is closed (the channel) when the gate opens again: the
	// requests waiting outside watch it.
	opened chan struct{}
	// drained is signalled when the last request inside leaves while the
	// gate is closed.
	drained chan struct{}
}

func newGate() *gate { return &gate{} }

// enter lets a request in, waiting while the gate is closed. A request the
// caller interrupts (the kernel's FUSE_INTERRUPT cancels ctx) gives up with
// EINTR. A nil gate (files built by hand in tests) always lets in.
func (g *gate) enter(ctx context.Context) syscall.Errno {
	if g == nil {
		return 0
	}
	for {
		g.mu.Lock()
		if !g.closed {
			g.inflight++
			g.mu.Unlock()
			return 0
		}
		wait := g.opened
		g.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return syscall.EINTR
		}
	}
}

// leave is deferred by every request that entered.
func (g *gate) leave() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.inflight--
	if g.closed && g.inflight == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
	g.mu.Unlock()
}

// close shuts the gate and waits at most timeout for the requests inside
// to leave. If they do not, the gate opens again (the waiting requests go
// on) and close fails.
func (g *gate) close(timeout time.Duration) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return fmt.Errorf("already suspended")
	}
	g.closed = true
	g.opened = make(chan struct{})
	if g.inflight == 0 {
		g.mu.Unlock()
		return nil
	}
	drained := make(chan struct{})
	g.drained = drained
	n := g.inflight
	g.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-drained:
		return nil
	case <-t.C:
	}
	g.mu.Lock()
	if g.inflight == 0 { // drained just now
		g.mu.Unlock()
		return nil
	}
	n = g.inflight
	g.drained = nil
	g.mu.Unlock()
	g.open()
	return fmt.Errorf("%d requests still in flight after %v; not suspended (resumed at once)", n, timeout)
}

// open lets the waiting requests in.
func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		return
	}
	g.closed = false
	close(g.opened)
}

// isClosed reports whether the gate is closed.
func (g *gate) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}
