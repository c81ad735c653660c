// Tests of the gate: a closed gate holds new requests, closing waits for
// those inside and gives up after its timeout.

package fusefs

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// A closed gate holds new requests until it opens; closing waits for the
// requests inside, and gives up (opening again) after its timeout.
func TestGate(t *testing.T) {
	g := newGate()
	ctx := context.Background()
	if e := g.enter(ctx); e != 0 {
		t.Fatal(e)
	}
	// One request inside that does not leave: close times out and opens.
	if err := g.close(50 * time.Millisecond); err == nil {
		t.Fatal("close drained a gate with a request inside")
	}
	if g.isClosed() {
		t.Fatal("a close that timed out left the gate closed")
	}
	g.leave()

	if err := g.close(time.Second); err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	go func() {
		g.enter(ctx)
		close(entered)
	}()
	select {
	case <-entered:
		t.Fatal("a request went through a closed gate")
	case <-time.After(100 * time.Millisecond):
	}
	// An interrupted request gives up.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if e := g.enter(cctx); e != syscall.EINTR {
		t.Fatalf("interrupted request: %v, want EINTR", e)
	}
	g.open()
	select {
	case <-entered:
	case <-time.After(time.Second):
		t.Fatal("the waiting request did not go on after open")
	}
	g.leave()

	// Close waits for the requests inside to leave.
	g.enter(ctx)
	go func() {
		time.Sleep(50 * time.Millisecond)
		g.leave()
	}()
	if err := g.close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	g.open()
}
