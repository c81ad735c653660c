// Overlay mounts (--overlay FILE): the mounted image is evidence that must
// never change, yet tools need to write to it (replay a journal, fsck, boot
// the disk). The writes go to a qcow2 overlay whose backing file is the
// evidence. qcow2 opens backing files O_RDONLY and holds only a shared read
// lock on them, so the evidence is read and never written, and no other
// process can open it for writing while the mount lasts.

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/qcow2fs/qcow2fs/internal/access"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// resolveOverlay makes the overlay path absolute (the daemon runs in /) and
// refuses the one mistake that would write to the evidence: naming the
// evidence itself as the overlay.
func resolveOverlay(overlay, evidence string) (string, error) {
	abs, err := filepath.Abs(overlay)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(abs); err == nil {
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("overlay %s is not a regular file", abs)
		}
		if ev, err := os.Stat(evidence); err == nil && os.SameFile(st, ev) {
			return "", usagef("overlay %s is the image itself; name a new file for the writes", abs)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("overlay %s: %w", abs, unwrapPathError(err))
	} else if st, err := os.Stat(filepath.Dir(abs)); err != nil || !st.IsDir() {
		return "", fmt.Errorf("overlay %s: directory %s does not exist", abs, filepath.Dir(abs))
	}
	return abs, nil
}

// openOverlay opens the overlay of evidence read-write, creating it first
// when missing. An existing overlay must have the evidence as its backing
// file (anything else would show a different disk under the evidence's
// name) and belong to the mounter, root or the evidence's owner (anyone
// else could have planted it, and could read and change it all along).
// cleanup removes an overlay created here (call it when the mount fails,
// so a failed mount leaves nothing behind).
func openOverlay(overlay, evidence string, opts qcow2.OpenOptions) (img *qcow2.Image, cleanup func(), err error) {
	cleanup = func() {}
	fi, err := os.Stat(evidence)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", evidence, unwrapPathError(err))
	}
	ev := fi.Sys().(*syscall.Stat_t)
	switch err := createOverlayFile(overlay, ev); {
	case err == nil:
		cleanup = func() { os.Remove(overlay) }
		// The absolute path as given, not the symlink-resolved one: that
		// is the name the user chose and that QEMU will resolve.
		if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: evidence, BackingFormat: "qcow2"}); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("create overlay %s: %w", overlay, err)
		}
		if opts.Warn != nil {
			opts.Warn(fmt.Sprintf("created overlay %s over %s", overlay, evidence))
		}
	case errors.Is(err, os.ErrExist):
		// Reused: checked below, once open.
	default:
		return nil, nil, fmt.Errorf("create overlay %s: %w", overlay, unwrapPathError(err))
	}
	opts.ReadOnly = false
	img, err = qcow2.Open(overlay, opts)
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("overlay: %w", openError(overlay, err))
	}
	err = checkOverlayOwner(img, ev.Uid)
	if err == nil {
		err = checkOverlayBacking(img.Info(), evidence)
	}
	if err != nil {
		img.Close()
		cleanup()
		return nil, nil, err
	}
	return img, cleanup, nil
}

// createOverlayFile creates the overlay file (an existing one is left
// alone: os.ErrExist) with the owner, group and mode of the evidence, as
// the overlay will hold the evidence's data: whoever may not read the
// evidence may not read the overlay. The owner may always write it (it is
// the writable layer). A mounter who is not root cannot give files away:
// the overlay is then theirs (they could read the evidence: they opened
// it), keeps the evidence's group only if they are in it, and has no group
// bits otherwise. Made 0600 first, so nobody can open it before it has
// its final owner and mode.
func createOverlayFile(overlay string, ev *syscall.Stat_t) error {
	f, err := os.OpenFile(overlay, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	mode := os.FileMode(ev.Mode&0o777 | 0o200)
	if err := f.Chown(int(ev.Uid), int(ev.Gid)); err != nil {
		if err := f.Chown(-1, int(ev.Gid)); err != nil {
			mode &^= 0o070
		}
	}
	if err := f.Chmod(mode); err != nil {
		os.Remove(overlay)
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// checkOverlayOwner refuses an existing overlay that belongs to someone
// other than the mounter, root or the evidence's owner (evOwner).
func checkOverlayOwner(img *qcow2.Image, evOwner uint32) error {
	fi, err := img.Stat()
	if err != nil {
		return fmt.Errorf("overlay %s: %w", img.Path(), err)
	}
	uid := fi.Sys().(*syscall.Stat_t).Uid
	if uid == 0 || uid == uint32(os.Geteuid()) || uid == evOwner {
		return nil
	}
	return fmt.Errorf("overlay %s belongs to %s, who is neither you, nor root, nor the owner of the image; refusing it (they could have planted it and can read and change it: name a new overlay file)",
		img.Path(), access.Lookup(uid))
}

// checkOverlayBacking makes sure the overlay's backing file is the evidence
// (the same file, whatever the path says) and is read as qcow2.
func checkOverlayBacking(in *qcow2.Info, evidence string) error {
	if in.BackingFile == "" || in.Backing == nil {
		return fmt.Errorf("overlay %s has no backing file; it is not an overlay of %s (name a new file)", in.Filename, evidence)
	}
	got, err1 := os.Stat(in.BackingFullPath)
	want, err2 := os.Stat(evidence)
	if err1 != nil || err2 != nil || !os.SameFile(got, want) {
		return fmt.Errorf("overlay %s has backing file %s, not %s; refusing to show it as that image (name a new overlay file)",
			in.Filename, in.BackingFullPath, evidence)
	}
	if in.Backing.Format != "qcow2" {
		return fmt.Errorf("overlay %s reads its backing file %s as %s, not qcow2", in.Filename, in.BackingFullPath, in.Backing.Format)
	}
	return nil
}
