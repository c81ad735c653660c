package fusefs

import (
	"fmt"
	"path/filepath"
	"strings"
)

// rawName is the file an image appears as: its base name without a
// .qcow2/.qcow suffix, plus ".raw" ("vm.qcow2" → "vm.raw").
func rawName(imagePath string) string {
	return stem(imagePath) + ".raw"
}

// snapshotName is the file an internal snapshot appears as: "vm@NAME.raw".
func snapshotName(imagePath, snap string) string {
	return stem(imagePath) + "@" + snap + ".raw"
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

// checkSnapshotName rejects snapshot names that cannot be part of a file
// name. QEMU accepts almost any string as a snapshot name.
func checkSnapshotName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty snapshot name")
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("snapshot name %q contains '/' or NUL", name)
	}
	return nil
}

// checkFileName rejects names the kernel would refuse (NAME_MAX).
func checkFileName(name string) error {
	if len(name) > 255 {
		return fmt.Errorf("file name %q is longer than 255 bytes", name)
	}
	return nil
}
