// The ext4 section: fio on a file in ext4 on a loop device (direct I/O) over
// each exposed disk.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// The ext4 stack: the exposed file attached to a loop device with direct
// I/O (so the loop driver sends O_DIRECT requests straight to the FUSE
// file), ext4 on it, fio on a 1 GiB file inside.
var ext4Scenarios = []scenario{
	{"ext4-randread", "ext4 on losetup --direct-io: random read 4 KiB", uIOPS,
		fioJob{name: "ext4-randread", rw: "randread", bs: "4k", size: workingSet, timed: true}},
	{"ext4-randwrite", "ext4 on losetup --direct-io: random write 4 KiB", uIOPS,
		fioJob{name: "ext4-randwrite", rw: "randwrite", bs: "4k", size: workingSet, timed: true}},
}

// The same through a loop device without direct I/O: the loop driver then
// reads and writes the exposed file through its page cache (buffered
// FUSE I/O), the way a plain losetup does.
var ext4BufferedScenarios = []scenario{
	{"ext4b-randread", "ext4 on losetup --direct-io=off: random read 4 KiB", uIOPS,
		fioJob{name: "ext4b-randread", rw: "randread", bs: "4k", size: workingSet, timed: true}},
	{"ext4b-randwrite", "ext4 on losetup --direct-io=off: random write 4 KiB", uIOPS,
		fioJob{name: "ext4b-randwrite", rw: "randwrite", bs: "4k", size: workingSet, timed: true}},
}

func (b *bench) runExt4() error {
	for _, dio := range []bool{true, false} {
		scs := ext4Scenarios
		if !dio {
			scs = ext4BufferedScenarios
		}
		var rows []*row
		for _, sc := range scs {
			rows = append(rows, b.addRow(sc.id, sc.title, sc.unit))
		}
		logf("== ext4 on a loop device (direct I/O %v) over the exposed file", dio)
		for _, t := range b.targets() {
			logf("-- %s", t)
			// QEMU 7.2's export is known to corrupt ext4 under a direct-I/O
			// loop device: a failure there is reported, not fatal.
			if err := b.ext4OnFresh(t, filepath.Join(b.work, "ext4"), scs, rows, dio, t == tQEMU); err != nil {
				return err
			}
		}
		if !dio {
			if err := b.ext4BufferedExtras(rows); err != nil {
				return err
			}
		}
	}
	return nil
}

// ext4BufferedExtras adds to the buffered rows what they are measured
// against: the same stack over a plain raw file on the host file system
// (no FUSE: the limit), and qcow2fs mounted with -o writeback_cache, in
// rows of their own.
func (b *bench) ext4BufferedExtras(rows []*row) error {
	dir := filepath.Join(b.work, "ext4")
	logf("-- %s (the limit: no FUSE)", tRawFile)
	rawDir := filepath.Join(dir, "raw")
	if err := os.MkdirAll(rawDir, 0o755); err != nil {
		return err
	}
	raw := filepath.Join(rawDir, "disk.raw")
	if err := b.makeImage(tRawFile, raw, diskSize, ""); err != nil {
		return err
	}
	b.ext4On(tRawFile, &exposed{target: tRawFile, file: raw, dir: rawDir}, ext4BufferedScenarios, rows, false, false)
	b.removeDir(rawDir)
	if interrupted.Load() {
		return errInterrupted
	}

	var wb []*row
	for _, sc := range ext4BufferedScenarios {
		r := b.addRow(sc.id+"-wb", sc.title+", qcow2fs -o writeback_cache", sc.unit)
		r.cells[tRawFile] = rows[len(wb)].cells[tRawFile]
		wb = append(wb, r)
	}
	for _, t := range b.targets() {
		if t != tQcow2fs && t != tQcow2fsUring {
			continue
		}
		logf("-- %s -o writeback_cache", t)
		if err := b.ext4OnFresh(t, dir, ext4BufferedScenarios, wb, false, false, "-o", "writeback_cache"); err != nil {
			return err
		}
	}
	return nil
}

