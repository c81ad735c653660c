// Package mounts reads what the kernel says is mounted
// (/proc/self/mountinfo) and which processes hold files open (/proc/PID/fd),
// for the CLI, the bench driver and the integration tests alike. It never
// stats anything under a FUSE mount whose daemon may be hung: fdinfo's
// mnt_id picks the descriptors worth a stat.
package mounts

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is one line of /proc/self/mountinfo.
type Entry struct {
	ID           int    // mount id (fdinfo's mnt_id)
	Dev          uint64 // st_dev of the files on it
	Point        string // mount point, unescaped
	Options      string // per-mount options (ro, nodev, ...)
	FSType       string // e.g. fuse.qcow2fs, ext4
	Source       string // e.g. the image path(s), /dev/loop3
	SuperOptions string // per-superblock options (user_id=0, max_read=...)
}

// Read parses this process's /proc/self/mountinfo.
func Read() ([]Entry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return Parse(string(b))
}

// Parse parses the format of proc(5): "id parent major:minor root
// mountpoint options [optional fields...] - fstype source superoptions".
func Parse(s string) ([]Entry, error) {
	var out []Entry
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("malformed mountinfo line %q", line)
		}
		id, err1 := strconv.Atoi(f[0])
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err2 := strconv.ParseUint(maj, 10, 32)
		mi, err3 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || !ok || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("malformed mountinfo line %q", line)
		}
		e := Entry{
			ID:      id,
			Dev:     unix.Mkdev(uint32(ma), uint32(mi)),
			Point:   Unescape(f[4]),
			Options: f[5],
			FSType:  f[sep+1],
			Source:  Unescape(f[sep+2]),
		}
		if sep+3 < len(f) {
			e.SuperOptions = f[sep+3]
		}
		out = append(out, e)
	}
	return out, nil
}

// Unescape undoes the kernel's octal escapes (\040 for a space, ...).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Last returns the entry mounted at point: the last one, which is the
// visible one when mounts are stacked.
func Last(entries []Entry, point string) (Entry, bool) {
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Point == point {
			return entries[i], true
		}
	}
	return Entry{}, false
}

// Find returns the visible mount at point; false also when mountinfo
// cannot be read.
func Find(point string) (Entry, bool) {
	entries, err := Read()
	if err != nil {
		return Entry{}, false
	}
	return Last(entries, point)
}

// IsMounted reports whether anything is mounted at point.
func IsMounted(point string) (bool, error) {
	entries, err := Read()
	if err != nil {
		return false, err
	}
	_, ok := Last(entries, point)
	return ok, nil
}

// Under lists the mount points strictly inside dir.
func Under(dir string) []string {
	entries, _ := Read()
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Point, prefix) {
			out = append(out, e.Point)
		}
	}
	return out
}
