// A mount's sources and mount point: image files or directories of images
// resolved to absolute paths, and the mount point checked from mountinfo,
// run state and bounded probes (never a stat of a hung mount).

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// qcow2Magic starts every qcow2 file ("QFI\xfb").
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// resolveSources turns the SOURCE arguments (image files or directories of
// images) into absolute image paths and the name the mount shows as its
// source: the canonical path of the single source, so that mount(8) finds
// an fstab entry already mounted and `mount -a` mounts it only once.
//
// Images are opened by their absolute path, not the symlink-resolved one,
// because QEMU resolves relative backing file names against the directory
// of the name the image was opened under.
func resolveSources(sources []string) (images []string, fsName string, err error) {
	seen := map[string]string{} // canonical path → argument
	var canon []string
	for _, src := range sources {
		abs, err := filepath.Abs(src)
		if err != nil {
			return nil, "", err
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, "", fmt.Errorf("source %s: %w", src, unwrapPathError(err))
		}
		st, err := os.Stat(real)
		if err != nil {
			return nil, "", fmt.Errorf("source %s: %w", src, unwrapPathError(err))
		}
		canon = append(canon, real)
		var found []string
		if st.IsDir() {
			found, err = scanImageDir(abs)
			if err != nil {
				return nil, "", err
			}
			if len(found) == 0 {
				return nil, "", fmt.Errorf("no qcow2 images in directory %s", src)
			}
		} else if st.Mode().IsRegular() {
			found = []string{abs}
		} else {
			return nil, "", fmt.Errorf("source %s is neither a regular file nor a directory", src)
		}
		for _, img := range found {
			r, err := filepath.EvalSymlinks(img)
			if err != nil {
				return nil, "", fmt.Errorf("%s: %w", img, unwrapPathError(err))
			}
			if prev, dup := seen[r]; dup {
				return nil, "", usagef("image %s given twice (also as %s)", img, prev)
			}
			seen[r] = img
			images = append(images, img)
		}
	}
	return images, strings.Join(canon, ","), nil
}

// scanImageDir lists the qcow2 images directly inside dir: files named
// *.qcow2 or *.qcow, and any other regular file that starts with the
// qcow2 magic. Sorted by name; subdirectories are not searched.
func scanImageDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, unwrapPathError(err))
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			// Not an image, and not to be stat()ed: it may be the mount
			// point of a file system whose daemon does not answer.
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p) // follows symlinks to images
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		lower := strings.ToLower(e.Name())
		if strings.HasSuffix(lower, ".qcow2") || strings.HasSuffix(lower, ".qcow") || hasQcow2Magic(p) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

func hasQcow2Magic(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [4]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return false
	}
	return bytes.Equal(b[:], qcow2Magic)
}

// resolveMountpoint makes the mount point absolute and canonical (the form
// /proc/self/mountinfo shows). A mount point left behind by a daemon that
// died ("transport endpoint is not connected") is unmounted first. What is
// mounted there is judged from mountinfo, run state and a bounded probe
// before anything looks at the path: a stat of a mount whose daemon is
// stopped or hung would never return.
func resolveMountpoint(arg string) (string, error) {
	abs, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if err := checkMountedAt(abs); err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", arg, unwrapPathError(err))
	}
	if real != abs {
		if err := checkMountedAt(real); err != nil {
			return "", err
		}
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", arg, unwrapPathError(err))
	}
	if !st.IsDir() {
		return "", fmt.Errorf("mount point %s is not a directory", arg)
	}
	return real, nil
}

// checkMountedAt refuses a mount point that holds a live qcow2fs mount,
// cleans up a stale one, and refuses one whose FUSE daemon does not answer
// (looking into it would wait forever).
func checkMountedAt(mp string) error {
	entries, err := mounts.Read()
	if err != nil {
		return err
	}
	e, ok := mounts.Last(entries, mp)
	if !ok {
		return nil
	}
	if e.FSType == fsType {
		h := assessMounts([]mounts.Entry{e}, false)[0]
		switch h.State {
		case stateStale:
			return cleanupStaleMount(mp)
		case stateNotResponding:
			return fmt.Errorf("%s is already a qcow2fs mount (of %s), and %s", mp, e.Source, h.Why)
		}
		return fmt.Errorf("%s is already a qcow2fs mount (of %s)", mp, e.Source)
	}
	if strings.HasPrefix(e.FSType, "fuse") {
		switch probeMount(mp, probeTimeout) {
		case probeTimedOut:
			return fmt.Errorf("mount point %s: the %s file system mounted there does not answer", mp, e.FSType)
		case probeDead:
			return fmt.Errorf("mount point %s: transport endpoint is not connected (%s mount of %s; its daemon died)", mp, e.FSType, e.Source)
		}
	}
	return nil
}

