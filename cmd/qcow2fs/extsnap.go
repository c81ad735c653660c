// Live external snapshots and live (active-layer) commit, through the
// mount's control socket (control.go), between requests: the daemon
// suspends the mount (the gate drains the requests in flight, the images
// are flushed and closed), creates or merges the layers while nothing is
// in flight, and resumes with another file behind the same image file of
// the mount (fusefs.Server.SwitchImage).
//
// External snapshot: OVERLAY is created (qcow2, backing IMAGE with
// backing_fmt qcow2, IMAGE's virtual size, cluster size and extended L2),
// the mount resumes serving OVERLAY read-write; opening it opens IMAGE
// read-only as its backing file with the shared reader lock of a backing
// file (no writer may open it while the mount lasts). IMAGE is then a
// stable point-in-time copy.
//
// Commit: the overlay's own clusters are merged into its backing file
// (qcow2.Commit: the backing file is written and flushed before the
// overlay is emptied, so a crash at any point leaves a chain that reads
// the same), then the mount resumes serving the backing file read-write.
// An overlay this daemon created by a live external snapshot is removed
// (it is empty and no longer used); any other is left, empty.
//
// The daemon keeps cfg.Images as the layers it serves and cfg.Mounted as
// the images it was mounted with (only while they differ); both go to the
// run-state file, so status, unmount, the maintenance commands' messages
// and resume see the active layer.

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qcow2fs/qcow2fs/fusefs"
	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// Control operations of this file.
const (
	opSnapshotExternal = "snapshot-external"
	opCommit           = "commit"
)

// liveTables is what the FUSE layer asks about an image by its path —
// whose permissions its files show, which stem its files are named by —
// kept current when a resume brings another layer in.
type liveTables struct {
	mu    sync.RWMutex
	perms map[string]fusefs.PermFunc
	stems map[string]string
}

func newLiveTables() *liveTables {
	return &liveTables{perms: map[string]fusefs.PermFunc{}, stems: map[string]string{}}
}

// addPerm records perm (as openImages returned it) for each of images.
func (t *liveTables) addPerm(images []*qcow2.Image, perm fusefs.PermFunc) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, img := range images {
		t.perms[img.Path()] = perm
	}
}

// perm is the fusefs.Options.Perm of the mount.
func (t *liveTables) perm(img *qcow2.Image, uid, gid, mode uint32) uint32 {
	t.mu.RLock()
	p := t.perms[img.Path()]
	t.mu.RUnlock()
	if p == nil {
		return 0
	}
	return p(img, uid, gid, mode)
}

func (t *liveTables) setStem(path, stem string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stems[path] = stem
}

func (t *liveTables) stem(path string) string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.stems[path]
}

// overlayBackingName is the backing file name written into a new overlay:
// relative when the overlay lives next to the image (the pair can then be
// moved together), else the image's absolute path.
func overlayBackingName(overlay, image string) string {
	if filepath.Dir(overlay) == filepath.Dir(image) {
		return filepath.Base(image)
	}
	return image
}

// overlayCreateOptions are the settings of an external snapshot of an
// image described by in: its virtual size, cluster size and L2 entry
// format, the image as qcow2 backing file.
func overlayCreateOptions(overlay string, in *qcow2.Info) qcow2.CreateOptions {
	return qcow2.CreateOptions{
		Size:          in.VirtualSize,
		ClusterSize:   in.ClusterSize,
		ExtendedL2:    in.ExtendedL2,
		BackingFile:   overlayBackingName(overlay, in.Filename),
		BackingFormat: "qcow2",
	}
}

// createExternalOverlay creates overlay over the image in describes, with
// the image's owner, group and mode (it will hold the image's data), never
// over an existing file. On failure nothing is left behind.
func createExternalOverlay(overlay string, in *qcow2.Info) error {
	fi, err := os.Stat(in.Filename)
	if err != nil {
		return fmt.Errorf("%s: %w", in.Filename, unwrapPathError(err))
	}
	if err := createOverlayFile(overlay, fi.Sys().(*syscall.Stat_t)); err != nil {
		return fmt.Errorf("create %s: %w", overlay, unwrapPathError(err))
	}
	if err := qcow2.Create(overlay, overlayCreateOptions(overlay, in)); err != nil {
		os.Remove(overlay)
		return fmt.Errorf("create %s: %w", overlay, err)
	}
	return nil
}

