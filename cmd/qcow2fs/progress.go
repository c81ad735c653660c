// The progress line of the long maintenance commands (-p): drawn on stderr
// when it is a terminal, silent otherwise. It is a dozen lines of our own
// rather than a progress-bar library: the one used before pulled net/http
// and crypto/tls into the binary, which every process start (each mount
// starts two) paid for in page faults and package init.

package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// progress is the -p/--progress line on stderr. It stays silent (nil w)
// unless asked for and stderr is a terminal, so logs and pipes get no
// control characters.
type progress struct {
	w     io.Writer // nil: silent
	what  string
	start time.Time
	last  time.Time // when the line was last drawn
	shown int       // width of the last line drawn, to blank its tail
	done  bool
	now   func() time.Time
}

// progressWidth is the bar's width in cells; progressEvery throttles
// redraws.
const (
	progressWidth = 30
	progressEvery = 100 * time.Millisecond
)

// stderrIsTerminal is a variable so tests can pretend.
var stderrIsTerminal = func() bool { return term.IsTerminal(int(os.Stderr.Fd())) }

func newProgress(enabled bool, what string) *progress {
	p := &progress{what: what, now: time.Now}
	if !enabled || !stderrIsTerminal() {
		return p
	}
	p.w = os.Stderr
	p.start = p.now()
	p.draw(0, 1)
	return p
}

// update is the func(done, total) the qcow2 package calls. Totals are in
// whatever unit the operation counts (bytes, clusters, L1 entries) and may
// change as it goes, so the line shows a percentage.
func (p *progress) update(done, total int64) {
	if p.w == nil || p.done || total <= 0 {
		return
	}
	done = min(max(done, 0), total)
	if done >= total {
		p.draw(1, 1)
		p.end()
		return
	}
	if now := p.now(); now.Sub(p.last) >= progressEvery {
		p.draw(done, total)
	}
}

// finish completes the line after a successful run (some operations never
// report their last step).
func (p *progress) finish() {
	if p.w == nil || p.done {
		return
	}
	p.draw(1, 1)
	p.end()
}

// abort ends the line after a failure so the error starts on a line of its
// own.
func (p *progress) abort() {
	if p.w == nil || p.done {
		return
	}
	p.end()
}

func (p *progress) end() {
	p.done = true
	fmt.Fprintln(p.w)
}

// draw rewrites the line: "what  42% [=====>     ] 3s, about 4s left";
// when complete, the elapsed time alone.
func (p *progress) draw(done, total int64) {
	now := p.now()
	p.last = now
	frac := float64(done) / float64(total)
	cells := int(frac * progressWidth)
	bar := strings.Repeat("=", cells)
	if cells < progressWidth {
		bar += ">" + strings.Repeat(" ", progressWidth-cells-1)
	}
	elapsed := now.Sub(p.start)
	line := fmt.Sprintf("%s %3d%% [%s] %s", p.what, int(frac*100), bar, elapsed.Round(time.Second))
	if done < total && done > 0 && elapsed >= time.Second {
		left := time.Duration(float64(elapsed) * (1 - frac) / frac)
		line += fmt.Sprintf(", about %s left", left.Round(time.Second))
	}
	pad := max(p.shown-len(line), 0)
	p.shown = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
}
