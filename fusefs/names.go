// The names files appear under: NAME.raw for an image, STEM@SNAPSHOT.raw for
// a snapshot (refused or shortened when no file name can hold it).

package fusefs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/qcow2fs/qcow2fs/internal/imgtext"
)

// rawName is the file an image appears as: its base name without a
// .qcow2/.qcow suffix, plus ".raw" ("vm.qcow2" → "vm.raw").
func rawName(imagePath string) string {
	return stem(imagePath) + ".raw"
}

// Stem is the name an image's files start with: its base name without a
// .qcow2/.qcow suffix ("vm.qcow2" → "vm").
func Stem(imagePath string) string { return stem(imagePath) }

func stem(imagePath string) string {
	base := filepath.Base(imagePath)
	for _, ext := range []string{".qcow2", ".qcow"} {
		if len(base) > len(ext) && strings.EqualFold(base[len(base)-len(ext):], ext) {
			return base[:len(base)-len(ext)]
		}
	}
	return base
}

// SnapshotFile is the file an internal snapshot appears as: "STEM@NAME.raw"
// (STEM: see Stem and Options.Names). QEMU takes almost any string as a
// snapshot name; one that cannot be part of a file name (empty, or holding
// '/' or NUL) is an error, and the snapshot is not shown. A name too long
// for a file name (255 bytes in all) is shortened: as much of it as fits,
// "~", and 32 hex digits of the SHA-256 of the whole name. The result is
// deterministic (every mount shows the same file) and unique: a name that
// fits is kept verbatim unless it ends like a shortened one ("~" and 32
// hex digits), in which case it is shortened too, so no literal name can
// take a shortened one's file. NAME.info (qcow2fs info) lists the mapping.
func SnapshotFile(stem, snap string) (file string, shortened bool, err error) {
	switch {
	case snap == "":
		return "", false, fmt.Errorf("empty snapshot name")
	case strings.ContainsAny(snap, "/\x00"):
		return "", false, fmt.Errorf("the name contains '/' or NUL, which a file name cannot")
	}
	const prefix, suffix = "@", ".raw"
	if len(stem)+len(prefix)+len(snap)+len(suffix) <= maxFileName && !looksShortened(snap) {
		return stem + prefix + snap + suffix, false, nil
	}
	sum := sha256.Sum256([]byte(snap))
	tag := "~" + hex.EncodeToString(sum[:hashBytes])
	room := maxFileName - len(stem) - len(prefix) - len(tag) - len(suffix)
	if room < 0 {
		return "", false, fmt.Errorf("the image's file name (%d bytes) leaves no room for a shortened snapshot name", len(stem))
	}
	keep := min(room, len(snap))
	// Cut on a character boundary (at most 3 bytes back) when the name is
	// UTF-8, so the file name stays readable.
	for i := 0; i < utf8.UTFMax-1 && keep > 0 && keep < len(snap) && !utf8.RuneStart(snap[keep]); i++ {
		keep--
	}
	return stem + prefix + snap[:keep] + tag + suffix, true, nil
}

const (
	maxFileName = 255 // NAME_MAX
	hashBytes   = 16  // 128 bits: no practical collision, even a crafted one
)

// looksShortened reports whether a snapshot name ends like a shortened
// one: "~" and 32 lower-case hex digits.
func looksShortened(snap string) bool {
	n := 1 + 2*hashBytes
	if len(snap) < n || snap[len(snap)-n] != '~' {
		return false
	}
	for _, c := range snap[len(snap)-n+1:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkFileName rejects names the kernel would refuse (NAME_MAX).
func checkFileName(name string) error {
	if len(name) > maxFileName {
		return fmt.Errorf("file name %s is longer than %d bytes", imgtext.Quote(name), maxFileName)
	}
	return nil
}