// closedInfo describes the image at path, opened read-only for the
// purpose (the daemon asks once the mount is suspended: the Info of an
// image in service would race with its writers). With chain, the backing
// files are opened (and described) too.
func closedInfo(path string, chain bool) (*qcow2.Info, error) {
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true, NoBacking: !chain})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.Info(), nil
}

// resolveNewOverlay makes OVERLAY absolute and refuses an existing file
// (an external snapshot never overwrites anything) or a missing directory.
func resolveNewOverlay(overlay, image string) (string, error) {
	abs, err := filepath.Abs(overlay)
	if err != nil {
		return "", err
	}
	// Not in a qcow2fs mount (nothing can be created there), and not
	// looked at there: a suspended mount would make the look wait.
	if entries, err := mounts.Read(); err == nil {
		for _, e := range entries {
			if e.FSType == fsType && underMount(abs, e.Point) {
				return "", fmt.Errorf("overlay %s: inside the qcow2fs mount at %s; name a file elsewhere", abs, e.Point)
			}
		}
	}
	if sameFile(abs, image) {
		return "", usagef("snapshot create --external: %s is the image itself; name a new file for the overlay", overlay)
	}
	if _, err := os.Lstat(abs); err == nil {
		return "", fmt.Errorf("%s already exists; name a new file for the overlay (an external snapshot never overwrites one)", abs)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("overlay %s: %w", abs, unwrapPathError(err))
	}
	if st, err := os.Stat(filepath.Dir(abs)); err != nil || !st.IsDir() {
		return "", fmt.Errorf("overlay %s: directory %s does not exist", abs, filepath.Dir(abs))
	}
	return abs, nil
}

// snapshotExternal is qcow2fs snapshot create --external OVERLAY IMAGE: on
// an image that no process writes, it creates the overlay; on one mounted
// read-write, the mount's daemon creates it and switches to it.
func snapshotExternal(overlayArg, path string, timeout time.Duration, quiet bool) error {
	image, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	overlay, err := resolveNewOverlay(overlayArg, image)
	if err != nil {
		return err
	}
	// A read-only open refuses while a writer holds the image (the lock
	// check), and tells the settings of the overlay.
	in, err := closedInfo(image, false)
	if isLockError(err) {
		resp, handled, lerr := liveRequest(opSnapshotExternal, "live external snapshot", image, overlay, timeout)
		if handled {
			if lerr == nil && !quiet {
				fmt.Printf("%s\n", resp.Note)
			}
			return lerr
		}
	}
	if err != nil {
		return maintError(path, err, false)
	}
	if err := createExternalOverlay(overlay, in); err != nil {
		return err
	}
	return nil
}

// liveRequest asks the daemon of the read-write mount that serves path
// (as one of its images, not a backing file or an overlay mount's
// evidence) to do op between requests. handled is false when no such
// mount holds the image (the caller then reports its own error).
func liveRequest(op, what, path, name string, timeout time.Duration) (resp *controlResponse, handled bool, err error) {
	for _, u := range findImageUses(path) {
		if u.Via != "" || u.Overlay || u.ReadOnly || u.PID == 0 {
			continue
		}
		resp, err := callControl(u.Mountpoint, controlRequest{Op: op, Image: path, Name: name, TimeoutMS: timeout.Milliseconds()}, timeout+controlSlack)
		if err != nil {
			return nil, true, err
		}
		for _, w := range resp.Warnings {
			fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s\n", w)
		}
		if !resp.OK {
			return resp, true, fmt.Errorf("%s via the mount at %s: %s", what, u.Mountpoint, resp.Error)
		}
		return resp, true, nil
	}
	return nil, false, nil
}

// imageIndex returns the index of the mount's image that is the file at
// path, and the image, or -1.
func (c *controller) imageIndex(path string) (int, *qcow2.Image) {
	for i, img := range c.srv.Images() {
		if sameFile(img.Path(), path) {
			return i, img
		}
	}
	return -1, nil
}

