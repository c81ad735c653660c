// Backup (qcow2fs backup): a full copy of an image's guest content into a
// new qcow2 image, or an incremental one holding only what a persistent
// dirty bitmap marks dirty, on top of the previous backup.
//
// The source is only read: it is opened read-only with QEMU's reader
// locks, unless the bitmap is to be cleared, when it is opened read-write
// (writer locks) for the whole run, so no write can slip in between the
// copy and the clear. The bitmap is cleared only once the target is
// closed and synced, its directory too: a failed backup loses no dirty
// bits.

package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// BackupOptions are the settings of Backup.
type BackupOptions struct {
	// Bitmap names a persistent bitmap of the source. Without Full, only
	// the clusters it marks dirty are copied (BackingFile is required).
	Bitmap string
	// Full copies everything even with Bitmap (which then is only
	// checked, and cleared with Clear): the start of a chain.
	Full bool
	// Clear clears Bitmap once the target is durable.
	Clear bool
	// BackingFile is the target's backing file (the previous backup, a
	// qcow2 image), stored as given: relative to the target's directory
	// when not absolute, as qemu-img stores it.
	BackingFile string
	// Compress writes the target's data clusters compressed (with the
	// source's compression type; see WriteCompressed). Zero clusters stay
	// zero clusters.
	Compress bool
	// Progress, when set, is called with the bytes copied so far and the
	// total to copy.
	Progress func(done, total int64)
}

// Backup copies the image at src into a new qcow2 image at target (which
// must not exist), with the source's cluster size and virtual size.
//
// Full: data is read and written, ranges that read as zeros are left
// unallocated (the target has no backing file). Incremental (Bitmap
// without Full): each dirty range, rounded out to clusters, is copied;
// ranges that read as zeros become zero clusters so they hide the older
// backup's data.
func Backup(src, target string, o BackupOptions) error {
	switch {
	case o.Clear && o.Bitmap == "":
		return errors.New("clearing needs a bitmap")
	case o.Bitmap != "" && !o.Full && o.BackingFile == "":
		return fmt.Errorf("%s: an incremental backup needs a backing file (the previous backup)", target)
	case o.BackingFile != "" && (o.Bitmap == "" || o.Full):
		return fmt.Errorf("%s: a full backup stands alone: it takes no backing file", target)
	}
	if o.Progress == nil {
		o.Progress = func(int64, int64) {}
	}
	tabs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(tabs); err == nil {
		return fmt.Errorf("%s: target already exists (backup never overwrites)", target)
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("%s: %w", target, err)
	}
	if !o.Clear {
		img, err := Open(src, OpenOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer img.Close()
		return backupTo(img, tabs, o)
	}
	m, err := openMaint(src)
	if err != nil {
		return err
	}
	err = m.unlocked(func() error { return backupTo(m.img, tabs, o) })
	if err != nil {
		return m.close(err)
	}
	// The target is durable: only now may the dirty bits go.
	if err := m.close(m.bitmapUpdate(o.Bitmap, []BitmapAction{{Kind: "clear"}}, BitmapOptions{})); err != nil {
		return fmt.Errorf("backup %s is complete, but clearing bitmap of %s failed: %w", target, src, err)
	}
	return nil
}

// backupTo creates target and copies img into it; on failure the partial
// target is removed. It returns once the target is closed and synced, its
// directory entry too.
func backupTo(img *Image, target string, o BackupOptions) error {
	// What to copy: everything, or the dirty ranges rounded out to clusters.
	cs := img.ClusterSize()
	ranges := [][2]int64{{0, img.Size()}}
	if o.Bitmap != "" {
		exts, err := img.BitmapExtents(o.Bitmap)
		if err != nil {
			return err
		}
		if !o.Full {
			ranges = ranges[:0]
			for _, e := range exts {
				if !e.Dirty {
					continue
				}
				start := e.Start &^ (cs - 1)
				end := min((e.Start+e.Length+cs-1)&^(cs-1), img.Size())
				if k := len(ranges) - 1; k >= 0 && ranges[k][1] >= start {
					ranges[k][1] = max(ranges[k][1], end)
					continue
				}
				ranges = append(ranges, [2]int64{start, end})
			}
		}
	}
	if o.BackingFile != "" {
		b, err := Open(resolveRelative(target, o.BackingFile), OpenOptions{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("%s: backing file: %w", target, err)
		}
		bsize := b.Size()
		b.Close()
		if bsize != img.Size() {
			return fmt.Errorf("%s: backing file %s has virtual size %d, but %s has %d: not a backup of this disk", target, o.BackingFile, bsize, img.Path(), img.Size())
		}
	}
	// Claim the name first, so a file that appears meanwhile is never
	// overwritten (Create itself would replace it).
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s: target already exists (backup never overwrites)", target)
		}
		return fmt.Errorf("create %s: %w", target, err)
	}
	f.Close()
	ok := false
	defer func() {
		if !ok {
			os.Remove(target)
		}
	}()
	co := CreateOptions{Size: img.Size(), ClusterSize: cs}
	if o.Compress && img.s.compr == CompressionZstd {
		co.CompressionType = "zstd"
	}
	if o.BackingFile != "" {
		co.BackingFile, co.BackingFormat = o.BackingFile, "qcow2"
	}
	if err := Create(target, co); err != nil {
		return err
	}
	dst, err := Open(target, OpenOptions{})
	if err != nil {
		return err
	}
	// The copy is convert's pipeline (parallel reads, zero detection and
	// compression): the whole disk by block status for a full backup, the
	// dirty ranges whole for an incremental one (zeros there hide the
	// previous backup's data).
	co2 := ConvertOptions{Compress: o.Compress, Sparse: 512, Progress: o.Progress}
	if o.BackingFile != "" {
		co2.ranges = ranges
	}
	if err := convertRun(img, nil, qcow2Out{dst}, img.Size(), cs, co2); err != nil {
		dst.Close()
		return fmt.Errorf("backup of %s to %s: %w", img.Path(), target, err)
	}
	if err := dst.Close(); err != nil {
		return nameFile(target, err)
	}
	if err := syncDir(filepath.Dir(target)); err != nil {
		return err
	}
	ok = true
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// syncDir makes the directory entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
