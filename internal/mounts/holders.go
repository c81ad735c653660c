// Which processes hold a file open, from /proc/PID/fd: by identity (the
// CLI's lock messages) or by path (the tests' leak checks).

package mounts

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Holders lists "pid N (comm)" for the processes other than this one that
// have the file at target open. Only descriptors on the target's own file
// system are stat()ed (fdinfo's mnt_id says where each one lives): a stat
// of a file on a FUSE mount whose daemon is stopped or hung would never
// return.
func Holders(target string) []string {
	tst, err := os.Stat(target)
	if err != nil {
		return nil
	}
	dev := tst.Sys().(*syscall.Stat_t).Dev
	onDev := map[string]bool{} // mount ids of mounts of the target's file system
	entries, _ := Read()
	for _, e := range entries {
		if e.Dev == dev {
			onDev[strconv.Itoa(e.ID)] = true
		}
	}
	var out []string
	eachFD(func(pid, fd, fdPath string) bool {
		if !onDev[fdMountID(pid, fd)] {
			return false
		}
		st, err := os.Stat(fdPath)
		if err == nil && os.SameFile(st, tst) {
			out = append(out, fmt.Sprintf("pid %s (%s)", pid, comm(pid)))
			return true
		}
		return false
	})
	return out
}

// OpenUnder lists the processes (other than this one) that have open any
// of paths, or any file under them when they are directories, as "pid N
// (comm) has PATH open". It only reads links, so it never blocks on a
// hung mount.
func OpenUnder(paths ...string) []string {
	var want []string
	for _, p := range paths {
		if abs, err := filepath.Abs(p); err == nil {
			want = append(want, abs)
		}
	}
	if len(want) == 0 {
		return nil
	}
	var out []string
	eachFD(func(pid, fd, fdPath string) bool {
		target, err := os.Readlink(fdPath)
		if err != nil {
			return false
		}
		for _, w := range want {
			if target == w || strings.HasPrefix(target, strings.TrimSuffix(w, "/")+"/") {
				out = append(out, fmt.Sprintf("pid %s (%s) has %s open", pid, comm(pid), target))
				return false
			}
		}
		return false
	})
	return out
}

// eachFD calls fn for every descriptor of every process but this one, as
// (pid, fd number, /proc/PID/fd/FD); fn returns true to skip the rest of
// that process's descriptors.
func eachFD(fn func(pid, fd, fdPath string) (donePID bool)) {
	procs, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	for _, pe := range procs {
		pid := pe.Name()
		if _, err := strconv.Atoi(pid); err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join("/proc", pid, "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if fn(pid, fd.Name(), filepath.Join(fdDir, fd.Name())) {
				break
			}
		}
	}
}

func comm(pid string) string {
	b, _ := os.ReadFile(filepath.Join("/proc", pid, "comm"))
	return strings.TrimSpace(string(b))
}

// fdMountID returns the mnt_id line of /proc/PID/fdinfo/FD ("" if unknown).
func fdMountID(pid, fd string) string {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "fdinfo", fd))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