// layerCheck refuses the layer operations where they make no sense.
func (c *controller) layerCheck(what, image string) (int, *qcow2.Image, error) {
	switch {
	case c.cfg.Overlay != "":
		return -1, nil, fmt.Errorf("%s: this is an overlay mount (--overlay): its image stays unchanged by design; unmount it for that", what)
	case c.cfg.ReadOnly:
		return -1, nil, fmt.Errorf("%s: the mount is read-only", what)
	case c.srv.Suspended():
		return -1, nil, fmt.Errorf("%s: the mount is suspended: its images are free, run the command again without the mount's help, or resume first", what)
	}
	i, img := c.imageIndex(image)
	if img == nil {
		return -1, nil, fmt.Errorf("%s is not one of the images this mount serves", image)
	}
	return i, img, nil
}

// switchLayer makes the mount serve path as image i from the next resume
// on (the mount is suspended), under the name image i has now.
func (c *controller) switchLayer(i int, path string) error {
	if err := c.srv.SwitchImage(i); err != nil {
		return err
	}
	if c.cfg.Mounted == nil {
		c.cfg.Mounted = slices.Clone(c.cfg.Images)
	}
	c.tables.setStem(path, c.tables.stem(c.cfg.Images[i]))
	c.cfg.Images[i] = path
	if slices.Equal(c.cfg.Images, c.cfg.Mounted) {
		c.cfg.Mounted = nil
	}
	return nil
}

// externalSnapshot creates the overlay req.Name over the image req.Image
// and switches the mount to it between requests.
func (c *controller) externalSnapshot(req controlRequest, timeout time.Duration) controlResponse {
	i, img, err := c.layerCheck("external snapshot", req.Image)
	if err != nil {
		return controlResponse{Error: err.Error()}
	}
	overlay := req.Name
	if !filepath.IsAbs(overlay) {
		return controlResponse{Error: fmt.Sprintf("overlay %q: not an absolute path", overlay)}
	}
	if underMount(overlay, c.cfg.Mountpoint) {
		// The daemon never looks into its own mount (a suspended one
		// would wait for itself).
		return controlResponse{Error: fmt.Sprintf("overlay %s: inside the mount itself; name a file elsewhere", overlay)}
	}
	if _, err := resolveNewOverlay(overlay, img.Path()); err != nil {
		return controlResponse{Error: err.Error()}
	}
	base := img.Path()
	if err := c.suspend(timeout); err != nil {
		return controlResponse{Error: err.Error()}
	}
	start := time.Now()
	in, err := closedInfo(base, false)
	if err == nil {
		err = createExternalOverlay(overlay, in)
	}
	if err != nil {
		resp := c.resume()
		resp.Error = joinErr(err.Error()+"; the mount goes on with "+base, resp.Error)
		return resp
	}
	if err := c.switchLayer(i, overlay); err != nil {
		os.Remove(overlay)
		resp := c.resume()
		resp.Error = joinErr(err.Error(), resp.Error)
		return resp
	}
	resp := c.resume()
	if resp.Error != "" {
		// Back to the image; nothing was written to the overlay.
		msg := resp.Error
		if err := c.switchLayer(i, base); err != nil {
			return controlResponse{Error: joinErr(msg, err.Error())}
		}
		back := c.resume()
		if back.Error == "" {
			os.Remove(overlay)
			back.Error = msg + "; the mount goes on with " + base
		} else {
			back.Error = joinErr(msg, back.Error)
		}
		return back
	}
	c.created[overlay] = true
	c.log.Infof("external snapshot: %s now writes to %s; %s stays as it was (read-only backing file) [%v between requests]",
		c.cfg.Mountpoint, overlay, base, time.Since(start).Round(time.Millisecond))
	resp.Note = fmt.Sprintf("%s: writes go to %s now; %s stays as it is (read-only while the mount lasts). To merge them back: qcow2fs commit %s",
		c.cfg.Mountpoint, overlay, base, quoteArg(overlay))
	return resp
}

