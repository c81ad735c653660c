// Command bench is the driver behind "make bench" (scripts/bench.sh runs
// it as root after installing the tools and building the binaries). It
// exposes disks through qcow2fs, QEMU's FUSE export and a go-fuse
// passthrough server, runs the same fio jobs on each, prints a table and
// writes docs/PERFORMANCE.md.
//
// Everything it mounts, attaches or starts lives under --work and is
// undone before it exits, also on error or SIGINT/SIGTERM.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/spf13/pflag"
)

type config struct {
	work            string
	repo            string
	qcow2fsBin      string
	passthroughBin  string
	qcow2fsOpts     []string
	passthroughOpts []string
	runtime         int // seconds per timed fio job
	ramp            int // seconds of ramp before a timed job counts
	rounds          int // rounds of the main scenarios; each cell keeps its best
	compressedSize  int64
	out             string
	jsonDir         string
	sections        map[string]bool
	// uring adds the qcow2fs-uring target (qcow2fs -o uring=on) where
	// the transports are compared; the qcow2fs target is then uring=off.
	uring bool
}

// The sections of a run, in order; --only picks some.
var sectionOrder = []string{"main", "qd32", "ext4", "rss", "mounttime", "compressed", "convert"}

type bench struct {
	cfg        config
	work       string
	clean      *cleaner
	rows       []*row
	details    []detail
	failures   []failure
	mountNotes [numTargets]string
	fioSeq     int
}

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "qcow2fs-bench: %v\n", err)
		os.Exit(2)
	}
	os.Exit(runBench(cfg))
}

// envInt reads a whole-number environment variable, or def if unset.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func envStr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func parseConfig(args []string) (config, error) {
	fs := pflag.NewFlagSet("qcow2fs-bench", pflag.ContinueOnError)
	var cfg config
	var only, qOpts, pOpts, uring string
	var compressedMiB int
	fs.StringVar(&cfg.work, "work", "", "scratch `DIR` for images and mount points (required; must be empty)")
	fs.StringVar(&cfg.repo, "repo", ".", "the qcow2fs source tree (for the revision in the report)")
	fs.StringVar(&cfg.qcow2fsBin, "qcow2fs", "bin/qcow2fs", "qcow2fs binary")
	fs.StringVar(&cfg.passthroughBin, "passthrough", "bin/fuse-passthrough", "fuse-passthrough binary")
	fs.StringVar(&qOpts, "qcow2fs-opts", envStr("BENCH_QCOW2FS_OPTS", ""), "extra `OPTIONS` for qcow2fs mount, e.g. \"-o direct_io\" (env BENCH_QCOW2FS_OPTS)")
	fs.StringVar(&pOpts, "passthrough-opts", envStr("BENCH_PASSTHROUGH_OPTS", ""), "extra `OPTIONS` for fuse-passthrough, e.g. --direct-io (env BENCH_PASSTHROUGH_OPTS)")
	fs.IntVar(&cfg.runtime, "runtime", envInt("BENCH_RUNTIME", 10), "`SECONDS` per timed fio job (env BENCH_RUNTIME)")
	fs.IntVar(&cfg.ramp, "ramp", envInt("BENCH_RAMP", -1), "`SECONDS` of ramp before a timed job counts; default 2, or 1 below 6 s of runtime (env BENCH_RAMP)")
	fs.IntVar(&cfg.rounds, "rounds", envInt("BENCH_ROUNDS", 2), "`N` rounds of the main scenarios, alternating the targets' order; the table shows each target's best (env BENCH_ROUNDS)")
	fs.IntVar(&compressedMiB, "compressed-mib", envInt("BENCH_COMPRESSED_MIB", 1024), "`MiB` of data in the compressed images (env BENCH_COMPRESSED_MIB)")
	fs.StringVar(&only, "only", envStr("BENCH_ONLY", ""), "comma-separated `SECTIONS` to run: "+strings.Join(sectionOrder, ",")+" (env BENCH_ONLY; default all)")
	fs.StringVar(&cfg.out, "out", envStr("BENCH_OUT", "docs/PERFORMANCE.md"), "report `FILE` to write; empty for none (env BENCH_OUT)")
	fs.StringVar(&cfg.jsonDir, "json-dir", envStr("BENCH_JSON_DIR", ""), "keep every fio JSON output in `DIR` (env BENCH_JSON_DIR)")
	fs.StringVar(&uring, "uring", envStr("BENCH_URING", "auto"), "`auto|off`: auto also measures qcow2fs -o uring=on where the kernel has FUSE over io_uring enabled (env BENCH_URING)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if cfg.work == "" {
		return cfg, fmt.Errorf("--work DIR is required")
	}
	if cfg.runtime < 1 {
		return cfg, fmt.Errorf("runtime must be at least 1 s")
	}
	if cfg.rounds < 1 {
		return cfg, fmt.Errorf("rounds must be at least 1")
	}
	if cfg.ramp < 0 {
		cfg.ramp = 2
		if cfg.runtime < 6 {
			cfg.ramp = 1
		}
	}
	if compressedMiB < 1 {
		return cfg, fmt.Errorf("compressed image size must be at least 1 MiB")
	}
	cfg.compressedSize = int64(compressedMiB) << 20
	cfg.qcow2fsOpts = strings.Fields(qOpts)
	cfg.passthroughOpts = strings.Fields(pOpts)
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		known := false
		for _, k := range sectionOrder {
			known = known || k == s
		}
		if !known {
			return cfg, fmt.Errorf("unknown section %q (want some of %s)", s, strings.Join(sectionOrder, ","))
		}
		cfg.sections[s] = true
	}
	if len(cfg.sections) == 0 {
		for _, s := range sectionOrder {
			cfg.sections[s] = true
		}
	}
	switch uring {
	case "auto":
		cfg.uring = true // confirmed in runBench, once the binary is known
	case "off":
	default:
		return cfg, fmt.Errorf("--uring: want auto or off, not %q", uring)
	}
	// The binaries run from other directories (daemons chdir to /).
	for _, p := range []*string{&cfg.qcow2fsBin, &cfg.passthroughBin, &cfg.repo} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return cfg, err
		}
		*p = abs
	}
	return cfg, nil
}

