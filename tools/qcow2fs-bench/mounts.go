package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// mountEntry is the part of a /proc/self/mountinfo line the bench needs.
type mountEntry struct {
	point   string
	fsType  string
	source  string
	options string // per-mount and per-superblock options, comma-joined
}

func readMounts() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS...] - TYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 6 || len(g) < 3 {
			continue
		}
		out = append(out, mountEntry{
			point:   unescapeMount(f[4]),
			fsType:  g[0],
			source:  unescapeMount(g[1]),
			options: f[5] + "," + g[2],
		})
	}
	return out, nil
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func findMount(point string) (mountEntry, bool) {
	ms, err := readMounts()
	if err != nil {
		return mountEntry{}, false
	}
	// The last entry wins: it is the one on top.
	var found mountEntry
	ok := false
	for _, m := range ms {
		if m.point == point {
			found, ok = m, true
		}
	}
	return found, ok
}

func isMounted(point string) bool {
	_, ok := findMount(point)
	return ok
}

// mountsUnder lists the mount points inside dir.
func mountsUnder(dir string) []string {
	ms, _ := readMounts()
	var out []string
	for _, m := range ms {
		if strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	return out
}

// waitSize waits until path is stat-able with the given size: a FUSE
// server answers only once its mount is ready, and a file mount point
// (QEMU's export) shows the disk's size only once mounted over.
func waitSize(path string, size int64, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := os.Stat(path)
		if err == nil && st.Size() == size {
			return nil
		}
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("size %d, want %d", st.Size(), size)
			}
			return fmt.Errorf("%s not ready after %v: %w", path, timeout, err)
		}
		time.Sleep(time.Millisecond)
	}
}
