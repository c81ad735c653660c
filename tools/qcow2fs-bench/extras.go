// The rss, mounttime and compressed sections: peak resident memory over a
// 1 TiB image, mount time of a 4 TiB preallocated image, and reads of
// compressed images against qemu-img convert.

package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runRSS measures the server's peak resident memory (VmHWM) while fio
// does 4 KiB random reads and writes all over a 1 TiB image, which would
// touch far more L2 tables than any sane cache holds.
func (b *bench) runRSS() error {
	r := b.addRow("rss", "peak RSS of the server, 4 KiB random I/O over a 1 TiB image", uMiB)
	logf("== peak RSS under random I/O over a 1 TiB image")
	job := fioJob{name: "rss", rw: "randrw", bs: "4k", size: "1t", numjobs: 2, timed: true,
		extra: []string{"--rwmixread=70", "--norandommap"}}
	for _, t := range []target{tQcow2fs, tQEMU} {
		dir := filepath.Join(b.work, "rss", t.String())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		img := filepath.Join(dir, imageName(t))
		if err := b.makeImage(t, img, 1<<40, ""); err != nil {
			return err
		}
		d, err := b.expose(t, img, 1<<40, false)
		if err != nil {
			return err
		}
		if d.pid == 0 {
			b.fail(r, t, fmt.Errorf("cannot find the daemon's pid (no run-state file in /run/qcow2fs names %s)", d.mount), false)
		} else if _, err := b.fio(job, d.file); err != nil {
			b.fail(r, t, err, false)
		} else if hwm, err := vmHWM(d.pid); err != nil {
			b.fail(r, t, err, false)
		} else {
			b.setCell(r, t, float64(hwm)/(1<<20))
			logf("   %-11s %s", t, formatValue(float64(hwm)/(1<<20), uMiB))
		}
		if interrupted.Load() {
			return errInterrupted
		}
		if err := b.stop(d); err != nil {
			return err
		}
		b.removeDir(dir)
	}
	return nil
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmHWM: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmHWM", pid)
}

// mountTimeReps is how many times each mount is timed; the median counts.
const mountTimeReps = 7

// runMountTime times mounting a 4 TiB image made with
// preallocation=metadata (half a GiB of L2 tables): from starting the
// server until the raw file answers stat with its size.
func (b *bench) runMountTime() error {
	r := b.addRow("mounttime", "mount time, 4 TiB image with preallocation=metadata", uMs)
	// qemu-storage-daemon is one process serving in the foreground;
	// qcow2fs mount also starts its daemon and waits for its verdict,
	// two Go processes. The second row compares like with like.
	rfg := b.addRow("mounttime-fg", "mount time, same image, server in the foreground (qcow2fs mount -f)", uMs)
	logf("== mount time of a 4 TiB image with preallocation=metadata")
	const size = 4 << 40
	// The image holds about 640 MiB of tables; keep a margin.
	if free := freeBytes(b.work); free < 2<<30 {
		why := fmt.Sprintf("only %d MiB free in %s (needs 2 GiB)", free>>20, b.work)
		logf("   skipped: %s", why)
		for _, row := range []*row{r, rfg} {
			b.skip(row, tQcow2fs, why)
			b.skip(row, tQEMU, why)
		}
		return nil
	}
	dir := filepath.Join(b.work, "mounttime")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer b.removeDir(dir)
	img := filepath.Join(dir, "big.qcow2")
	logf("   creating %s with qemu-img (about 20 s)", img)
	if err := b.makeImage(tQcow2fs, img, size, "preallocation=metadata"); err != nil {
		return err
	}
	// qemu-img leaves the tables as dirty page cache; written back during
	// the first target's runs, they would slow that target alone.
	if err := syncFile(img); err != nil {
		return err
	}
	// The targets take turns, so that whatever else the machine does
	// meanwhile falls on both alike.
	targets := []target{tQcow2fs, tQEMU}
	times := map[target][]time.Duration{}
	var fg []time.Duration
	for range mountTimeReps {
		for _, t := range targets {
			d, err := b.expose(t, img, size, false)
			if err != nil {
				return err
			}
			times[t] = append(times[t], d.ready)
			if err := d.stop(); err != nil {
				return fmt.Errorf("stop %s: %w", t, err)
			}
		}
		d, err := b.mountForeground(img, size)
		if err != nil {
			return err
		}
		fg = append(fg, d)
	}
	median := func(times []time.Duration) float64 {
		slices.Sort(times)
		return float64(times[len(times)/2].Microseconds()) / 1000
	}
	for _, t := range targets {
		ms := median(times[t])
		b.setCell(r, t, ms)
		b.setCell(rfg, t, ms)
		logf("   %-11s %s (runs: %v)", t, formatValue(ms, uMs), times[t])
	}
	ms := median(fg)
	b.setCell(rfg, tQcow2fs, ms)
	logf("   %-11s %s (runs: %v)", "qcow2fs -f", formatValue(ms, uMs), fg)
	return nil
}

