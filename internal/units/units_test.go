// Table tests of size parsing and formatting.

package units

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		bad  string // part of the error, "" when the size is good
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "67108864", want: 64 << 20},
		{in: "512b", want: 512},
		{in: "512B", want: 512},
		{in: "64k", want: 64 << 10},
		{in: "64K", want: 64 << 10},
		{in: "64KiB", want: 64 << 10},
		{in: "64kb", want: 64 << 10},
		{in: "64KB", want: 64 << 10},
		{in: "10M", want: 10 << 20},
		{in: "32MiB", want: 32 << 20},
		{in: "32mib", want: 32 << 20},
		{in: "10G", want: 10 << 30},
		{in: "2T", want: 2 << 40},
		{in: "1P", want: 1 << 50},
		{in: "1E", want: 1 << 60},
		{in: "7E", want: 7 << 60},
		{in: "1.5G", want: 3 << 29},
		{in: "1.5GiB", want: 3 << 29},
		{in: "0.5k", want: 512},
		{in: "1.0009765625k", want: 1025},
		{in: "1.3k", want: 1331}, // rounded down
		{in: " 4M ", want: 4 << 20},
		{in: "8E", bad: "too large"}, // 2^63
		{in: "7.99999E", want: 9223360507639729739},
		{in: "8.0E", bad: "too large"},
		{in: "8388608T", bad: "too large"},
		{in: "9223372036854775807", want: 1<<63 - 1},
		{in: "9223372036854775808", bad: "too large"},
		{in: "99999999999999999999", bad: "too large"},
		{in: "99999999999T", bad: "too large"},
		{in: "", bad: "empty"},
		{in: "G", bad: "invalid"},
		{in: "B", bad: "invalid"},
		{in: "iB", bad: "invalid"},
		{in: "-1", bad: "negative"},
		{in: "-1G", bad: "negative"},
		{in: "-0.5G", bad: "negative"},
		{in: "+1G", bad: "invalid"},
		{in: "1.5", bad: "fraction needs a unit"},
		{in: "1.5B", bad: "fraction needs a unit"},
		{in: "64Q", bad: "invalid"},
		{in: "10X", bad: "invalid"},
		{in: "1e3", bad: "invalid"},
		{in: "1e3k", bad: "invalid"},
		{in: "1/2k", bad: "invalid"},
		{in: "0x100", bad: "invalid"},
		{in: "1 G", bad: "invalid"},
		{in: "1_000", bad: "invalid"},
		{in: "1..5G", bad: "invalid"},
		{in: "64MM", bad: "invalid"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		switch {
		case tt.bad != "" && err == nil:
			t.Errorf("Parse(%q) = %d, want an error", tt.in, got)
		case tt.bad != "" && !strings.Contains(err.Error(), tt.bad):
			t.Errorf("Parse(%q): %v, want an error saying %q", tt.in, err, tt.bad)
		case tt.bad == "" && err != nil:
			t.Errorf("Parse(%q): %v", tt.in, err)
		case tt.bad == "" && got != tt.want:
			t.Errorf("Parse(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := map[uint64]string{
		0:                 "0 B",
		999:               "999 B",
		1000:              "0.977 KiB",
		1024:              "1 KiB",
		1536:              "1.5 KiB",
		1 << 20:           "1 MiB",
		4 << 20:           "4 MiB",
		3 << 29:           "1.5 GiB",
		1572864000:        "1.46 GiB",
		123 << 30:         "123 GiB",
		1 << 40:           "1 TiB",
		1<<64 - 1:         "16 EiB",
		(1 << 40) * 1000:  "0.977 PiB",
		(1 << 40) * 999:   "999 TiB",
		(1 << 30) + 1<<20: "1 GiB",
	}
	for in, want := range tests {
		if got := Format(in); got != want {
			t.Errorf("Format(%d) = %q, want %q", in, got, want)
		}
	}
}
