// The bench's deep-queue section: the four QD32 rows (libaio, 4 KiB random
// reads and writes, on the file and through losetup --direct-io=on).

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Deep-queue scenarios: fio with libaio at queue depth 32, O_DIRECT, 4 KiB
// random I/O over the 1 GiB working set of a filled disk, on the exposed
// file and on a loop device attached to it with --direct-io=on (the loop
// driver then keeps up to its queue depth of requests in flight on the
// FUSE file). Here the FUSE transport, not the image format, is what the
// targets differ in.
const qd32Depth = 32

func qd32Job(name, rw string) fioJob {
	return fioJob{name: name, rw: rw, bs: "4k", size: workingSet, timed: true, engine: "libaio", iodepth: qd32Depth}
}

var qd32FileScenarios = []scenario{
	{"qd32-file-randread", "QD32 random read 4 KiB on the file", uIOPS, qd32Job("qd32-file-randread", "randread")},
	{"qd32-file-randwrite", "QD32 random write 4 KiB on the file", uIOPS, qd32Job("qd32-file-randwrite", "randwrite")},
}

var qd32LoopScenarios = []scenario{
	{"qd32-loop-randread", "QD32 random read 4 KiB via losetup --direct-io=on", uIOPS, qd32Job("qd32-loop-randread", "randread")},
	{"qd32-loop-randwrite", "QD32 random write 4 KiB via losetup --direct-io=on", uIOPS, qd32Job("qd32-loop-randwrite", "randwrite")},
}

func (b *bench) runQD32() error {
	rows := map[string]*row{}
	for _, sc := range append(append([]scenario{}, qd32FileScenarios...), qd32LoopScenarios...) {
		rows[sc.id] = b.addRow(sc.id, sc.title, sc.unit)
	}
	order := b.targets()
	logf("== QD32 scenarios (libaio, iodepth %d) on fresh %d GiB disks, filled over %s (order %v)", qd32Depth, diskSize>>30, workingSet, order)
	dir := filepath.Join(b.work, "qd32")
	disks, err := b.freshDisks(dir, order)
	if err != nil {
		return err
	}
	defer b.removeDir(dir)
	defer b.stopAll(disks)
	fill := filledScenarios[0].job
	fill.name = "qd32-fill"
	for _, d := range disks {
		if _, err := b.fio(fill, d.file); err != nil {
			return fmt.Errorf("filling %s's disk: %w", d.target, err)
		}
		syscall.Sync()
	}
	for _, sc := range qd32FileScenarios {
		logf("-- %s", sc.title)
		for _, d := range disks {
			res, err := b.fio(sc.job, d.file)
			b.recordFio(rows[sc.id], d.target, 1, res, err, false)
			if interrupted.Load() {
				return errInterrupted
			}
			syscall.Sync()
		}
	}
	devs := make([]string, len(disks))
	for i, d := range disks {
		out, err := b.run("losetup", "--direct-io=on", "--find", "--show", d.file)
		if err != nil {
			for _, sc := range qd32LoopScenarios {
				b.fail(rows[sc.id], d.target, fmt.Errorf("losetup: %w", err), false)
			}
			continue
		}
		dev := strings.TrimSpace(out)
		devs[i] = dev
		detach := b.clean.push("detach "+dev, func() error {
			_, err := b.runAlways("losetup", "--detach", dev)
			return err
		})
		defer detach()
		if dio, _ := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/dio"); strings.TrimSpace(string(dio)) != "1" {
			logf("   warning: %s does not use direct I/O (loop/dio=%q)", dev, strings.TrimSpace(string(dio)))
		}
	}
	for _, sc := range qd32LoopScenarios {
		logf("-- %s", sc.title)
		for i, d := range disks {
			if devs[i] == "" {
				continue
			}
			res, err := b.fio(sc.job, devs[i])
			b.recordFio(rows[sc.id], d.target, 1, res, err, false)
			if interrupted.Load() {
				return errInterrupted
			}
			syscall.Sync()
		}
	}
	return nil
}

// uringAvailable tells whether the qcow2fs target can also run over FUSE
// io_uring: the kernel has it switched on and the binary knows the option.
func uringAvailable(bin string) bool {
	p, err := os.ReadFile("/sys/module/fuse/parameters/enable_uring")
	if err != nil || strings.TrimSpace(string(p)) != "Y" {
		return false
	}
	out, _ := exec.Command(bin, "mount", "--help").CombinedOutput()
	return strings.Contains(string(out), "uring=")
}
