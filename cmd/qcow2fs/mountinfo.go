package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	ID         int    // mount id (fdinfo's mnt_id)
	Dev        uint64 // st_dev of the files on it
	MountPoint string
	Options    string // per-mount options (ro, nodev, ...)
	FsType     string // e.g. fuse.qcow2fs
	Source     string // for us: the image path(s) or source directory
}

const fsType = "fuse.qcow2fs"

func readMountinfo() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountinfo(string(b))
}

// parseMountinfo parses the format of proc(5): "id parent major:minor root
// mountpoint options [optional fields...] - fstype source superoptions".
func parseMountinfo(s string) ([]mountEntry, error) {
	var out []mountEntry
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
		out = append(out, mountEntry{
			ID:         id,
			Dev:        unix.Mkdev(uint32(ma), uint32(mi)),
			MountPoint: unescapeMount(f[4]),
			Options:    f[5],
			FsType:     f[sep+1],
			Source:     unescapeMount(f[sep+2]),
		})
	}
	return out, nil
}

// unescapeMount undoes the kernel's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
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

// findMount returns the entry mounted at mountpoint (the last one, which
// is the visible one when mounts are stacked).
func findMount(entries []mountEntry, mountpoint string) (mountEntry, bool) {
	var found mountEntry
	ok := false
	for _, e := range entries {
		if e.MountPoint == mountpoint {
			found, ok = e, true
		}
	}
	return found, ok
}

// isMounted reports whether anything is mounted at mountpoint.
func isMounted(mountpoint string) (bool, error) {
	entries, err := readMountinfo()
	if err != nil {
		return false, err
	}
	_, ok := findMount(entries, mountpoint)
	return ok, nil
}
