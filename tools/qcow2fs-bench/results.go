// The results model: units, cells, rows, fio details and failures that do
// not stop the run.

package main

import (
	"errors"
	"fmt"
	"os"
)

// unit says how a row's figures read.
type unit int

const (
	uMiBps unit = iota // bandwidth, higher is better
	uIOPS              // operations per second, higher is better
	uMiB               // memory, lower is better
	uMs                // time, lower is better
)

func (u unit) lowerIsBetter() bool { return u == uMiB || u == uMs }

// cell is one target's figure in a row.
type cell struct {
	ok     bool
	v      float64
	status string // when !ok: "failed", "skipped", "n/a"
	note   string // shown next to a figure, e.g. "ext4 corrupt"
}

// row is one line of the results table.
type row struct {
	id    string
	title string
	unit  unit
	cells [numTargets]cell
}

// detail keeps one fio run's raw figures for the report's appendix.
type detail struct {
	row    string
	target target
	round  int
	res    fioResult
}

// failure is something that went wrong in a row without stopping the run.
// expected marks known breakage outside qcow2fs (QEMU's export under
// losetup --direct-io): it does not fail the run.
type failure struct {
	where    string
	err      string
	expected bool
}

func (b *bench) addRow(id, title string, u unit) *row {
	r := &row{id: id, title: title, unit: u}
	for i := range r.cells {
		r.cells[i] = cell{status: "n/a"}
	}
	b.rows = append(b.rows, r)
	return r
}

func (b *bench) setCell(r *row, t target, v float64) {
	r.cells[t] = cell{ok: true, v: v}
}

// fail records a failed cell and reports it at once. An interrupted
// run records nothing: its cleanup is under way.
func (b *bench) fail(r *row, t target, err error, expected bool) {
	if errors.Is(err, errInterrupted) || interrupted.Load() {
		return
	}
	r.cells[t] = cell{status: "failed"}
	where := fmt.Sprintf("%s, %s", r.title, t)
	b.failures = append(b.failures, failure{where: where, err: err.Error(), expected: expected})
	fmt.Fprintf(os.Stderr, "qcow2fs-bench: FAILED: %s: %v\n", where, err)
}

func (b *bench) skip(r *row, t target, why string) {
	r.cells[t] = cell{status: "skipped", note: why}
}

// recordFio stores a fio run of the given round in row r: the row's unit
// picks bandwidth or IOPS. Over several rounds the cell keeps the best
// figure; a failure in any round marks the cell failed for good.
func (b *bench) recordFio(r *row, t target, round int, res fioResult, err error, expected bool) {
	if err != nil {
		b.fail(r, t, err, expected)
		return
	}
	v := res.IOPS
	if r.unit == uMiBps {
		v = res.MiBps()
	}
	b.details = append(b.details, detail{row: r.title, target: t, round: round, res: res})
	logf("   %-13s %s", t, formatValue(v, r.unit))
	c := &r.cells[t]
	if c.status == "failed" {
		return
	}
	if !c.ok || (r.unit.lowerIsBetter() && v < c.v) || (!r.unit.lowerIsBetter() && v > c.v) {
		b.setCell(r, t, v)
	}
}

// unexpectedFailures counts the failures that make the run fail.
func (b *bench) unexpectedFailures() int {
	n := 0
	for _, f := range b.failures {
		if !f.expected {
			n++
		}
	}
	return n
}

func (b *bench) measuredAnything() bool {
	for _, r := range b.rows {
		for _, c := range r.cells {
			if c.ok {
				return true
			}
		}
	}
	return false
}
