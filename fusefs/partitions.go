// Partition files (vm-p1.raw): reading an image's partition table and naming
// its data partitions.

package fusefs

import (
	"errors"
	"fmt"

	"github.com/qcow2fs/qcow2fs/parttable"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// readPartitions returns the data partitions of the image's partition
// table. No table means no partition files; a table that cannot be read is
// reported through warn and also means none, since the whole disk stays
// available as NAME.raw.
func readPartitions(img *qcow2.Image, warn func(string)) []parttable.Partition {
	t, err := parttable.Read(img, img.Size())
	if errors.Is(err, parttable.ErrNoTable) {
		return nil
	}
	if err != nil {
		warn(fmt.Sprintf("%s: partition table unusable, no partition files: %v", img.Path(), err))
		return nil
	}
	for _, w := range t.Warnings {
		warn(fmt.Sprintf("%s: partition table: %s", img.Path(), w))
	}
	return t.Data()
}

// partitionName is the file partition n of an image appears as: vm-p1.raw.
func partitionName(stem string, n int) string {
	return fmt.Sprintf("%s-p%d.raw", stem, n)
}
