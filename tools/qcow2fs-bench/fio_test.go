// Unit tests of parsing fio's JSON report (a trimmed real one, and broken
// ones) and of keeping the best figure of a row.

package main

import (
	"math"
	"strings"
	"testing"
)

// A trimmed fio 3.33 JSON report of a randrw job with group_reporting,
// preceded by a warning line as fio sometimes prints one.
const fioSample = `fio: this platform does not support process shared mutexes, forcing use of threads.
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "rss",
      "error" : 0,
      "job_runtime" : 12000,
      "read" : {"io_bytes" : 409600, "bw_bytes" : 68266, "iops" : 16.5, "runtime" : 5990, "total_ios" : 100,
                "clat_ns" : {"mean" : 20000.0}},
      "write" : {"io_bytes" : 122880, "bw_bytes" : 20480, "iops" : 5.0, "runtime" : 6000, "total_ios" : 30,
                 "clat_ns" : {"mean" : 46000.0}}
    }
  ]
}`

func TestParseFio(t *testing.T) {
	r, err := parseFio([]byte(fioSample), "randrw")
	if err != nil {
		t.Fatal(err)
	}
	if r.IOPS != 21.5 || r.BWBytes != 68266+20480 || r.IOs != 130 || r.RuntimeMs != 6000 {
		t.Errorf("randrw: got %+v", r)
	}
	// Latency is weighted by the number of I/Os in each direction.
	if want := (20.0*100 + 46.0*30) / 130; math.Abs(r.LatMeanUs-want) > 1e-9 {
		t.Errorf("mean latency %v µs, want %v", r.LatMeanUs, want)
	}
	r, err = parseFio([]byte(fioSample), "randwrite")
	if err != nil || r.IOPS != 5 || r.IOs != 30 {
		t.Errorf("randwrite: got %+v, %v", r, err)
	}
}

func TestParseFioErrors(t *testing.T) {
	for name, tc := range map[string]struct{ out, rw, want string }{
		"job error":  {`{"jobs":[{"jobname":"x","error":5,"error_string":"Input/output error"}]}`, "read", "error 5"},
		"no I/O":     {`{"jobs":[{"jobname":"x","read":{"total_ios":0}}]}`, "read", "did no I/O"},
		"no job":     {`{"jobs":[]}`, "read", "no job"},
		"not JSON":   {`fio: file not found`, "read", "fio output"},
		"unknown rw": {`{"jobs":[{"jobname":"x"}]}`, "trim", "unknown fio rw"},
	} {
		_, err := parseFio([]byte(tc.out), tc.rw)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
	}
}

func TestRecordKeepsBest(t *testing.T) {
	b := &bench{}
	r := b.addRow("x", "x", uIOPS)
	b.recordFio(r, tQcow2fs, 1, fioResult{IOPS: 100, IOs: 1}, nil, false)
	b.recordFio(r, tQcow2fs, 2, fioResult{IOPS: 80, IOs: 1}, nil, false)
	if c := r.cells[tQcow2fs]; !c.ok || c.v != 100 {
		t.Errorf("IOPS cell %+v, want the best round (100)", c)
	}
	m := b.addRow("m", "m", uMiB)
	b.setCell(m, tQEMU, 50)
	if got := ratio(cell{ok: true, v: 25}, m.cells[tQEMU]); got != "0.50×" {
		t.Errorf("ratio %q", got)
	}
	if got := ratio(cell{status: "failed"}, m.cells[tQEMU]); got != "—" {
		t.Errorf("ratio with a failed cell %q", got)
	}
}