// commit merges the overlay req.Image into its backing file between
// requests and switches the mount to the backing file.
func (c *controller) commit(req controlRequest, timeout time.Duration) controlResponse {
	i, top, err := c.layerCheck("commit", req.Image)
	if err != nil {
		return controlResponse{Error: err.Error()}
	}
	overlay := top.Path()
	if err := c.suspend(timeout); err != nil {
		return controlResponse{Error: err.Error()}
	}
	start := time.Now()
	in, err := closedInfo(overlay, true)
	if err == nil && (in.BackingFullPath == "" || in.Backing == nil) {
		err = fmt.Errorf("%s has no backing file to commit to", overlay)
	}
	if err != nil {
		resp := c.resume()
		resp.Error = joinErr(err.Error(), resp.Error)
		return resp
	}
	base := in.BackingFullPath
	// Switch back under the name the image was mounted by, when it is the
	// same file.
	if c.cfg.Mounted != nil && sameFile(c.cfg.Mounted[i], base) {
		base = c.cfg.Mounted[i]
	}
	if err := qcow2.Commit(overlay); err != nil {
		resp := c.resume()
		resp.Error = joinErr(fmt.Sprintf("commit %s: %v; the mount goes on with %s, which reads the same", overlay, err, overlay), resp.Error)
		return resp
	}
	// The overlay is empty now and reads through to base: serving either
	// shows the same disk. base is served when it can be (a qcow2 image of
	// the same virtual size).
	pivot := in.Backing.Format == "qcow2"
	if pivot {
		b, err := qcow2.Open(base, qcow2.OpenOptions{ReadOnly: true, NoBacking: true})
		pivot = err == nil && b.Size() == top.Size()
		if err == nil {
			b.Close()
		}
	}
	if !pivot {
		resp := c.resume()
		resp.Note = fmt.Sprintf("committed %s into %s; the mount goes on with %s (empty now, it reads through)", overlay, base, overlay)
		return resp
	}
	if err := c.switchLayer(i, base); err != nil {
		resp := c.resume()
		resp.Error = joinErr(err.Error(), resp.Error)
		return resp
	}
	resp := c.resume()
	if resp.Error != "" {
		// The overlay again: empty, it shows the same disk.
		msg := resp.Error
		if err := c.switchLayer(i, overlay); err != nil {
			return controlResponse{Error: joinErr(msg, err.Error())}
		}
		back := c.resume()
		back.Error = joinErr(fmt.Sprintf("committed %s into %s, but %s; the mount goes on with %s (empty, it reads through)", overlay, base, msg, overlay), back.Error)
		return back
	}
	note := fmt.Sprintf("committed %s into %s; %s writes to %s again", overlay, base, c.cfg.Mountpoint, base)
	if c.created[overlay] {
		delete(c.created, overlay)
		if err := os.Remove(overlay); err == nil {
			note += " (" + overlay + " removed)"
		}
	} else {
		note += " (" + overlay + " is empty and no longer used)"
	}
	c.log.Infof("%s [%v between requests]", note, time.Since(start).Round(time.Millisecond))
	resp.Note = note
	return resp
}

func joinErr(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; and then: " + b
}

// liveCommit is qcow2fs commit on an overlay mounted read-write.
func liveCommit(path string, timeout time.Duration, quiet bool) (bool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, nil
	}
	resp, handled, err := liveRequest(opCommit, "live commit", abs, "", timeout)
	if handled && err == nil && !quiet {
		fmt.Println(resp.Note)
	}
	return handled, err
}

// switchedLayers lists, for a mount whose run state rs records layers
// other than the images it was mounted with, "LAYER (mounted as IMAGE)".
func switchedLayers(rs *runState) []string {
	if len(rs.Mounted) != len(rs.Images) {
		return nil
	}
	var out []string
	for i, img := range rs.Images {
		if rs.Mounted[i] != img {
			out = append(out, fmt.Sprintf("%s (mounted as %s)", img, rs.Mounted[i]))
		}
	}
	return out
}

// noteSwitchedLayers tells, at unmount, that the disk now lives in another
// file than the one the mount (and an fstab line) names.
func noteSwitchedLayers(rs *runState) {
	for _, l := range switchedLayers(rs) {
		fmt.Fprintf(os.Stderr, "qcow2fs: note: %s served %s since a live external snapshot or commit: mount that file to see this disk again (or commit it first)\n", rs.Mountpoint, l)
	}
}

// underMount reports whether path lies in the tree mounted at mountpoint.
func underMount(path, mountpoint string) bool {
	rel, err := filepath.Rel(mountpoint, filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
