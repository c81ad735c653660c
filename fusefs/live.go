// Live operations, dm suspend/resume style. Suspend closes the gate every
// image request passes (gate.go): new requests wait in the daemon, those in
// flight drain, then the images are flushed and closed, which releases
// their QEMU-compatible locks, so qemu-img and the maintenance commands may
// use them. Resume takes the images opened anew, checks they still fit the
// files the kernel knows (same virtual sizes), swaps them in behind the
// closed gate, brings the snapshot files up to date (new snapshots appear,
// deleted ones disappear) and opens the gate. Nothing else changes: the
// mount, the inodes, open descriptors and loop devices above stay as they
// are; they only see their I/O stall for a while.

package fusefs

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// snapFile is the file of one internal snapshot.
type snapFile struct {
	base     int    // index of its image
	id, name string // the snapshot's ID and name
	date     uint64 // its date (seconds << 32 | nanoseconds): with the ID, tells a recreated snapshot apart
	file     *imageFile
}

func snapDate(sn qcow2.SnapshotInfo) uint64 { return uint64(sn.DateSec)<<32 | uint64(sn.DateNsec) }

// notifyBound bounds the wait for the kernel to take a notification at
// resume (see coherence.go for why one may wait).
const notifyBound = 2 * time.Second

// Suspended reports whether the mount is suspended.
func (s *Server) Suspended() bool {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	return s.suspended
}

// Images returns the images the mount serves now; nil while suspended
// (they are closed then).
func (s *Server) Images() []*qcow2.Image {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if s.suspended {
		return nil
	}
	return append([]*qcow2.Image(nil), s.images...)
}

// Suspend stops taking requests, waits at most timeout for those in
// flight, flushes the images and closes them with their snapshot views.
// When draining takes longer, or a flush fails, nothing is closed, the
// requests go on, and Suspend returns the error.
func (s *Server) Suspend(timeout time.Duration) error {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if s.suspended {
		return fmt.Errorf("%s is already suspended", s.mountpoint)
	}
	for _, img := range s.images {
		if s.Failed(img) {
			// Its lock may be held for ever: flushing could never end.
			return fmt.Errorf("%s is out of service since a panic (see the log); unmount instead", img.Path())
		}
	}
	if err := s.writeBackKernel(timeout); err != nil {
		return fmt.Errorf("suspend %s: %w; not suspended", s.mountpoint, err)
	}
	g := s.root.gate
	if err := g.close(timeout); err != nil {
		return fmt.Errorf("suspend %s: %w", s.mountpoint, err)
	}
	for _, img := range s.images {
		if err := img.Flush(); err != nil {
			g.open()
			return fmt.Errorf("suspend %s: flush %s: %w; not suspended", s.mountpoint, img.Path(), err)
		}
	}
	// Every write is durable now (the gate is drained): a close or fsync
	// while suspended has nothing to flush and answers without waiting.
	for _, f := range s.root.files {
		f.flushMu.Lock()
		f.flushedGen.Store(f.writeGen.Load())
		f.flushMu.Unlock()
	}
	s.files = make([]os.FileInfo, len(s.images))
	for i, img := range s.images {
		s.files[i], _ = img.Stat()
	}
	var firstErr error
	for _, v := range s.views {
		v.Close()
	}
	s.views = nil
	for _, img := range s.images {
		if err := img.Close(); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("close %s: %w", img.Path(), err)
		}
	}
	s.suspended = true
	// The images are flushed and closed even if a close reported an
	// error: the mount is suspended either way.
	return firstErr
}

// writeBackKernel has the kernel send the writes it keeps in its page cache
// (a write-back cache mount) while the gate is still open to take them:
// an invalidation of a file's pages writes its dirty ones back first. What
// is written after this and before the gate closes races with the suspend,
// as a write that reaches the gate late does, and is written back after
// the resume. No-op without the write-back cache.
func (s *Server) writeBackKernel(timeout time.Duration) error {
	if !s.writeback {
		return nil
	}
	files := append([]*imageFile(nil), s.root.files...)
	if !notifyBounded(timeout, func() {
		for _, f := range files {
			if !f.ro && f.opened.Load() {
				// ENOENT: the kernel has forgotten the inode, and its pages.
				f.NotifyContent(0, 0)
			}
		}
	}) {
		return fmt.Errorf("the kernel took longer than %v to write back the writes it holds", timeout)
	}
	return nil
}

// ResumeReport says what changed in the mount at a resume.
type ResumeReport struct {
	Added, Removed []string // snapshot files
	Warnings       []string // snapshots not shown, and why
}

