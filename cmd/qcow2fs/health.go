// How a qcow2fs mount's daemon is doing, learnt without ever waiting on it
// for long: /proc/self/mountinfo says what is mounted, the run-state files
// say which daemon serves it (and /proc whether it is alive or stopped),
// and a bounded probe (probe.go) says whether it answers.

package main

import (
	"fmt"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// Mount states, as status prints them (JSON keeps the hyphen).
const (
	stateServing       = "serving"
	stateSuspended     = "suspended"      // qcow2fs suspend: requests wait until resumed
	stateStale         = "stale"          // the daemon is gone
	stateNotResponding = "not-responding" // stopped, or no answer in time
	stateUnknown       = "unknown"        // the probe failed otherwise
)

// mountHealth is the state of one qcow2fs mount.
type mountHealth struct {
	Entry mounts.Entry
	RS    *runState // the live daemon's run state; nil if none on record
	State string
	Why   string // for not-responding: what was seen
}

// assessMounts works out the state of each entry. With probeLive false a
// daemon on record that is alive and not stopped counts as serving without
// being asked (what mount needs: only whether the mount is still there);
// everything else is probed, all at once, within one probeTimeout.
func assessMounts(entries []mounts.Entry, probeLive bool) []mountHealth {
	hs := make([]mountHealth, len(entries))
	var toProbe []string
	for i, e := range entries {
		h := mountHealth{Entry: e}
		if rs := readRunState(e.Point); rs != nil {
			h.RS = rs
			if rs.stopped() {
				h.State, h.Why = stateNotResponding, fmt.Sprintf("its daemon (pid %d) is stopped", rs.PID)
			} else if !probeLive {
				h.State = stateServing
			}
		}
		if h.State == "" {
			toProbe = append(toProbe, e.Point)
		}
		hs[i] = h
	}
	if len(toProbe) == 0 {
		return hs
	}
	res := probeMounts(toProbe, probeTimeout)
	for i := range hs {
		h := &hs[i]
		if h.State != "" {
			continue
		}
		switch res[h.Entry.Point] {
		case probeServing:
			h.State = stateServing
		case probeDead:
			h.State = stateStale
		case probeTimedOut:
			h.State = stateNotResponding
			h.Why = fmt.Sprintf("its daemon did not answer within %v", probeTimeout)
			if h.RS != nil {
				h.Why = fmt.Sprintf("its daemon (pid %d) did not answer within %v", h.RS.PID, probeTimeout)
			}
		default:
			h.State = stateUnknown
		}
	}
	return hs
}

// qcow2fsMounts returns the qcow2fs entries of mountinfo.
func qcow2fsMounts() ([]mounts.Entry, error) {
	entries, err := mounts.Read()
	if err != nil {
		return nil, err
	}
	var out []mounts.Entry
	for _, e := range entries {
		if e.FSType == fsType {
			out = append(out, e)
		}
	}
	return out, nil
}
