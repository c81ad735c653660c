// Package imgtext makes text read from an image safe to show: snapshot
// names and IDs, backing and data file names, feature and bitmap names, and
// paths built from them. Such text is chosen by whoever made the image; it
// may hold terminal escape sequences, NUL bytes, invalid UTF-8, right-to-left
// overrides, or 64 KiB of anything. Every error, log line and terminal line
// that quotes it goes through this package: the text comes out with every
// byte or rune that is not printable escaped Go-style (\x1b, \x00, \u202e),
// backslashes doubled, and cut after a bounded number of bytes, with the
// full length said at the cut.
package imgtext

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

const (
	// MaxName bounds names: snapshot names and IDs, feature, bitmap and
	// file names.
	MaxName = 256
	// MaxPath bounds paths (PATH_MAX) and messages that embed them.
	MaxPath = 4096
)

// Escape returns s, escaped and cut at MaxName bytes, for use inside a
// message or a table column.
func Escape(s string) string { return escape(s, MaxName, false) }

// Quote is Escape in double quotes (with inner quotes escaped): for a name
// that sits among other words.
func Quote(s string) string { return escape(s, MaxName, true) }

// EscapePath is Escape for paths and whole messages: cut at MaxPath bytes.
func EscapePath(s string) string { return escape(s, MaxPath, false) }

// escape cuts s at limit bytes (on a rune boundary) and escapes what it
// keeps; a cut is marked "…" and followed by the original length.
func escape(s string, limit int, quoted bool) string {
	cut := len(s) > limit
	head := s
	if cut {
		end := limit
		// Back up to a rune start so a multi-byte rune is not split
		// into escaped garbage (at most 3 bytes back).
		for i := 0; i < utf8.UTFMax-1 && end > 0 && !utf8.RuneStart(s[end]); i++ {
			end--
		}
		head = s[:end]
	}
	q := strconv.Quote(head) // escapes non-printable runes and invalid bytes
	if !quoted {
		q = unquoteMarks(q[1 : len(q)-1])
	}
	if cut {
		q += fmt.Sprintf("…(%d bytes)", len(s))
	}
	return q
}

// unquoteMarks undoes strconv.Quote's escaping of '"', which only matters
// inside quotes.
func unquoteMarks(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			if s[i+1] == '"' {
				out = append(out, '"')
			} else {
				out = append(out, s[i], s[i+1])
			}
			i++
			continue
		}
		out = append(out, s[i])
	}
	return string(out)
}
