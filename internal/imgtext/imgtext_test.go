// Tests of escaping image text for display, its bound on length, and a fuzz
// target for Escape.

package imgtext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, esc, quote string }{
		{"snap1", "snap1", `"snap1"`},
		{"", "", `""`},
		{"with space", "with space", `"with space"`},
		{"a\x00b", `a\x00b`, `"a\x00b"`},
		{"\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\a`, `"\x1b[2J\x1b]0;pwned\a"`},
		{"line\nbreak\r", `line\nbreak\r`, `"line\nbreak\r"`},
		{`back\slash`, `back\\slash`, `"back\\slash"`},
		{`say "hi"`, `say "hi"`, `"say \"hi\""`},
		{"bad\xff\xfeutf8", `bad\xff\xfeutf8`, `"bad\xff\xfeutf8"`},
		{"rtl\u202eexe.txt", `rtl\u202eexe.txt`, `"rtl\u202eexe.txt"`},
		{"ünïcödé 雪", "ünïcödé 雪", `"ünïcödé 雪"`},
		{"\x7f\u0085", `\x7f\u0085`, `"\x7f\u0085"`},
	} {
		if got := Escape(tc.in); got != tc.esc {
			t.Errorf("Escape(%q) = %s, want %s", tc.in, got, tc.esc)
		}
		if got := Quote(tc.in); got != tc.quote {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.quote)
		}
	}
}

// Long text is cut at the bound, on a rune boundary, and says how long it
// was; the result is short whatever the input.
func TestEscapeBounded(t *testing.T) {
	long := strings.Repeat("n", 65535)
	got := Escape(long)
	if want := strings.Repeat("n", MaxName) + "…(65535 bytes)"; got != want {
		t.Errorf("Escape(65535 × n) = %q (%d bytes), want %q", got[:20], len(got), want[:20])
	}
	if got := Quote(long); !strings.HasSuffix(got, `"…(65535 bytes)`) || len(got) != MaxName+2+len("…(65535 bytes)") {
		t.Errorf("Quote(65535 × n) ends %q, %d bytes", got[len(got)-20:], len(got))
	}
	if got := EscapePath(long); len(got) != MaxPath+len("…(65535 bytes)") {
		t.Errorf("EscapePath(65535 × n) has %d bytes", len(got))
	}
	// Exactly at the bound: no cut.
	if got := Escape(long[:MaxName]); got != long[:MaxName] {
		t.Errorf("a %d-byte name was changed", MaxName)
	}
	// Worst case: every byte escaped (4 bytes out per byte in).
	ctl := strings.Repeat("\x1b", 65535)
	if got := Escape(ctl); len(got) > 4*MaxName+32 || strings.ContainsRune(got, 0x1b) {
		t.Errorf("Escape(65535 × ESC) has %d bytes (or a raw ESC)", len(got))
	}
	// A multi-byte rune straddling the bound is dropped whole.
	s := strings.Repeat("a", MaxName-1) + "雪" + "tail"
	got = Escape(s)
	if !strings.HasPrefix(got, strings.Repeat("a", MaxName-1)+"…") || !utf8.ValidString(got) {
		t.Errorf("rune at the bound: %q", got[MaxName-8:])
	}
}

func FuzzEscape(f *testing.F) {
	f.Add("snap\x1b[31m")
	f.Add(strings.Repeat("\xff", 300))
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Escape(s), Quote(s), EscapePath(s)} {
			if len(out) > 10*MaxPath+64 {
				t.Fatalf("output of %d bytes", len(out))
			}
			if !utf8.ValidString(out) {
				t.Fatalf("invalid UTF-8 out: %q", out)
			}
			for _, r := range out {
				if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
					t.Fatalf("control character %U left in %q", r, out)
				}
			}
		}
	})
}
