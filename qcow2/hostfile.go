// hostFile, the interface through which the image and its external data file
// are read and written, so that tests can inject faults and power cuts.

package qcow2

import (
	"io"
	"os"
)

// hostFile is what the mapper needs of a file on the host (the image or its
// external data file). *os.File provides it through osFile; tests wrap it to
// inject faults and simulate power cuts.
type hostFile interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
	// Datasync makes every completed write durable (fdatasync).
	Datasync() error
	// PunchHole deallocates a range; it then reads as zeros.
	PunchHole(off, n int64) error
	// AllocatedBytes is the space the file occupies on the host.
	AllocatedBytes() int64
}

type osFile struct{ *os.File }

func (f osFile) Datasync() error              { return fdatasync(f.File) }
func (f osFile) PunchHole(off, n int64) error { return punchHole(f.File, off, n) }
func (f osFile) AllocatedBytes() int64        { return allocatedBytes(f.File) }

// wrapHostFile lets tests interpose on every image and data file opened.
var wrapHostFile = func(path string, f hostFile) hostFile { return f }
