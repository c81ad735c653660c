package qcow2

import "os"

// Stat describes the image file through the descriptor it was opened on,
// never through its path: a mount may cover the image's own directory, and
// a path lookup under it would come back to the daemon asking.
func (img *Image) Stat() (os.FileInfo, error) { return img.s.f.Stat() }
