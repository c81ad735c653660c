// The targets the bench compares: qcow2fs, QEMU's FUSE export and the go-fuse
// passthrough, each exposing a disk as a raw file, and stopping them.

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// target is one way of exposing a disk as a raw file.
type target int

const (
	tQcow2fs      target = iota // bin/qcow2fs mount (daemon)
	tQEMU                       // qemu-storage-daemon --export type=fuse
	tPassthrough                // bin/fuse-passthrough over a raw file: the FUSE ceiling
	tQcow2fsUring               // bin/qcow2fs mount -o uring=on: FUSE over io_uring
	tRawFile                    // a plain raw file, no FUSE: the buffered rows' limit (ext4.go)
	numTargets
)

var allTargets = []target{tQcow2fs, tQEMU, tPassthrough}

func (t target) String() string {
	return [...]string{"qcow2fs", "QEMU", "passthrough", "qcow2fs-uring", "raw file"}[t]
}

// targets are the targets of the sections that compare transports: every
// target, plus qcow2fs over io_uring when the kernel and the binary offer
// it (then the plain qcow2fs target is the classic /dev/fuse loop).
func (b *bench) targets() []target {
	if b.cfg.uring {
		return []target{tQcow2fs, tQcow2fsUring, tQEMU, tPassthrough}
	}
	return allTargets
}

// usesQcow2 tells whether the target serves a qcow2 image (else a raw file).
func (t target) usesQcow2() bool { return t != tPassthrough && t != tRawFile }

// exposed is a disk being served: fio runs on file.
type exposed struct {
	target target
	file   string // the raw view
	mount  string // the mount point (a file for QEMU's export)
	dir    string // the directory of the image, for anything else the run needs
	pid    int    // the serving process
	// ready is how long the target took from being started until the raw
	// view answered with its size.
	ready time.Duration
	stop  func() error
}

// makeImage creates a fresh disk of size bytes for t at path: a qcow2
// image with 64 KiB clusters, or a sparse raw file for the passthrough.
func (b *bench) makeImage(t target, path string, size int64, extraOpts string) error {
	if !t.usesQcow2() {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	opts := "cluster_size=65536"
	if extraOpts != "" {
		opts += "," + extraOpts
	}
	_, err := b.run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, fmt.Sprint(size))
	return err
}

// imageName is the file name of t's disk in a directory of its own.
func imageName(t target) string {
	if t.usesQcow2() {
		return "disk.qcow2"
	}
	return "disk.raw"
}

// freshDisk makes dir/<target>/ with a new disk in it and exposes it;
// qcow2fsOpts are added to a qcow2fs target's mount options.
func (b *bench) freshDisk(t target, dir string, size int64, qcow2fsOpts ...string) (*exposed, error) {
	d := filepath.Join(dir, t.String())
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(d, imageName(t))
	if err := b.makeImage(t, img, size, ""); err != nil {
		return nil, fmt.Errorf("%s: create %s: %w", t, img, err)
	}
	return b.expose(t, img, size, false, qcow2fsOpts...)
}

// expose serves image (created by makeImage for t) and returns once the
// raw view is ready. Failing to set up a target is fatal for the bench:
// the caller returns the error. qcow2fsOpts are added to a qcow2fs
// target's mount options.
func (b *bench) expose(t target, image string, size int64, readOnly bool, qcow2fsOpts ...string) (*exposed, error) {
	var e *exposed
	var err error
	switch t {
	case tQcow2fs:
		extra := qcow2fsOpts
		if b.cfg.uring {
			extra = append([]string{"-o", "uring=off"}, extra...)
		}
		e, err = b.exposeQcow2fs(image, size, readOnly, extra...)
	case tQcow2fsUring:
		e, err = b.exposeQcow2fs(image, size, readOnly, append([]string{"-o", "uring=on"}, qcow2fsOpts...)...)
	case tQEMU:
		e, err = b.exposeQEMU(image, size, readOnly)
	case tPassthrough:
		e, err = b.exposePassthrough(image, size)
	}
	if err != nil {
		return nil, fmt.Errorf("set up %s over %s: %w", t, image, err)
	}
	e.target = t
	e.dir = filepath.Dir(image)
	b.noteMount(t, e.mount)
	return e, nil
}

