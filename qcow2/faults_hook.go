//go:build qcow2fs_faults

package qcow2

// Fault injection for the end-to-end tests, compiled only into binaries
// built with -tags qcow2fs_faults (integration/panic_test.go builds one);
// a normal build has none of it.
//
// QCOW2FS_FAULT_PANIC_READ="PATH:OFFSET[;PATH:OFFSET...]" makes the first
// read of the image file PATH that covers host offset OFFSET (decimal or
// 0x hex) panic, as a bug tripped by a hostile image would. Pointed at an
// L2 table, the panic happens while the image's metadata lock is held.
//
// QCOW2FS_FAULT_DELAY_READ="PATH:OFFSET:DURATION" makes every read of PATH
// that covers host offset OFFSET take DURATION longer (a slow disk): a
// request stays in flight that long (the live suspend tests). With
// QCOW2FS_FAULT_DELAY_MARK=FILE set too, FILE is created when such a read
// starts waiting, so a test knows the request is in the daemon.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

func init() {
	if spec := os.Getenv("QCOW2FS_FAULT_DELAY_READ"); spec != "" {
		parts := strings.Split(spec, ":")
		if len(parts) < 3 {
			panic("QCOW2FS_FAULT_DELAY_READ: want PATH:OFFSET:DURATION, got " + spec)
		}
		path := strings.Join(parts[:len(parts)-2], ":")
		off, err := strconv.ParseInt(parts[len(parts)-2], 0, 64)
		if err != nil {
			panic("QCOW2FS_FAULT_DELAY_READ: " + err.Error())
		}
		d, err := time.ParseDuration(parts[len(parts)-1])
		if err != nil {
			panic("QCOW2FS_FAULT_DELAY_READ: " + err.Error())
		}
		prev := wrapHostFile
		wrapHostFile = func(p string, f hostFile) hostFile {
			f = prev(p, f)
			if p == path {
				return &delayOnRead{hostFile: f, off: off, d: d, mark: os.Getenv("QCOW2FS_FAULT_DELAY_MARK")}
			}
			return f
		}
	}
	spec := os.Getenv("QCOW2FS_FAULT_PANIC_READ")
	if spec == "" {
		return
	}
	faults := map[string]int64{}
	for _, one := range strings.Split(spec, ";") {
		i := strings.LastIndexByte(one, ':')
		if i < 0 {
			panic("QCOW2FS_FAULT_PANIC_READ: want PATH:OFFSET, got " + one)
		}
		off, err := strconv.ParseInt(one[i+1:], 0, 64)
		if err != nil {
			panic("QCOW2FS_FAULT_PANIC_READ: " + err.Error())
		}
		faults[one[:i]] = off
	}
	prev := wrapHostFile
	wrapHostFile = func(path string, f hostFile) hostFile {
		f = prev(path, f)
		if off, ok := faults[path]; ok {
			return &panicOnRead{hostFile: f, path: path, off: off}
		}
		return f
	}
}

type panicOnRead struct {
	hostFile
	path  string
	off   int64
	fired atomic.Bool
}

func (p *panicOnRead) ReadAt(b []byte, off int64) (int, error) {
	if off <= p.off && p.off < off+int64(len(b)) && p.fired.CompareAndSwap(false, true) {
		panic(fmt.Sprintf("fault injection: read of %s at %#x", p.path, p.off))
	}
	return p.hostFile.ReadAt(b, off)
}

type delayOnRead struct {
	hostFile
	off  int64
	d    time.Duration
	mark string // created when a delayed read starts waiting ("" = none)
}

func (p *delayOnRead) ReadAt(b []byte, off int64) (int, error) {
	if off <= p.off && p.off < off+int64(len(b)) {
		if p.mark != "" {
			os.WriteFile(p.mark, nil, 0o644)
		}
		time.Sleep(p.d)
	}
	return p.hostFile.ReadAt(b, off)
}
