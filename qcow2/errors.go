// FormatError, the error for a malformed or refused image (always naming
// the file), and the package's sentinel errors.

package qcow2

import (
	"errors"
	"fmt"
)

// FormatError reports an image that is malformed or uses something this
// implementation refuses. It always names the file.
type FormatError struct {
	File string
	Msg  string
}

func (e *FormatError) Error() string { return fmt.Sprintf("%s: %s", e.File, e.Msg) }

func formatErr(file, format string, args ...any) error {
	return &FormatError{File: file, Msg: fmt.Sprintf(format, args...)}
}

var (
	// ErrReadOnly is returned by writes to an image opened read-only (or a
	// snapshot view).
	ErrReadOnly = errors.New("image is read-only")
	// ErrCorrupt is returned by writes once the image was found (or marked)
	// corrupt; reads may go on where safe.
	ErrCorrupt = errors.New("image is corrupt; writes refused (run qcow2fs check / qemu-img check -r)")
	// ErrOutOfRange is returned for I/O past the virtual size.
	ErrOutOfRange = errors.New("I/O past the end of the virtual disk")
	// ErrClosed is returned by any call on a closed image.
	ErrClosed = errors.New("image is closed")
)