// ext4OnFresh runs the scenarios through ext4 on a fresh disk of t in dir
// (qcow2fsOpts added to a qcow2fs mount), then stops and removes it.
func (b *bench) ext4OnFresh(t target, dir string, scs []scenario, rows []*row, dio, expected bool, qcow2fsOpts ...string) error {
	d, err := b.freshDisk(t, dir, diskSize, qcow2fsOpts...)
	if err != nil {
		return err
	}
	b.ext4On(t, d, scs, rows, dio, expected)
	if interrupted.Load() {
		return errInterrupted
	}
	if err := b.stop(d); err != nil {
		return err
	}
	b.removeDir(d.dir)
	return nil
}

// ext4On runs the ext4 scenarios on one exposed disk; what fails is
// recorded in the rows.
func (b *bench) ext4On(t target, d *exposed, scs []scenario, rows []*row, dio, expected bool) {
	mode := "--direct-io=on"
	if !dio {
		mode = "--direct-io=off"
	}
	failAll := func(err error) {
		for _, r := range rows {
			if r.cells[t].ok || r.cells[t].status == "failed" {
				continue
			}
			b.fail(r, t, err, expected)
		}
	}
	out, err := b.run("losetup", mode, "--find", "--show", d.file)
	if err != nil {
		failAll(fmt.Errorf("losetup: %w", err))
		return
	}
	dev := strings.TrimSpace(out)
	detach := b.clean.push("detach "+dev, func() error {
		_, err := b.runAlways("losetup", "--detach", dev)
		return err
	})
	defer func() {
		if err := detach(); err != nil && !interrupted.Load() {
			b.failures = append(b.failures, failure{
				where: fmt.Sprintf("ext4 on losetup %s, %s", mode, t), err: err.Error(), expected: expected})
			logf("   FAILED: %v", err)
		}
	}()
	if got, _ := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/dio"); (strings.TrimSpace(string(got)) == "1") != dio {
		logf("   warning: %s has loop/dio=%q, asked for %s", dev, strings.TrimSpace(string(got)), mode)
	}
	// Initialise inode tables and journal now rather than in the kernel's
	// background thread, which would write during the measurement.
	if _, err := b.run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
		failAll(fmt.Errorf("mkfs.ext4: %w", err))
		return
	}
	fsdir := filepath.Join(d.dir, "ext4")
	if err := os.MkdirAll(fsdir, 0o755); err != nil {
		failAll(err)
		return
	}
	if _, err := b.run("mount", "-t", "ext4", dev, fsdir); err != nil {
		failAll(fmt.Errorf("mount ext4: %w", err))
		return
	}
	umount := b.clean.push("unmount "+fsdir, func() error {
		_, err := b.runAlways("umount", fsdir)
		return err
	})
	file := filepath.Join(fsdir, "fio.dat")
	fill := fioJob{name: "ext4-fill", rw: "write", bs: "1m", size: workingSet, create: true, extra: []string{"--end_fsync=1"}}
	if _, err := b.fio(fill, file); err != nil {
		umount()
		failAll(fmt.Errorf("filling a file in ext4: %w", err))
		return
	}
	syscall.Sync()
	for i, sc := range scs {
		res, err := b.fio(sc.job, file)
		b.recordFio(rows[i], t, 1, res, err, expected)
		if interrupted.Load() {
			return
		}
		syscall.Sync()
	}
	if err := umount(); err != nil {
		failAll(fmt.Errorf("unmount ext4: %w", err))
		return
	}
	// A read-only check tells whether the stack kept the file system intact.
	if out, err := b.run("fsck.ext4", "-f", "-n", dev); err != nil && !interrupted.Load() {
		b.failures = append(b.failures, failure{
			where:    fmt.Sprintf("ext4 on losetup %s, %s", mode, t),
			err:      fmt.Sprintf("fsck.ext4 -fn after the runs: %v %s", err, tail(out, 500)),
			expected: expected,
		})
		logf("   FAILED: fsck.ext4 found errors on %s's ext4", t)
		for _, r := range rows {
			if r.cells[t].ok {
				r.cells[t].note = "ext4 corrupt"
			}
		}
	}
}