// Resume serves images, opened anew in the order of the mount's images,
// and lets the waiting requests in. It refuses (and the mount stays
// suspended) images that do not fit: another number of them, or a changed
// virtual size — the kernel, and whatever sits above (a loop device, a
// file system), know the old size. On failure the caller keeps (and
// closes) images.
func (s *Server) Resume(images []*qcow2.Image) (*ResumeReport, error) {
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	if !s.suspended {
		return nil, fmt.Errorf("%s is not suspended", s.mountpoint)
	}
	if len(images) != len(s.images) {
		return nil, fmt.Errorf("resume %s: %d images for %d", s.mountpoint, len(images), len(s.images))
	}
	for i, img := range images {
		old := s.images[i]
		if img.Size() != old.Size() {
			return nil, fmt.Errorf("resume %s: the virtual size of %s changed from %d to %d bytes while suspended; the mount stays suspended (set the size back, then resume; or unmount)",
				s.mountpoint, old.Path(), old.Size(), img.Size())
		}
		if was := s.files[i]; was != nil {
			if now, err := img.Stat(); err == nil && !os.SameFile(was, now) {
				return nil, fmt.Errorf("resume %s: %s is another file than the one suspended (replaced meanwhile); the mount stays suspended (put the file back, or unmount)",
					s.mountpoint, old.Path())
			}
		}
		if img.ReadOnly() != old.ReadOnly() {
			return nil, fmt.Errorf("resume %s: %s reopened read-only", s.mountpoint, old.Path())
		}
	}
	r := s.root
	swap := map[*qcow2.Image]*qcow2.Image{}
	for i, img := range images {
		swap[s.images[i]] = img
		if p := s.images[i].Path(); img.Path() != p {
			s.health.alias(img.Path(), p) // another layer (layer.go)
		}
	}
	for _, f := range r.files {
		if n, ok := swap[f.img]; ok {
			f.img = n
		}
	}
	for _, f := range r.infos {
		if n, ok := swap[f.img]; ok {
			f.img = n
		}
	}
	rep := &ResumeReport{}
	if !r.opts.NoSnapshots {
		s.views = r.refreshSnapshots(images, rep)
	}
	s.images = append([]*qcow2.Image(nil), images...)
	s.suspended = false
	r.gate.open()

	// The kernel may have cached what an outside program changed while
	// suspended (qemu-img snapshot -a rewrites the disk), and negative or
	// stale entries of the snapshot names: drop them. Bounded, after the
	// gate is open, since the kernel may wait on a request of ours.
	notifyBounded(notifyBound, func() {
		for _, f := range r.files {
			if f.img != nil && f.opened.Load() {
				f.NotifyContent(0, 0)
			}
		}
		for _, name := range append(append([]string(nil), rep.Added...), rep.Removed...) {
			r.NotifyEntry(name)
		}
	})
	return rep, nil
}

// refreshSnapshots matches the snapshot files to the snapshots the
// reopened images hold (the gate is closed): a file whose snapshot is still
// there (same ID, name and date) gets a new view of it, one whose snapshot
// went away leaves the directory (an open descriptor of it then reads
// ESTALE), and each new snapshot gets a new file. It returns the views.
func (r *rootDir) refreshSnapshots(images []*qcow2.Image, rep *ResumeReport) []*qcow2.Image {
	var views []*qcow2.Image
	kept := map[*snapFile]bool{}
	var fresh []struct {
		base int
		sn   qcow2.SnapshotInfo
	}
	for i, img := range images {
		for _, sn := range img.Snapshots() {
			if sn.Problem != "" {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: snapshot %s (ID %s) not shown: %s", img.Path(), imgtext.Quote(sn.Name), imgtext.Quote(sn.ID), sn.Problem))
				continue
			}
			var match *snapFile
			for _, sf := range r.snaps {
				if !kept[sf] && sf.base == i && sf.id == sn.ID && sf.name == sn.Name && sf.date == snapDate(sn) {
					match = sf
					break
				}
			}
			if match == nil {
				fresh = append(fresh, struct {
					base int
					sn   qcow2.SnapshotInfo
				}{i, sn})
				continue
			}
			v, err := img.OpenSnapshot(sn.Name)
			if err != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: snapshot %s not shown: %v", img.Path(), imgtext.Quote(sn.Name), err))
				continue
			}
			match.file.img = v
			views = append(views, v)
			kept[match] = true
		}
	}
	// Gone first, so that a snapshot deleted and created anew under the
	// same name gets its name back (as a new file).
	var snaps []*snapFile
	for _, sf := range r.snaps {
		if kept[sf] {
			snaps = append(snaps, sf)
			continue
		}
		sf.file.img = nil
		r.RmChild(sf.file.name)
		for i, f := range r.files {
			if f == sf.file {
				r.files = append(r.files[:i], r.files[i+1:]...)
				break
			}
		}
		rep.Removed = append(rep.Removed, sf.file.name)
	}
	for _, fr := range fresh {
		img := images[fr.base]
		name, _, err := SnapshotFile(r.stems[fr.base], fr.sn.Name)
		if err == nil && r.GetChild(name) != nil {
			err = fmt.Errorf("another file is already named %s", name)
		}
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: snapshot %s (ID %s) not shown: %v", img.Path(), imgtext.Quote(fr.sn.Name), imgtext.Quote(fr.sn.ID), err))
			continue
		}
		v, err := img.OpenSnapshot(fr.sn.Name)
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: snapshot %s not shown: %v", img.Path(), imgtext.Quote(fr.sn.Name), err))
			continue
		}
		views = append(views, v)
		f := newImageFile(v, name, &r.opts)
		f.health = r.health.of(v)
		f.gate = r.gate
		r.files = append(r.files, f)
		ch := r.NewPersistentInode(context.Background(), f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: r.nextIno})
		r.nextIno++
		r.AddChild(name, ch, false)
		snaps = append(snaps, &snapFile{base: fr.base, id: fr.sn.ID, name: fr.sn.Name, date: snapDate(fr.sn), file: f})
		rep.Added = append(rep.Added, name)
	}
	r.snaps = snaps
	return views
}
