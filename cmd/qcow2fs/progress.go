// The progress bar of the long maintenance commands (-p): drawn on stderr
// when it is a terminal, silent otherwise.

package main

import (
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress is the -p/--progress bar on stderr. It stays silent (nil bar)
// unless asked for and stderr is a terminal, so logs and pipes get no
// control characters.
type progress struct {
	bar  *progressbar.ProgressBar
	max  int64
	done bool
}

// stderrIsTerminal is a variable so tests can pretend.
var stderrIsTerminal = func() bool { return term.IsTerminal(int(os.Stderr.Fd())) }

func newProgress(enabled bool, what string) *progress {
	p := &progress{}
	if !enabled || !stderrIsTerminal() {
		return p
	}
	p.max = 100
	p.bar = progressbar.NewOptions64(p.max,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }),
	)
	return p
}

// update is the func(done, total) the qcow2 package calls. Totals are in
// whatever unit the operation counts (bytes, clusters, L1 entries) and may
// change as it goes, so the bar shows a percentage.
func (p *progress) update(done, total int64) {
	if p.bar == nil || p.done || total <= 0 {
		return
	}
	if total != p.max {
		p.max = total
		p.bar.ChangeMax64(total)
	}
	_ = p.bar.Set64(min(done, total))
	if done >= total {
		p.done = true
	}
}

// finish completes the bar after a successful run (some operations never
// report their last step).
func (p *progress) finish() {
	if p.bar == nil || p.done {
		return
	}
	p.done = true
	_ = p.bar.Finish()
}

// abort ends the bar's line after a failure so the error starts on a line
// of its own.
func (p *progress) abort() {
	if p.bar == nil || p.done {
		return
	}
	p.done = true
	fmt.Fprintln(os.Stderr)
}