func (b *bench) exposeQcow2fs(image string, size int64, readOnly bool, extra ...string) (*exposed, error) {
	mnt := filepath.Join(filepath.Dir(image), "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	args := []string{"mount"}
	args = append(args, b.cfg.qcow2fsOpts...)
	args = append(args, extra...)
	if readOnly {
		args = append(args, "--ro")
	}
	args = append(args, image, mnt)
	start := time.Now()
	if _, err := b.run(b.cfg.qcow2fsBin, args...); err != nil {
		// The mount may exist even if the command failed late.
		if isMounted(mnt) {
			b.runAlways("fusermount3", "-u", "-z", mnt)
		}
		return nil, err
	}
	stop := b.clean.push("unmount qcow2fs "+mnt, func() error { return b.unmountQcow2fs(mnt) })
	e := &exposed{file: filepath.Join(mnt, strings.TrimSuffix(filepath.Base(image), ".qcow2")+".raw"), mount: mnt, stop: stop}
	if err := waitSize(e.file, size, 30*time.Second, nil); err != nil {
		stop()
		return nil, err
	}
	e.ready = time.Since(start)
	e.pid = qcow2fsPID(mnt)
	return e, nil
}

// unmountQcow2fs unmounts through the CLI, which waits for the daemon to
// flush and exit; if that fails the mount is detached lazily so that
// nothing stays mounted, and the first error is reported.
func (b *bench) unmountQcow2fs(mnt string) error {
	if !isMounted(mnt) {
		return nil
	}
	_, err := b.runAlways(b.cfg.qcow2fsBin, "unmount", mnt)
	if err != nil && isMounted(mnt) {
		if _, err2 := b.runAlways("fusermount3", "-u", "-z", mnt); err2 != nil {
			return fmt.Errorf("%v; lazy unmount: %v", err, err2)
		}
	}
	return err
}

// qcow2fsPID finds the daemon serving mnt from the run-state files the
// daemons leave in /run/qcow2fs (the daemon's command line is only
// "qcow2fs", so pgrep cannot tell mounts apart). 0 if none is found.
func qcow2fsPID(mnt string) int {
	files, _ := filepath.Glob("/run/qcow2fs/*.json")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var st struct {
			PID        int    `json:"pid"`
			Mountpoint string `json:"mountpoint"`
		}
		if json.Unmarshal(data, &st) == nil && st.Mountpoint == mnt && st.PID > 0 {
			return st.PID
		}
	}
	return 0
}

// exposeQEMU starts qemu-storage-daemon with a FUSE export. The export
// mounts over a regular file, which shows the disk's size once mounted.
func (b *bench) exposeQEMU(image string, size int64, readOnly bool) (*exposed, error) {
	dir := filepath.Dir(image)
	mnt := filepath.Join(dir, "export.raw")
	if err := os.WriteFile(mnt, nil, 0o644); err != nil {
		return nil, err
	}
	writable := "on"
	if readOnly {
		writable = "off"
	}
	start := time.Now()
	p, err := startBackground(filepath.Join(dir, "qemu-storage-daemon.log"), "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=file0,filename="+qemuEscape(image),
		"--blockdev", "driver=qcow2,node-name=qcow0,file=file0",
		"--export", "type=fuse,id=exp0,node-name=qcow0,mountpoint="+qemuEscape(mnt)+",writable="+writable)
	if err != nil {
		return nil, err
	}
	stop := b.clean.push("stop qemu-storage-daemon "+mnt, func() error { return stopServer(b, p, mnt) })
	alive := func() error {
		if p.exited() {
			return fmt.Errorf("qemu-storage-daemon exited: %v: %s", p.err, p.log())
		}
		return nil
	}
	if err := waitSize(mnt, size, 60*time.Second, alive); err != nil {
		stop()
		return nil, err
	}
	return &exposed{file: mnt, mount: mnt, pid: p.cmd.Process.Pid, stop: stop, ready: time.Since(start)}, nil
}

// qemuEscape doubles commas, which QEMU's option syntax uses as separators.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func (b *bench) exposePassthrough(raw string, size int64) (*exposed, error) {
	dir := filepath.Dir(raw)
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	args := append(append([]string{}, b.cfg.passthroughOpts...), raw, mnt)
	start := time.Now()
	p, err := startBackground(filepath.Join(dir, "fuse-passthrough.log"), b.cfg.passthroughBin, args...)
	if err != nil {
		return nil, err
	}
	stop := b.clean.push("stop fuse-passthrough "+mnt, func() error { return stopServer(b, p, mnt) })
	file := filepath.Join(mnt, filepath.Base(raw))
	alive := func() error {
		if p.exited() {
			return fmt.Errorf("fuse-passthrough exited: %v: %s", p.err, p.log())
		}
		return nil
	}
	if err := waitSize(file, size, 30*time.Second, alive); err != nil {
		stop()
		return nil, err
	}
	return &exposed{file: file, mount: mnt, pid: p.cmd.Process.Pid, stop: stop, ready: time.Since(start)}, nil
}

// stopServer ends a FUSE server we started (SIGTERM: both unmount then)
// and makes sure its mount is gone.
func stopServer(b *bench, p *background, mnt string) error {
	err := p.stop(2 * time.Minute)
	if isMounted(mnt) {
		if _, err2 := b.runAlways("fusermount3", "-u", "-z", mnt); err2 != nil {
			return fmt.Errorf("%s still mounted after the server exited (%v); lazy unmount: %v", mnt, err, err2)
		}
		if err == nil {
			err = fmt.Errorf("%s was still mounted after the server exited", mnt)
		}
	}
	return err
}