// cleanupStaleMount unmounts a FUSE mount whose daemon is gone. Nothing
// can be served from it any more, so a lazy unmount loses nothing.
func cleanupStaleMount(mp string) error {
	entries, err := mounts.Read()
	if err != nil {
		return err
	}
	e, ok := mounts.Last(entries, mp)
	if !ok {
		return nil // someone else cleaned it up meanwhile
	}
	fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s is a stale %s mount of %s (its daemon died); unmounting it\n", mp, e.FSType, e.Source)
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		if err2 := fusermountUnmount(mp, true); err2 != nil {
			return fmt.Errorf("clean up stale mount %s: %v", mp, err)
		}
	}
	return nil
}

// checkNotMounted refuses a mount point that already holds a qcow2fs mount
// and images that are already mounted elsewhere, and cleans up the mounts
// of daemons that died. It never waits on another mount: a daemon on
// record that is alive counts as mounted without being asked, and only
// mounts without one are probed, within a bound.
func checkNotMounted(mountpoint string, images []string, fsName string) error {
	entries, err := qcow2fsMounts()
	if err != nil {
		return err
	}
	mine := newImageSet(images)
	for _, h := range assessMounts(entries, false) {
		e := h.Entry
		if h.State == stateStale {
			// Its daemon died: the images are free again.
			if err := cleanupStaleMount(e.Point); err != nil {
				return err
			}
			continue
		}
		why := ""
		if h.State == stateNotResponding {
			why = "; " + h.Why
		}
		if e.Point == mountpoint {
			return fmt.Errorf("%s is already a qcow2fs mount (of %s)%s", mountpoint, e.Source, why)
		}
		if img := mine.usedBy(h, fsName); img != "" {
			return fmt.Errorf("%s is already mounted at %s%s", img, e.Point, why)
		}
	}
	return nil
}

// imageSet is the images a new mount wants, by canonical path and by file
// identity (a hard link or bind mount is the same image).
type imageSet struct {
	paths map[string]string      // canonical path → image as given
	dirs  map[string]string      // directory of each image → image
	infos map[string]os.FileInfo // image as given → its stat
}

func newImageSet(images []string) *imageSet {
	s := &imageSet{paths: map[string]string{}, dirs: map[string]string{}, infos: map[string]os.FileInfo{}}
	for _, img := range images {
		r, err := filepath.EvalSymlinks(img)
		if err != nil {
			r = img
		}
		s.paths[r] = img
		s.dirs[filepath.Dir(r)] = img
		if st, err := os.Stat(r); err == nil {
			s.infos[img] = st
		}
	}
	return s
}

// same returns the image of the set that is the file at path, or "".
func (s *imageSet) same(path string) string {
	if img, ok := s.paths[path]; ok {
		return img
	}
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	for img, mine := range s.infos {
		if os.SameFile(st, mine) {
			return img
		}
	}
	return ""
}

// usedBy returns an image of the set that the mount h holds, or "". The
// daemon's run state lists its images exactly; without one the mount's
// source is all there is: the canonical path of the image or directory, or
// several joined with commas — which a comma inside a path makes
// ambiguous, so a source that names an existing file is taken whole, and
// only one that does not is split.
func (s *imageSet) usedBy(h mountHealth, fsName string) string {
	if rs := h.RS; rs != nil {
		held := append([]string{}, rs.Images...)
		if rs.Overlay != "" {
			held = append(held, rs.Overlay)
		}
		for _, p := range held {
			if img := s.same(p); img != "" {
				return img
			}
		}
		return ""
	}
	src := h.Entry.Source
	if src == fsName {
		return src
	}
	pieces := []string{src}
	if _, err := os.Stat(src); err != nil && strings.Contains(src, ",") {
		// Not one path: several joined.
		pieces = append(pieces, strings.Split(src, ",")...)
	}
	for _, p := range pieces {
		if img := s.same(p); img != "" {
			return img
		}
		if img, ok := s.dirs[p]; ok {
			return img // a directory source that holds the image
		}
	}
	return ""
}

// unwrapPathError drops the "op path:" prefix of *os.PathError when the
// caller's message names the path already.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