func runBench(cfg config) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "qcow2fs-bench: run as root: it mounts FUSE file systems and attaches loop devices")
		return 1
	}
	work, err := filepath.EvalSymlinks(cfg.work)
	if err != nil {
		fmt.Fprintf(os.Stderr, "qcow2fs-bench: %v\n", err)
		return 1
	}
	cfg.uring = cfg.uring && uringAvailable(cfg.qcow2fsBin)
	b := &bench{cfg: cfg, work: work, clean: newCleaner()}
	b.clean.onSignal()
	defer b.clean.runAll()
	if cfg.jsonDir != "" {
		if err := os.MkdirAll(cfg.jsonDir, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "qcow2fs-bench: %v\n", err)
			return 1
		}
	}

	started := time.Now()
	m := b.describeMachine()
	logf("qcow2fs-bench: %s, %d CPUs; fio runtime %d s + %d s ramp; work dir %s", m.cpu, m.cpus, cfg.runtime, cfg.ramp, work)
	steps := map[string]func() error{
		"main": b.runMain, "qd32": b.runQD32, "ext4": b.runExt4, "rss": b.runRSS,
		"mounttime": b.runMountTime, "compressed": b.runCompressed,
		"convert": b.runConvert,
	}
	var fatal error
	for _, s := range sectionOrder {
		if !cfg.sections[s] {
			continue
		}
		if fatal = steps[s](); fatal != nil {
			break
		}
	}
	b.clean.runAll()
	if interrupted.Load() {
		// The signal handler cleans up and exits; nothing to report.
		select {}
	}
	if left := mounts.Under(work); len(left) > 0 && fatal == nil {
		fatal = fmt.Errorf("still mounted after cleanup: %s", strings.Join(left, ", "))
	}
	took := time.Since(started)

	if b.measuredAnything() {
		fmt.Println()
		b.printTable(os.Stdout)
	}
	if len(b.failures) > 0 {
		fmt.Println("\nFailures:")
		for _, f := range b.failures {
			exp := ""
			if f.expected {
				exp = " [known QEMU issue]"
			}
			fmt.Printf("- %s%s: %s\n", f.where, exp, oneLine(f.err))
		}
	}
	if fatal != nil {
		fmt.Fprintf(os.Stderr, "\nbench: FAILED: %v\n", fatal)
		return 1
	}
	if cfg.out != "" {
		if err := b.writeReport(cfg.out, m, started, took); err != nil {
			fmt.Fprintf(os.Stderr, "qcow2fs-bench: writing %s: %v\n", cfg.out, err)
			return 1
		}
		logf("wrote %s", cfg.out)
	}
	if n := b.unexpectedFailures(); n > 0 {
		fmt.Fprintf(os.Stderr, "qcow2fs-bench: %d measurement(s) failed (see above)\n", n)
		return 1
	}
	return 0
}
