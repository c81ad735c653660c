// Package units holds the one size grammar and the one size format of
// qcow2fs's command line: every size a user gives (mount --cache-size and
// -o cache_size, create SIZE and -o size/cluster_size, resize [+-]SIZE,
// map --start-offset/--max-length, convert -S) is read by Parse, and every
// size shown is written by Format. The grammar is qemu-img's (64M, 1.5G,
// 4096).
package units

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// sizeSuffixes are qemu-img's size suffixes (powers of 1024).
var sizeSuffixes = map[byte]uint{'b': 0, 'k': 10, 'm': 20, 'g': 30, 't': 40, 'p': 50, 'e': 60}

// Parse reads a size as qemu-img does: a number of bytes with an
// optional suffix k, M, G, T, P or E (any case, powers of 1024; "KiB",
// "KB" and "B" are accepted too). A decimal fraction is allowed with a
// suffix ("1.5G"); the result is rounded down to a whole byte. Negative
// sizes and sizes of 8 EiB or more are refused. The caller names the flag
// or option in its error.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("negative size %q", s)
	}
	invalid := fmt.Errorf("invalid size %q (want a number of bytes, optionally with a suffix k, M, G, T, P or E: e.g. 512, 64M, 1.5G)", s)
	num := t
	shift := uint(0)
	lower := strings.ToLower(t)
	for _, suf := range []string{"ib", "b"} {
		// "64KiB", "64KB"; a bare "B" means bytes.
		if strings.HasSuffix(lower, suf) && len(lower) > len(suf) && isSizeLetter(lower[len(lower)-len(suf)-1]) {
			lower = lower[:len(lower)-len(suf)]
			break
		}
	}
	if n := len(lower); n > 0 && isSizeLetter(lower[n-1]) {
		shift = sizeSuffixes[lower[n-1]]
		num = lower[:n-1]
	} else if n > 0 && lower[n-1] == 'b' {
		num = lower[:n-1]
	}
	if num == "" || strings.ContainsAny(num, "+-_ ") {
		return 0, invalid
	}
	tooLarge := fmt.Errorf("size %q is too large (at most 8 EiB less one byte)", s)
	if strings.Contains(num, ".") {
		if shift == 0 {
			return 0, fmt.Errorf("invalid size %q: a fraction needs a unit (e.g. 1.5G)", s)
		}
		r, ok := new(big.Rat).SetString(num)
		if !ok || r.Sign() < 0 || strings.ContainsAny(num, "eE/") {
			return 0, invalid
		}
		r.Mul(r, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), shift)))
		v := new(big.Int).Quo(r.Num(), r.Denom())
		if !v.IsInt64() {
			return 0, tooLarge
		}
		return v.Int64(), nil
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, tooLarge
		}
		return 0, invalid
	}
	if v > math.MaxInt64>>shift {
		return 0, tooLarge
	}
	return int64(v << shift), nil
}

func isSizeLetter(c byte) bool {
	_, ok := sizeSuffixes[c]
	return ok && c != 'b'
}

// ParseChange reads resize's SIZE argument: an absolute size, or one
// relative to the current size with a leading + or - (sign +1 or -1).
func ParseChange(s string) (sign int, n int64, err error) {
	switch {
	case strings.HasPrefix(s, "+"):
		sign, s = 1, s[1:]
	case strings.HasPrefix(s, "-"):
		sign, s = -1, s[1:]
	}
	n, err = Parse(s)
	return sign, n, err
}

// Format formats a byte count as QEMU's size_to_str does (what
// qemu-img info prints): three significant digits and a binary unit
// ("0 B", "1 KiB", "1.46 GiB").
func Format(v uint64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	// The unit is the largest whose value is at least 1000/1024 of it, so
	// the number stays below 1000.
	_, exp := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (exp - 1) / 10
	if i < 0 {
		i = 0
	}
	i = min(i, len(suffixes)-1)
	f := float64(v) / float64(uint64(1)<<(10*i))
	return strconv.FormatFloat(f, 'g', 3, 64) + " " + suffixes[i] + "B"
}
