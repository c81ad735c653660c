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
const convertReps = 2

// runConvert times qcow2fs convert against qemu-img convert on the same
// sources, one after the other: a 1 GiB image half full of fio's
// 60%-compressible data (every other MiB), converted compressed (-c, all
// CPUs) and uncompressed, and a 1 TiB image holding 100 MiB of data (the
// time must follow the data, not the size).
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
	}
	convs := []conv{
		{"convert-c", "qcow2 → compressed qcow2 (zlib, -c), 1 GiB image half full, all CPUs", half,
			[]string{"convert", "-c", "-m", threads}, []string{"convert", "-c", "-m", "16", "-O", "qcow2"}},
		{"convert", "qcow2 → qcow2, 1 GiB image half full", half,
			[]string{"convert", "-m", threads}, []string{"convert", "-m", "16", "-O", "qcow2"}},
		{"convert-1t", "qcow2 → qcow2, 1 TiB image with 100 MiB of data", big,
			[]string{"convert", "-m", threads}, []string{"convert", "-m", "16", "-O", "qcow2"}},
	}
	for _, c := range convs {
		r := b.addRow(c.id, c.title, uMs)
		out := filepath.Join(dir, "out.qcow2")
		for _, t := range []target{tQEMU, tQcow2fs} {
			name, args := "qemu-img", c.qemu
			if t == tQcow2fs {
				name, args = b.cfg.qcow2fsBin, c.ours
			}
			best := time.Duration(0)
			var err error
			for range convertReps {
				os.Remove(out)
				b.run("sync")
				start := time.Now()
				if _, err = b.run(name, append(append([]string{}, args...), c.src, out)...); err != nil {
					break
				}
				b.run("sync")
				if d := time.Since(start); best == 0 || d < best {
					best = d
				}
			}
			if err == nil {
				_, err = b.run("qemu-img", "compare", c.src, out)
			}
			if err == nil {
				_, err = b.run("qemu-img", "check", out)
			}
			if err != nil {
				b.fail(r, t, err, false)
				continue
			}
			ms := float64(best.Microseconds()) / 1000
			b.setCell(r, t, ms)
			logf("   %-11s %-60s %s", t, c.id, formatValue(ms, uMs))
		}
		os.Remove(out)
		if interrupted.Load() {
			return errInterrupted
		}
	}
	return nil
}
