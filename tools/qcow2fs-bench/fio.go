// Running fio jobs (psync, O_DIRECT) and reading their JSON reports.

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// fioJob is one fio run. Every job uses psync with O_DIRECT on the file:
// each I/O is one synchronous request to the file system under test, with
// no page cache of the client in between.
type fioJob struct {
	name    string
	rw      string // read, write, randread, randwrite, randrw
	bs      string
	size    string // the working set, from offset 0
	numjobs int
	// timed jobs run for the configured runtime after a ramp; others do
	// their work once, stopped after capSeconds if that is set (-1: after
	// the configured runtime).
	timed      bool
	capSeconds int
	// iolog replays a fio iolog (a precomputed offset sequence) onto the file.
	iolog string
	// create lets fio create the file (a file inside ext4); otherwise a
	// missing file is an error, never a new file in the wrong place.
	create bool
	// engine is fio's ioengine, psync when empty; iodepth matters only to
	// an asynchronous engine (libaio).
	engine  string
	iodepth int
	extra   []string
}

// fioResult is what the report needs from one run.
type fioResult struct {
	IOPS      float64
	BWBytes   float64 // bytes per second
	LatMeanUs float64 // mean completion latency
	IOs       int64
	RuntimeMs int64
}

func (r fioResult) MiBps() float64 { return r.BWBytes / (1 << 20) }

func (b *bench) fio(j fioJob, file string) (fioResult, error) {
	args := []string{
		"--name=" + j.name,
		"--filename=" + file,
		"--direct=1",
		"--rw=" + j.rw,
		"--bs=" + j.bs,
		"--size=" + j.size,
		"--numjobs=" + fmt.Sprint(max(j.numjobs, 1)),
		"--group_reporting",
		// fio would otherwise fallocate the file before writing, which on
		// a qcow2 view could preallocate the clusters the job means to allocate.
		"--fallocate=none",
		"--randrepeat=1",
		"--output-format=json",
	}
	engine := j.engine
	if engine == "" {
		engine = "psync"
	}
	args = append(args, "--ioengine="+engine)
	if j.iodepth > 0 {
		args = append(args, fmt.Sprintf("--iodepth=%d", j.iodepth))
	}
	if !j.create {
		args = append(args, "--allow_file_create=0")
	}
	if j.timed {
		args = append(args, "--time_based", fmt.Sprintf("--runtime=%d", b.cfg.runtime), fmt.Sprintf("--ramp_time=%d", b.cfg.ramp))
	} else if j.capSeconds != 0 {
		limit := j.capSeconds
		if limit < 0 {
			limit = b.cfg.runtime
		}
		args = append(args, fmt.Sprintf("--runtime=%d", limit))
	}
	if j.iolog != "" {
		args = append(args, "--read_iolog="+j.iolog, "--replay_redirect="+file, "--replay_no_stall=1")
	}
	args = append(args, j.extra...)
	out, err := b.run("fio", args...)
	if interrupted.Load() {
		// fio died of the signal, or never started: not a result.
		return fioResult{}, errInterrupted
	}
	if b.cfg.jsonDir != "" && out != "" {
		b.fioSeq++
		name := fmt.Sprintf("%03d-%s.json", b.fioSeq, strings.ReplaceAll(j.name, "/", "_"))
		os.WriteFile(filepath.Join(b.cfg.jsonDir, name), []byte(out), 0o644)
	}
	if err != nil {
		return fioResult{}, err
	}
	return parseFio([]byte(out), j.rw)
}

// fioOutput is the part of fio's JSON output (fio 3.x) the bench reads.
type fioOutput struct {
	Jobs []struct {
		Jobname   string      `json:"jobname"`
		Error     int         `json:"error"`
		Read      fioDirStats `json:"read"`
		Write     fioDirStats `json:"write"`
		ErrString string      `json:"error_string"`
	} `json:"jobs"`
}

type fioDirStats struct {
	IOBytes    int64   `json:"io_bytes"`
	BWBytes    float64 `json:"bw_bytes"`
	IOPS       float64 `json:"iops"`
	Runtime    int64   `json:"runtime"`
	TotalIOs   int64   `json:"total_ios"`
	ClatNsStat struct {
		Mean float64 `json:"mean"`
	} `json:"clat_ns"`
}

// parseFio reads fio's JSON report. With group_reporting there is one job
// entry; rw says which direction counts (both for randrw).
func parseFio(out []byte, rw string) (fioResult, error) {
	// fio may print warnings before the JSON document.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var o fioOutput
	if err := json.Unmarshal(out, &o); err != nil {
		return fioResult{}, fmt.Errorf("fio output: %w", err)
	}
	if len(o.Jobs) == 0 {
		return fioResult{}, fmt.Errorf("fio output has no job")
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return fioResult{}, fmt.Errorf("fio job %s: error %d %s", j.Jobname, j.Error, j.ErrString)
	}
	var dirs []fioDirStats
	switch {
	case strings.HasSuffix(rw, "rw") || rw == "readwrite":
		dirs = []fioDirStats{j.Read, j.Write}
	case strings.HasSuffix(rw, "read"):
		dirs = []fioDirStats{j.Read}
	case strings.HasSuffix(rw, "write"):
		dirs = []fioDirStats{j.Write}
	default:
		return fioResult{}, fmt.Errorf("unknown fio rw %q", rw)
	}
	var r fioResult
	var latSum float64
	for _, d := range dirs {
		r.IOPS += d.IOPS
		r.BWBytes += d.BWBytes
		r.IOs += d.TotalIOs
		latSum += d.ClatNsStat.Mean * float64(d.TotalIOs)
	}
	if r.IOs == 0 {
		return fioResult{}, fmt.Errorf("fio job %s did no I/O", j.Jobname)
	}
	r.LatMeanUs = latSum / float64(r.IOs) / 1000
	// The direction's runtime is the wall time of the group (job_runtime
	// adds up the jobs' times).
	for _, d := range dirs {
		r.RuntimeMs = max(r.RuntimeMs, d.Runtime)
	}
	return r, nil
}
