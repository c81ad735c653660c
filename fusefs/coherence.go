// Page cache coherence between the files of one image (the whole disk and
// its partitions): a change through one invalidates the others' cached pages.

package fusefs

import (
	"sync/atomic"
	"time"
)

// The files of one image (vm.raw and, with --partitions, vm-p1.raw, …) show
// overlapping bytes of one disk, but the kernel keeps a page cache per file
// and knows nothing of the overlap. After a write, write-zeroes or
// punch-hole through one file, the others' cached pages over that part of
// the disk are invalidated (FUSE_NOTIFY_INVAL_INODE), so that a buffered
// read through them sees the change at once rather than after the next
// attribute refresh — or never, while a loop device keeps one of them open.
//
// The notification is sent after the image call has returned, with no lock
// of ours held, and before the request is answered, so that once write(2)
// returns every sibling shows the data. The kernel handles it by locking
// the sibling's cached pages, and a page it holds locked may be one whose
// own WRITE waits for a reply from us: a buffered write that covers a page
// only partly, and finds it not up to date, keeps that page locked until
// the daemon answers. Two such writes through two files onto the same page
// of the disk, each notifying the other file, would wait on each other for
// ever (TestPartitionCoherenceUnderLoad hung that way). So the request
// waits for its notifications at most notifyWait: past that it is
// answered, which unlocks its page and lets the other side go on, and the
// notification completes in the background as soon as the page it waits
// for is unlocked — when that page's own write is answered, which is
// exactly when there is something new to read in it.
const notifyWait = 500 * time.Millisecond

// siblings is the set of files showing one image's disk.
type siblings struct {
	files []*imageFile
}

// join makes f one of the files of s.
func (s *siblings) join(f *imageFile) {
	s.files = append(s.files, f)
	f.siblings = s
}

// changed tells the kernel that the bytes [at, at+n) of the disk, written
// through from, changed: the other files drop their cached pages there.
// Files never opened have no pages and are skipped; so is everything when
// the image has only the one file.
func (f *imageFile) changed(at, n int64) {
	s := f.siblings
	if s == nil || n <= 0 {
		return
	}
	type inval struct {
		g       *imageFile
		off, sz int64
	}
	var todo []inval
	end := at + n
	for _, g := range s.files {
		if g == f || !g.opened.Load() {
			continue
		}
		lo, hi := max(at, g.base), min(end, g.base+g.length)
		if lo < hi {
			todo = append(todo, inval{g, lo - g.base, hi - lo})
		}
	}
	if len(todo) == 0 {
		return
	}
	notifyBounded(notifyWait, func() {
		for _, iv := range todo {
			// ENOENT: the kernel has forgotten the inode, and its pages.
			iv.g.NotifyContent(iv.off, iv.sz)
		}
	})
}

// notifyBounded runs notify, which sends the kernel notifications, on a
// goroutine of its own and waits at most bound for it: the kernel may wait
// on pages whose own requests wait for an answer from us (see notifyWait).
// Past bound the notifications complete in the background. It reports
// whether they completed in time.
func notifyBounded(bound time.Duration, notify func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		notify()
	}()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// opened is set on the first open of a file: only then can the kernel
// hold pages of it.
type openedFlag = atomic.Bool
