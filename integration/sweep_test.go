package integration

import (
	"bufio"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mountEntry is one line of /proc/self/mountinfo, reduced to what the tests use.
type mountEntry struct {
	Point  string // mount point, unescaped
	FSType string // e.g. "fuse.qcow2fs", "ext4"
	Source string // e.g. the image path, "/dev/loop3"
}

// readMounts parses /proc/self/mountinfo.
func readMounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent maj:min root point opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{
			Point:  unescapeMount(fields[4]),
			FSType: fields[sep+1],
			Source: unescapeMount(fields[sep+2]),
		})
	}
	return out, sc.Err()
}

// unescapeMount undoes the kernel's octal escapes (\040 for space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
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

// findMount returns the mount at point, if any.
func findMount(point string) (mountEntry, bool) {
	mounts, err := readMounts()
	if err != nil {
		return mountEntry{}, false
	}
	// The last entry wins: mounts stack.
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].Point == point {
			return mounts[i], true
		}
	}
	return mountEntry{}, false
}

func underDir(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// quietRun runs a cleanup command with a deadline, ignoring its outcome.
func quietRun(name string, args ...string) {
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		return
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
	}
}

// sweepRoot undoes everything a run left under dir: mounts of loop devices
// backed by files there, the loop devices, mounts there, and daemons whose
// command line names dir.
func sweepRoot(dir string) {
	// Loop devices backed by our files, and whatever is mounted from them.
	if out, err := exec.Command("losetup", "-l", "-n", "-O", "NAME,BACK-FILE").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || !underDir(strings.Join(f[1:], " "), dir) {
				continue
			}
			dev := f[0]
			mounts, _ := readMounts()
			for i := len(mounts) - 1; i >= 0; i-- {
				if mounts[i].Source == dev {
					quietRun("umount", "-l", mounts[i].Point)
				}
			}
			quietRun("losetup", "-d", dev)
		}
	}

	// Mounts under dir, deepest first.
	mounts, _ := readMounts()
	var points []mountEntry
	for _, m := range mounts {
		if underDir(m.Point, dir) {
			points = append(points, m)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i].Point) > len(points[j].Point) })
	for _, m := range points {
		if strings.HasPrefix(m.FSType, "fuse") {
			quietRun("fusermount3", "-u", "-z", m.Point)
		} else {
			quietRun("umount", "-l", m.Point)
		}
	}

	// Daemons still running for this run.
	for _, pid := range pidsWithCmdline(dir) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// pidsWithCmdline lists processes (other than this one) whose command line
// contains s.
func pidsWithCmdline(s string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
