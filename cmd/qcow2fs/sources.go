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

	"golang.org/x/sys/unix"
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
// died ("transport endpoint is not connected") is unmounted first.
func resolveMountpoint(arg string) (string, error) {
	abs, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if deadMount(abs) {
		if err := cleanupStaleMount(abs); err != nil {
			return "", err
		}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("mount point %s: %w", arg, unwrapPathError(err))
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

// deadMount reports whether mp is a FUSE mount whose daemon is gone. It
// asks with statfs(2), which the kernel always forwards to the daemon: a
// stat(2) may be answered from attributes the kernel cached before the
// daemon died, and then the mount looks alive for another second.
func deadMount(mp string) bool {
	var st unix.Statfs_t
	return errors.Is(unix.Statfs(mp, &st), syscall.ENOTCONN)
}

// cleanupStaleMount unmounts a FUSE mount whose daemon is gone. Nothing
// can be served from it any more, so a lazy unmount loses nothing.
func cleanupStaleMount(mp string) error {
	entries, err := readMountinfo()
	if err != nil {
		return err
	}
	e, ok := findMount(entries, mp)
	if !ok {
		return fmt.Errorf("mount point %s: transport endpoint is not connected, but nothing is mounted there", mp)
	}
	fmt.Fprintf(os.Stderr, "qcow2fs: warning: %s is a stale %s mount of %s (its daemon died); unmounting it\n", mp, e.FsType, e.Source)
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		if err2 := fusermountUnmount(mp, true); err2 != nil {
			return fmt.Errorf("clean up stale mount %s: %v", mp, err)
		}
	}
	return nil
}

// checkNotMounted refuses a mount point that already holds a qcow2fs mount
// and images that are already mounted elsewhere.
func checkNotMounted(mountpoint string, images []string, fsName string) error {
	entries, err := readMountinfo()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, s := range strings.Split(fsName, ",") {
		want[s] = true
	}
	for _, img := range images {
		if r, err := filepath.EvalSymlinks(img); err == nil {
			// The image itself, or its directory mounted as a source.
			want[r] = true
			want[filepath.Dir(r)] = true
		}
	}
	for _, e := range entries {
		if e.FsType != fsType {
			continue
		}
		if deadMount(e.MountPoint) {
			// Its daemon died: the images are free again.
			if err := cleanupStaleMount(e.MountPoint); err != nil {
				return err
			}
			continue
		}
		if e.MountPoint == mountpoint {
			return fmt.Errorf("%s is already a qcow2fs mount (of %s)", mountpoint, e.Source)
		}
		for _, s := range strings.Split(e.Source, ",") {
			if want[s] {
				return fmt.Errorf("%s is already mounted at %s", s, e.MountPoint)
			}
		}
	}
	return nil
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
