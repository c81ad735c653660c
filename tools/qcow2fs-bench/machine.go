// The description of the machine the figures come from (CPU, memory,
// kernel, host file system, tool versions, mount options) for the report.

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"golang.org/x/sys/unix"
)

// machine describes where the figures come from.
type machine struct {
	cpu      string
	cpus     int
	memory   string
	kernel   string
	hostFS   string // file system holding the images
	fio      string
	qemu     string
	qsd      string
	goVer    string
	qcow2fs  string
	revision string
}

func (b *bench) describeMachine() machine {
	m := machine{cpus: runtime.NumCPU(), goVer: runtime.Version()}
	m.cpu = procField("/proc/cpuinfo", "model name")
	if m.cpu == "" {
		m.cpu = "unknown CPU"
	}
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		var n int64
		fmt.Sscanf(kb, "%d", &n)
		m.memory = fmt.Sprintf("%.1f GiB", float64(n)/(1<<20))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	m.hostFS = hostFS(b.work)
	m.fio = firstLine("fio", "--version")
	m.qemu = firstLine("qemu-img", "--version")
	m.qsd = firstLine("qemu-storage-daemon", "--version")
	if v := firstLine("go", "version"); v != "" {
		m.goVer = v // the toolchain that built the binaries, as make uses it
	}
	m.qcow2fs = firstLine(b.cfg.qcow2fsBin, "--version")
	if rev := firstLine("git", "-C", b.cfg.repo, "rev-parse", "--short", "HEAD"); rev != "" {
		m.revision = rev
		if st, err := exec.Command("git", "-C", b.cfg.repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			m.revision += " with uncommitted changes"
		}
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// hostFS names the file system type and device holding dir.
func hostFS(dir string) string {
	ms, err := mounts.Read()
	if err != nil {
		return ""
	}
	best := mounts.Entry{}
	for _, m := range ms {
		if (dir == m.Point || strings.HasPrefix(dir, strings.TrimSuffix(m.Point, "/")+"/")) && len(m.Point) >= len(best.Point) {
			best = m
		}
	}
	if best.Point == "" {
		return ""
	}
	return fmt.Sprintf("%s (%s on %s)", best.FSType, best.Source, best.Point)
}

// noteMount remembers the mount options of the first mount of each
// target (max_read and friends matter for the figures).
func (b *bench) noteMount(t target, point string) {
	if b.mountNotes[t] != "" {
		return
	}
	if m, ok := mounts.Find(point); ok {
		b.mountNotes[t] = fmt.Sprintf("%s: %s,%s", m.FSType, m.Options, m.SuperOptions)
	}
}
