// Switching the layer an image file serves (a live external snapshot, or
// the pivot back to the base image after a live commit): the mount is
// suspended, the caller creates or merges the layers while nothing is in
// flight, and resumes with another file in the image's place. The file's
// node keeps its name, inode and open descriptors; only the qcow2 image
// behind it changes, behind the closed gate.

package fusefs

import "fmt"

// SwitchImage lets the next Resume serve another file as image i (by
// default Resume refuses a file other than the one suspended: an image
// replaced behind the mount's back). Call it while suspended.
func (s *Server) SwitchImage(i int) error {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if !s.suspended {
		return fmt.Errorf("%s is not suspended", s.mountpoint)
	}
	if i < 0 || i >= len(s.files) {
		return fmt.Errorf("%s: no image %d", s.mountpoint, i)
	}
	s.files[i] = nil
	return nil
}

// alias makes the image file at path share the health of the one at as:
// the file nodes keep the health they were given (requests read it
// unlocked), so the layer switched in must answer for them.
func (b *healthBook) alias(path, as string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*imageHealth{}
	}
	h := b.m[as]
	if h == nil {
		h = &imageHealth{}
		b.m[as] = h
	}
	b.m[path] = h
}
