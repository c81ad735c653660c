// Sweeping what a run left under its directory: loop device mounts, loop
// devices, mounts and daemons.

package integration

import (
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"golang.org/x/sys/unix"
)

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
			entries, _ := mounts.Read()
			for i := len(entries) - 1; i >= 0; i-- {
				if entries[i].Source == dev {
					quietRun("umount", "-l", entries[i].Point)
				}
			}
			quietRun("losetup", "-d", dev)
		}
	}

	// Mounts under dir, deepest first.
	entries, _ := mounts.Read()
	var points []mounts.Entry
	for _, m := range entries {
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
