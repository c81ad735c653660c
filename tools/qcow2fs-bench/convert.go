// The convert section: qcow2fs convert timed against qemu-img convert on
// the same sources, compressed and not.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// convertReps is how many times each conversion is timed; the best counts.
// The tools take turns (qemu-img, qcow2fs, qcow2fs, qemu-img, ...), so
// that a busy spell of the machine lands on both.
const convertReps = 5

// runConvert times qcow2fs convert against qemu-img convert on the same
// sources, one after the other: a 1 GiB image half full of fio's
// 60%-compressible data (every other MiB), converted compressed (-c, all
// CPUs) and uncompressed (to qcow2 and to raw), and a 1 TiB image holding
// 100 MiB of data (the time must follow the data, not the size). Each
// run's time includes a sync after it: qemu-img convert does not sync its
// target, qcow2fs convert does (fdatasync), and both must have the data on
// disk for the times to compare.
func (b *bench) runConvert() error {
	logf("== convert: qcow2fs convert vs qemu-img convert")
	dir := filepath.Join(b.work, "convert")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer b.removeDir(dir)
	threads := fmt.Sprint(runtime.NumCPU())
	half := filepath.Join(dir, "half.qcow2")
	raw := filepath.Join(dir, "half.raw")
	gen := fioJob{name: "half-full", rw: "write", bs: "1m", size: "1g", create: true,
		// --rw again: fio takes the last one; "write:1m" skips a MiB after each.
		extra: []string{"--rw=write:1m", "--buffer_compress_percentage=60", "--refill_buffers"}}
	if _, err := b.fio(gen, raw); err != nil {
		return fmt.Errorf("making the half-full image: %w", err)
	}
	if _, err := b.run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, half); err != nil {
		return err
	}
	os.Remove(raw)
	big := filepath.Join(dir, "big.qcow2")
	if _, err := b.run("qemu-img", "create", "-q", "-f", "qcow2", big, "1T"); err != nil {
		return err
	}
	if _, err := b.run("qemu-io", "-c", "write -P 0x5a 0 40M", "-c", "write -P 0x6b 300G 30M", "-c", "write -P 0x7c 1023G 30M", big); err != nil {
		return err
	}
	type conv struct {
		id, title, src string
		ours, qemu     []string
		raw            bool // the target is a raw file (no qemu-img check)
	}
	convs := []conv{
		{"convert-c", "qcow2 → compressed qcow2 (zlib, -c), 1 GiB image half full, all CPUs", half,
			[]string{"convert", "-c", "-m", threads}, []string{"convert", "-c", "-m", "16", "-O", "qcow2"}, false},
		{"convert", "qcow2 → qcow2, 1 GiB image half full", half,
			[]string{"convert", "-m", threads}, []string{"convert", "-m", "16", "-O", "qcow2"}, false},
		{"convert-raw", "qcow2 → raw, 1 GiB image half full", half,
			[]string{"convert", "-m", threads, "-O", "raw"}, []string{"convert", "-m", "16", "-O", "raw"}, true},
		{"convert-1t", "qcow2 → qcow2, 1 TiB image with 100 MiB of data", big,
			[]string{"convert", "-m", threads}, []string{"convert", "-m", "16", "-O", "qcow2"}, false},
	}
	for _, c := range convs {
		r := b.addRow(c.id, c.title, uMs)
		out := filepath.Join(dir, "out.img")
		var best [numTargets]time.Duration
		var failed [numTargets]bool
		order := []target{tQEMU, tQcow2fs}
		for rep := range convertReps {
			for _, t := range order {
				if failed[t] {
					continue
				}
				d, err := b.timeConvert(t, c.ours, c.qemu, c.src, out)
				if err == nil && rep == 0 {
					// The first output of each tool is checked (untimed).
					_, err = b.run("qemu-img", "compare", c.src, out)
					if err == nil && !c.raw {
						_, err = b.run("qemu-img", "check", out)
					}
				}
				if err != nil {
					failed[t] = true
					b.fail(r, t, err, false)
					continue
				}
				if best[t] == 0 || d < best[t] {
					best[t] = d
				}
				if interrupted.Load() {
					return errInterrupted
				}
			}
			order[0], order[1] = order[1], order[0]
		}
		os.Remove(out)
		for _, t := range []target{tQEMU, tQcow2fs} {
			if failed[t] {
				continue
			}
			ms := float64(best[t].Microseconds()) / 1000
			b.setCell(r, t, ms)
			logf("   %-11s %-60s %s", t, c.id, formatValue(ms, uMs))
		}
	}
	return nil
}

// timeConvert runs one conversion by t (qemu-img or qcow2fs) of src into
// a new out and times it up to the end of a sync that follows it.
func (b *bench) timeConvert(t target, ours, qemu []string, src, out string) (time.Duration, error) {
	name, args := "qemu-img", qemu
	if t == tQcow2fs {
		name, args = b.cfg.qcow2fsBin, ours
	}
	os.Remove(out)
	b.run("sync")
	start := time.Now()
	if _, err := b.run(name, append(append([]string{}, args...), src, out)...); err != nil {
		return 0, err
	}
	b.run("sync")
	return time.Since(start), nil
}
