// A panic while serving a request is a bug, most likely tripped by a
// hostile or damaged image. It must cost that request (EIO) and that image,
// never the mount: the other images keep serving, and the mount unmounts.
//
// go-fuse recovers a panic in a handler and answers EIO, but that is not
// enough. The panic may have left the image's metadata lock held (the next
// request on the image then waits for ever: its caller sleeps in D state
// and the mount can never be unmounted, because closing the image at
// unmount waits too) or its metadata half-changed. So the handlers that
// call into an image recover themselves, and a panic puts the image out of
// service: every later request on any of its files (the raw file, its
// snapshots, partitions and info file) is answered EIO without touching
// it, and at unmount it is neither flushed nor closed — like a crash, which
// the metadata order is made to survive; the daemon's exit releases its
// file and locks.

package fusefs

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// imageHealth is shared by every file of one image file.
type imageHealth struct {
	failed atomic.Bool
	mu     sync.Mutex
	why    string
}

// healthBook hands out one imageHealth per image file (by path: the
// snapshot views of an image share its file and its lock).
type healthBook struct {
	mu sync.Mutex
	m  map[string]*imageHealth
}

func (b *healthBook) of(img *qcow2.Image) *imageHealth {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*imageHealth{}
	}
	h := b.m[img.Path()]
	if h == nil {
		h = &imageHealth{}
		b.m[img.Path()] = h
	}
	return h
}

// failed reports whether img was put out of service.
func (b *healthBook) failed(img *qcow2.Image) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.m[img.Path()]
	return h != nil && h.failed.Load()
}

// ok reports whether the image may still be used (a nil health, in tests
// that build files by hand, always may).
func (h *imageHealth) ok() bool { return h == nil || !h.failed.Load() }

func (h *imageHealth) fail(why string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	if h.why == "" {
		h.why = why
	}
	h.mu.Unlock()
	h.failed.Store(true)
}

// outOfService is the errno of a request on an image put out of service.
const outOfService = syscall.EIO

// guard is deferred by every handler of a file that calls into its image.
// It turns a panic into EIO, logs it with its stack and puts the image out
// of service.
func (f *imageFile) guard(op string, off int64, errno *syscall.Errno) {
	r := recover()
	if r == nil {
		return
	}
	why := fmt.Sprintf("panic in %s of %s at offset %d: %v", op, f.name, off, r)
	f.health.fail(why)
	f.log.WithFields(logrus.Fields{"image": f.img.Path(), "file": f.name, "offset": off}).
		Errorf("%s; the image is out of service until unmounted (every request on its files fails with EIO; it is not flushed at unmount)\n%s",
			why, debug.Stack())
	*errno = syscall.EIO
}

// guard of an info file: the text is made from the image.
func (f *infoFile) guard(op string, errno *syscall.Errno) {
	r := recover()
	if r == nil {
		return
	}
	why := fmt.Sprintf("panic in %s of %s: %v", op, f.name, r)
	f.health.fail(why)
	logrus.WithField("image", f.img.Path()).
		Errorf("%s; the image is out of service until unmounted\n%s", why, debug.Stack())
	*errno = syscall.EIO
}

// panicHandler answers a panic anywhere else in a request (go-fuse's own
// code, the root directory) with EIO and logs it; go-fuse has already
// recovered it.
func panicHandler(log logrus.FieldLogger) func(any) fuse.Status {
	return func(r any) fuse.Status {
		log.Errorf("panic in a FUSE request: %v; answered EIO, still serving\n%s", r, debug.Stack())
		return fuse.EIO
	}
}
