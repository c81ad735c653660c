// A process's state and start time from /proc/PID/stat, and whether it has
// finished exiting (which the main thread's state alone does not tell).

package proc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat reads a process's state (R, S, T, Z, ...) and start time (clock
// ticks since boot, which tells a reused pid apart) from /proc/PID/stat.
// The state is the main thread's.
func Stat(pid int) (state string, start uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	const startTimeField = 22 - 3 // fields 1 and 2 come before ')', field 3 is f[0]
	if len(f) <= startTimeField {
		return "", 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[startTimeField], 10, 64)
	return f[0], start, err
}

// Exited reports whether process pid, whose Stat gave state, has finished
// exiting: it has closed all its files (and so dropped its locks), even if
// no one has reaped it yet. The state is the main thread's, which turns Z
// as soon as that thread exits, while the process's other threads may
// still be exiting with the files held: a zombie has exited only once
// /proc/PID/task holds the main thread alone.
func Exited(pid int, state string) bool {
	if state != "Z" && state != "X" {
		return false
	}
	threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err != nil || len(threads) <= 1
}

// Gone reports whether process pid has finished exiting, or is not there.
func Gone(pid int) bool {
	state, _, err := Stat(pid)
	return err != nil || Exited(pid, state)
}
