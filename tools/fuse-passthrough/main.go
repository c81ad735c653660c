// Command fuse-passthrough exposes one raw file through a trivial go-fuse
// server: every read and write becomes one pread(2) or pwrite(2) on the
// host file, with no other work. It is the FUSE ceiling that make bench
// measures qcow2fs against — the cost of the transport alone — so it is
// mounted the way fusefs mounts qcow2fs (same go-fuse options, parallel
// request handling, 1 MiB requests) and must stay that simple.
//
//	fuse-passthrough [--direct-io] [--debug] RAWFILE MOUNTPOINT
//
// It serves in the foreground until the mount goes away (umount,
// fusermount3 -u) or it gets SIGINT or SIGTERM, on which it unmounts.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/pflag"
)

// The same limits and timeouts as fusefs (fusefs/options.go), so that the
// two servers differ only in what they do per request.
const (
	maxWrite        = 1 << 20
	maxReadAhead    = 1 << 20
	entryTimeout    = time.Minute
	negativeTimeout = time.Minute
	attrTimeout     = time.Second
)

func main() {
	flags := pflag.NewFlagSet("fuse-passthrough", pflag.ContinueOnError)
	directIO := flags.Bool("direct-io", false, "open the file with FOPEN_DIRECT_IO and parallel direct writes (as qcow2fs -o direct_io)")
	debug := flags.Bool("debug", false, "log every FUSE request")
	flags.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: fuse-passthrough [--direct-io] [--debug] RAWFILE MOUNTPOINT\n\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() != 2 {
		flags.Usage()
		os.Exit(2)
	}
	if err := serve(flags.Arg(0), flags.Arg(1), *directIO, *debug); err != nil {
		fmt.Fprintf(os.Stderr, "fuse-passthrough: %v\n", err)
		os.Exit(1)
	}
}

func serve(rawPath, mountpoint string, directIO, debug bool) error {
	f, err := os.OpenFile(rawPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", rawPath)
	}
	root := &dir{file: &rawFile{fd: int(f.Fd()), directIO: directIO}, name: filepath.Base(rawPath)}
	entry, neg, attr := entryTimeout, negativeTimeout, attrTimeout
	srv, err := fs.Mount(mountpoint, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			Name:             "fuse-passthrough",
			FsName:           rawPath,
			Options:          []string{"nodev", "nosuid"},
			MaxWrite:         maxWrite,
			MaxReadAhead:     maxReadAhead,
			DirectMount:      os.Geteuid() == 0,
			DirectMountFlags: syscall.MS_NODEV | syscall.MS_NOSUID,
			DisableXAttrs:    true,
			Debug:            debug,
		},
		EntryTimeout:    &entry,
		NegativeTimeout: &neg,
		AttrTimeout:     &attr,
	})
	if err != nil {
		return fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		// Fails with EBUSY while a file is open; the next signal retries.
		for srv.Unmount() != nil {
			<-sigs
		}
	}()
	srv.Wait()
	return nil
}
