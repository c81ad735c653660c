// Helpers that compare files and ranges byte for byte, naming the first
// differing offset with a hex excerpt.

package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"
)

// compareFiles asserts got and want have the same size and bytes, naming the
// first differing offset.
func compareFiles(t testing.TB, got, want string) {
	t.Helper()
	if err := sameContent(got, want); err != nil {
		t.Errorf("%s differs from %s: %v", got, want, err)
	}
}

func sameContent(got, want string) error {
	g, err := os.Open(got)
	if err != nil {
		return err
	}
	defer g.Close()
	w, err := os.Open(want)
	if err != nil {
		return err
	}
	defer w.Close()
	gs, err := g.Stat()
	if err != nil {
		return err
	}
	ws, err := w.Stat()
	if err != nil {
		return err
	}
	if gs.Size() != ws.Size() {
		return fmt.Errorf("size %d, want %d", gs.Size(), ws.Size())
	}
	return compareRange(g, w, 0, ws.Size())
}

// compareRange compares [off, off+n) of two readers chunk by chunk.
func compareRange(got, want io.ReaderAt, off, n int64) error {
	const chunk = 1 << 20
	gb := make([]byte, chunk)
	wb := make([]byte, chunk)
	for done := int64(0); done < n; {
		l := int64(chunk)
		if n-done < l {
			l = n - done
		}
		at := off + done
		if _, err := got.ReadAt(gb[:l], at); err != nil && err != io.EOF {
			return fmt.Errorf("read %d bytes at %d: %w", l, at, err)
		}
		if _, err := want.ReadAt(wb[:l], at); err != nil && err != io.EOF {
			return fmt.Errorf("read reference %d bytes at %d: %w", l, at, err)
		}
		if !bytes.Equal(gb[:l], wb[:l]) {
			i := firstDiff(gb[:l], wb[:l])
			return fmt.Errorf("first difference at offset %d (%#x): got %s, want %s",
				at+int64(i), at+int64(i), excerpt(gb[:l], i), excerpt(wb[:l], i))
		}
		done += l
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// excerpt shows up to 16 bytes from i, in hex.
func excerpt(b []byte, i int) string {
	end := i + 16
	if end > len(b) {
		end = len(b)
	}
	return fmt.Sprintf("% x", b[i:end])
}
