// The main section: fio scenarios on a fresh 4 GiB disk per target, in
// rounds with the targets' order reversed every other round.

package main

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// Disk geometry of the main scenarios: a fresh 4 GiB image with 64 KiB
// clusters, of which the first 1 GiB is the working set.
const (
	diskSize    = 4 << 30
	workingSet  = "1g"
	clusterSize = 64 << 10
)

// scenario is one fio job of the main table.
type scenario struct {
	id    string
	title string
	unit  unit
	job   fioJob
}

// filledScenarios run in this order on one fresh disk per target: the
// allocating sequential write fills the working set that the others then
// read and overwrite, so it always writes all of it (the cap only stops a
// target that has stalled).
var filledScenarios = []scenario{
	{"seqwrite", "sequential write 1 MiB, allocating", uMiBps,
		fioJob{name: "seqwrite", rw: "write", bs: "1m", size: workingSet, capSeconds: 300}},
	{"seqread", "sequential read 1 MiB", uMiBps,
		fioJob{name: "seqread", rw: "read", bs: "1m", size: workingSet, timed: true}},
	{"randread1", "random read 4 KiB, 1 job", uIOPS,
		fioJob{name: "randread1", rw: "randread", bs: "4k", size: workingSet, timed: true}},
	{"randread2", "random read 4 KiB, 2 jobs", uIOPS,
		fioJob{name: "randread2", rw: "randread", bs: "4k", size: workingSet, numjobs: 2, timed: true}},
	{"overwrite", "random overwrite 4 KiB", uIOPS,
		fioJob{name: "overwrite", rw: "randwrite", bs: "4k", size: workingSet, timed: true}},
	{"randwrite64k", "random write 64 KiB, 2 jobs (overwrite)", uMiBps,
		fioJob{name: "randwrite64k", rw: "randwrite", bs: "64k", size: workingSet, numjobs: 2, timed: true}},
}

// allocScenario writes 4 KiB at a random offset inside every cluster of a
// fresh disk, the clusters in random order: each write allocates. fio's
// own random offsets cannot promise that (its block-aligned mode drops
// the map of used blocks), so it replays a precomputed sequence.
var allocScenario = scenario{"alloc4k", "random allocating write 4 KiB", uIOPS,
	fioJob{name: "alloc4k", rw: "randwrite", bs: "4k", size: "4g", capSeconds: -1}}

// The order of the table's first rows.
var mainRowOrder = []string{"seqwrite", "seqread", "randread1", "randread2", "overwrite", "alloc4k", "randwrite64k"}

func (b *bench) runMain() error {
	rows := map[string]*row{}
	for _, id := range mainRowOrder {
		sc := findScenario(id)
		rows[id] = b.addRow(id, sc.title, sc.unit)
	}
	iolog := filepath.Join(b.work, "alloc4k.iolog")
	if err := writeAllocLog(iolog, diskSize); err != nil {
		return err
	}
	for round := 1; round <= b.cfg.rounds; round++ {
		if err := b.mainRound(round, rows, iolog); err != nil {
			return err
		}
	}
	return nil
}

// roundOrder is the order in which the targets take turns in a round:
// reversed every other round, since whoever writes first meets the
// host's page cache and writeback in a different state from whoever
// writes last.
func (b *bench) roundOrder(round int) []target {
	order := append([]target{}, b.targets()...)
	if round%2 == 0 {
		slices.Reverse(order)
	}
	return order
}

// mainRound runs every main scenario once on fresh disks.
func (b *bench) mainRound(round int, rows map[string]*row, iolog string) error {
	order := b.roundOrder(round)
	logf("== main scenarios, round %d of %d, on fresh %d GiB disks (working set %s; order %v)",
		round, b.cfg.rounds, diskSize>>30, workingSet, order)
	dir := filepath.Join(b.work, fmt.Sprintf("main-%d", round))
	disks, err := b.freshDisks(dir, order)
	if err != nil {
		return err
	}
	for _, sc := range filledScenarios {
		logf("-- %s", sc.title)
		if err := b.fioEach(sc.job, disks, rows[sc.id], round); err != nil {
			return err
		}
	}
	if err := b.stopAll(disks); err != nil {
		return err
	}
	b.removeDir(dir)

	logf("-- %s (fresh disks)", allocScenario.title)
	dir = filepath.Join(b.work, fmt.Sprintf("alloc-%d", round))
	disks, err = b.freshDisks(dir, order)
	if err != nil {
		return err
	}
	job := allocScenario.job
	job.iolog = iolog
	if err := b.fioEach(job, disks, rows[allocScenario.id], round); err != nil {
		return err
	}
	if err := b.stopAll(disks); err != nil {
		return err
	}
	b.removeDir(dir)
	return nil
}

func findScenario(id string) scenario {
	for _, sc := range filledScenarios {
		if sc.id == id {
			return sc
		}
	}
	return allocScenario
}

// freshDisks exposes a new disk on every target at once, so that each
// scenario runs on the three back to back and the ratios compare figures
// taken seconds apart on a shared, noisy machine.
func (b *bench) freshDisks(dir string, order []target) ([]*exposed, error) {
	var disks []*exposed
	for _, t := range order {
		d, err := b.freshDisk(t, dir, diskSize)
		if err != nil {
			b.stopAll(disks)
			return nil, err
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func (b *bench) stopAll(disks []*exposed) error {
	var first error
	for i := len(disks) - 1; i >= 0; i-- {
		if err := b.stop(disks[i]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// stop ends a target, saying so when that takes long (a daemon writing
// back its caches), since the time is not part of any figure.
func (b *bench) stop(d *exposed) error {
	start := time.Now()
	err := d.stop()
	if took := time.Since(start); took > 2*time.Second {
		logf("   (stopping %s took %.1f s)", d.target, took.Seconds())
	}
	if err != nil {
		return fmt.Errorf("stop %s: %w", d.target, err)
	}
	return nil
}

// removeDir deletes a section's disks and waits for the host file system
// to settle (freeing many extents, with online discard, takes seconds and
// would otherwise overlap the next measurement).
func (b *bench) removeDir(dir string) {
	start := time.Now()
	if err := os.RemoveAll(dir); err != nil {
		logf("   warning: %v", err)
	}
	syscall.Sync()
	if took := time.Since(start); took > 2*time.Second {
		logf("   (deleting %s took %.1f s)", filepath.Base(dir), took.Seconds())
	}
}

// writeAllocLog writes a fio iolog (version 2) with one 4 KiB write per
// cluster of a disk of size bytes: clusters in a random order, each at a
// random 4 KiB-aligned offset inside its cluster. The seed is fixed, so
// every target gets the same sequence.
func writeAllocLog(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(1))
	n := int(size / clusterSize)
	w := bufio.NewWriter(f)
	// The file name in the log is replaced by --replay_redirect.
	fmt.Fprintf(w, "fio version 2 iolog\ndisk add\ndisk open\n")
	for _, c := range rng.Perm(n) {
		off := int64(c)*clusterSize + int64(rng.Intn(clusterSize/4096))*4096
		fmt.Fprintf(w, "disk write %d 4096\n", off)
	}
	fmt.Fprintf(w, "disk close\n")
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fioEach runs job on each disk in turn, recording each figure in r, and
// writes back what the job left dirty before the next target runs, so that
// it does not pay for it.
func (b *bench) fioEach(job fioJob, disks []*exposed, r *row, round int) error {
	for _, d := range disks {
		res, err := b.fio(job, d.file)
		b.recordFio(r, d.target, round, res, err, false)
		if interrupted.Load() {
			return errInterrupted
		}
		syscall.Sync()
	}
	return nil
}
