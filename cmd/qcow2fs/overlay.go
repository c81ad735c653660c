package main

// Overlay mounts (--overlay FILE): the mounted image is evidence that must
// never change, yet tools need to write to it (replay a journal, fsck, boot
// the disk). The writes go to a qcow2 overlay whose backing file is the
// evidence. qcow2 opens backing files O_RDONLY and holds only a shared read
// lock on them, so the evidence is read and never written, and no other
// process can open it for writing while the mount lasts.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
// file: anything else would show a different disk under the evidence's
// name. cleanup removes an overlay created here (call it when the mount
// fails, so a failed mount leaves nothing behind).
func openOverlay(overlay, evidence string, opts qcow2.OpenOptions) (img *qcow2.Image, cleanup func(), err error) {
	cleanup = func() {}
	if _, err := os.Lstat(overlay); errors.Is(err, os.ErrNotExist) {
		// The absolute path as given, not the symlink-resolved one: that
		// is the name the user chose and that QEMU will resolve.
		err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: evidence, BackingFormat: "qcow2"})
		if err != nil {
			os.Remove(overlay)
			return nil, nil, fmt.Errorf("create overlay %s: %w", overlay, err)
		}
		cleanup = func() { os.Remove(overlay) }
		if opts.Warn != nil {
			opts.Warn(fmt.Sprintf("created overlay %s over %s", overlay, evidence))
		}
	}
	opts.ReadOnly = false
	img, err = qcow2.Open(overlay, opts)
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("overlay: %w", openError(overlay, err))
	}
	if err := checkOverlayBacking(img.Info(), evidence); err != nil {
		img.Close()
		cleanup()
		return nil, nil, err
	}
	return img, cleanup, nil
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