// mountForeground times qcow2fs mount -f (the server itself, as
// qemu-storage-daemon is) from its start until the raw file shows its
// size, then stops it with SIGTERM, which unmounts.
func (b *bench) mountForeground(img string, size int64) (time.Duration, error) {
	dir := filepath.Dir(img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return 0, err
	}
	args := append([]string{"mount", "-f"}, b.cfg.qcow2fsOpts...)
	if b.cfg.uring {
		args = append(args, "-o", "uring=off")
	}
	args = append(args, img, mnt)
	start := time.Now()
	p, err := startBackground(filepath.Join(dir, "qcow2fs-foreground.log"), b.cfg.qcow2fsBin, args...)
	if err != nil {
		return 0, err
	}
	stop := b.clean.push("stop qcow2fs -f "+mnt, func() error { return stopServer(b, p, mnt) })
	alive := func() error {
		if p.exited() {
			return fmt.Errorf("qcow2fs mount -f exited: %v: %s", p.err, p.log())
		}
		return nil
	}
	file := filepath.Join(mnt, strings.TrimSuffix(filepath.Base(img), ".qcow2")+".raw")
	if err := waitSize(file, size, 30*time.Second, alive); err != nil {
		stop()
		return 0, err
	}
	d := time.Since(start)
	return d, stop()
}

// syncFile writes a file's dirty pages back to its disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func freeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}

// runCompressed reads a zstd- and a deflate-compressed image through
// qcow2fs (fio, sequential 1 MiB) and compares with the time qemu-img
// convert -O raw takes for the same image. The data is fio's compressible
// buffers (60% compressible), so every cluster is stored compressed.
func (b *bench) runCompressed() error {
	type kind struct{ id, name, qemuType string }
	kinds := []kind{{"zstd", "zstd", "zstd"}, {"deflate", "deflate", "zlib"}}
	rows := map[string]*row{}
	for _, k := range kinds {
		rows[k.id] = b.addRow("compressed-"+k.id,
			fmt.Sprintf("sequential read 1 MiB, %s-compressed image (QEMU column: qemu-img convert -O raw)", k.name), uMiBps)
	}
	logf("== sequential read of compressed images (%d MiB of data)", b.cfg.compressedSize>>20)
	dir := filepath.Join(b.work, "compressed")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer b.removeDir(dir)
	src := filepath.Join(dir, "source.raw")
	gen := fioJob{name: "compressible-data", rw: "write", bs: "1m", size: fmt.Sprint(b.cfg.compressedSize), create: true,
		extra: []string{"--buffer_compress_percentage=60", "--refill_buffers"}}
	if _, err := b.fio(gen, src); err != nil {
		return fmt.Errorf("making compressible data: %w", err)
	}
	for _, k := range kinds {
		r := rows[k.id]
		kdir := filepath.Join(dir, k.id)
		if err := os.MkdirAll(kdir, 0o755); err != nil {
			return err
		}
		img := filepath.Join(kdir, "disk.qcow2")
		logf("-- %s: compressing with qemu-img convert -c", k.name)
		if _, err := b.run("qemu-img", "convert", "-c", "-O", "qcow2",
			"-o", "compression_type="+k.qemuType+",cluster_size=65536", src, img); err != nil {
			return err
		}
		d, err := b.expose(tQcow2fs, img, b.cfg.compressedSize, true)
		if err != nil {
			return err
		}
		read := fioJob{name: "compressed-" + k.id, rw: "read", bs: "1m", size: fmt.Sprint(b.cfg.compressedSize)}
		res, err := b.fio(read, d.file)
		b.recordFio(r, tQcow2fs, 1, res, err, false)
		if interrupted.Load() {
			return errInterrupted
		}
		if err := b.stop(d); err != nil {
			return err
		}
		out := filepath.Join(kdir, "converted.raw")
		start := time.Now()
		_, err = b.run("qemu-img", "convert", "-O", "raw", img, out)
		elapsed := time.Since(start)
		os.Remove(out)
		if err != nil {
			b.fail(r, tQEMU, err, false)
			continue
		}
		mibps := float64(b.cfg.compressedSize) / (1 << 20) / elapsed.Seconds()
		b.setCell(r, tQEMU, mibps)
		logf("   %-11s %s (qemu-img convert -O raw: %.2f s)", "QEMU", formatValue(mibps, uMiBps), elapsed.Seconds())
	}
	return nil
}
