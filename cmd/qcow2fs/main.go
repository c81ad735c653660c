// Command qcow2fs mounts QCOW2 disk images as flat raw files through FUSE.
//
// Exit codes: 0 success, 1 error (bad image, mount failure, ...), 2 usage
// error (unknown command, flag or option, wrong number of arguments).
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qcow2fs/qcow2fs/internal/daemon"

	"github.com/spf13/pflag"
)

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// mainUsage is the top-level help, built from commandTable (docs.go),
// which the man page and the shell completions also come from.
var mainUsage = buildMainUsage()

// commands maps subcommand names to their implementation: a new command
// is one line here (and one in commandTable, docs.go).
var commands = map[string]func(args []string) error{
	"mount":   cmdMount,
	"unmount": cmdUnmount,
	"umount":  cmdUnmount,
	"status":  cmdStatus,
	"info":    cmdInfo,
	"hash":    cmdHash,
	"version": cmdVersion,
	// Hidden: generate the man pages and shell completions (docs.go).
	"gen-man":    cmdGenMan,
	"completion": cmdCompletion,
}

func main() {
	if isProbeChild() {
		os.Exit(runProbeChild())
	}
	if daemon.IsChild() {
		os.Exit(runDaemonChild())
	}
	os.Exit(run(os.Args))
}

// run dispatches argv and turns the outcome into an exit code, printing
// errors as one line: "qcow2fs: <message>". A panic is a bug: it exits 1
// with a message, never 2 (which check uses for "corruptions found").
func run(argv []string) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "qcow2fs: internal error: %s (please report this bug)\n", daemon.OneLine(fmt.Sprint(r)))
			code = exitError
		}
	}()
	err := dispatch(argv)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	}
	var exit *exitCode
	if errors.As(err, &exit) {
		return exit.code
	}
	fmt.Fprintf(os.Stderr, "qcow2fs: %s\n", daemon.OneLine(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// exitCode ends the program with a code after the message was already
// printed (e.g. the daemon's error, relayed by the parent).
type exitCode struct{ code int }

func (e *exitCode) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func dispatch(argv []string) error {
	args := argv[1:]
	// Called as mount.qcow2fs or mount.fuse.qcow2fs by mount(8).
	if strings.HasPrefix(filepath.Base(argv[0]), "mount.") {
		return cmdMountHelper(args)
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, mainUsage)
		return &exitCode{exitUsage}
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Print(mainUsage)
		return nil
	case "-V", "--version":
		return cmdVersion(nil)
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(args[1:])
	}
	// The form mount.fuse3 runs for fstab type fuse.qcow2fs:
	// "qcow2fs SOURCE MOUNTPOINT -o OPTS".
	// A word with a slash is a path, never a command: a missing image
	// then gets the mount's own error (exit 1), as mount(8) expects.
	if !strings.HasPrefix(args[0], "-") {
		if _, err := os.Stat(args[0]); err == nil || strings.ContainsRune(args[0], '/') {
			return cmdMount(args)
		}
		return usagef("unknown command %q (and no such file or directory); run qcow2fs --help", args[0])
	}
	return usagef("unknown option %q; run qcow2fs --help", args[0])
}

// newFlagSet makes a flag set that reports errors instead of exiting and
// prints its help to stdout.
func newFlagSet(name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	flagSetUsage[fs] = usage
	fs.SortFlags = false
	fs.BoolP("help", "h", false, "show this help")
	fs.Usage = func() {
		fmt.Print(usage)
		fmt.Print("\nOptions:\n" + flagUsages(fs))
	}
	return fs
}

// flagUsages lists the flags one per line, in definition order. pflag's
// own listing spells boolean flags "--ro[=true|false]", which reads badly.
func flagUsages(fs *pflag.FlagSet) string {
	type line struct{ left, usage string }
	var lines []line
	width := 0
	fs.VisitAll(func(f *pflag.Flag) {
		left := "      --" + f.Name
		if f.Shorthand != "" {
			left = "  -" + f.Shorthand + ", --" + f.Name
		}
		name, usage := pflag.UnquoteUsage(f)
		if f.Value.Type() != "bool" && name != "" {
			left += " " + name
		}
		if d := f.DefValue; d != "" && d != "false" && d != "[]" && d != "0" {
			usage += fmt.Sprintf(" (default %s)", d)
		}
		lines = append(lines, line{left, usage})
		width = max(width, len(left))
	})
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%-*s   %s\n", width, l.left, l.usage)
	}
	return b.String()
}

// parseFlags parses args; flag errors become usage errors (exit 2) and
// --help prints the help and ends the command successfully.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if flagCapture != nil {
		// Documentation run (docs.go): hand the flag set over and end
		// the command before it does anything.
		flagCapture(fs)
		return errFlagsCaptured
	}
	// pflag prints parse errors to its output before returning them; we
	// print our own one-line message instead.
	fs.SetOutput(discard{})
	err := fs.Parse(args)
	if err != nil {
		return usagef("%s: %v (see qcow2fs %s --help)", fs.Name(), err, fs.Name())
	}
	if help, _ := fs.GetBool("help"); help {
		fs.Usage()
		return pflag.ErrHelp
	}
	return checkEmptyValues(fs)
}

// allowEmpty is the annotation of a string flag for which "" means
// something (rebase -b "": no backing file).
const allowEmpty = "qcow2fs-allow-empty"

// checkEmptyValues refuses an empty value given to a string flag: pflag
// cannot tell --overlay "" from no --overlay at all, and a script whose
// variable came out empty must not get a read-write mount of the evidence
// (or a log in the wrong place, or the default of anything) instead.
func checkEmptyValues(fs *pflag.FlagSet) error {
	var err error
	fs.Visit(func(f *pflag.Flag) {
		if err == nil && f.Value.Type() == "string" && f.Value.String() == "" && f.Annotations[allowEmpty] == nil {
			err = usagef("%s: --%s: empty value (see qcow2fs %s --help)", fs.Name(), f.Name, fs.Name())
		}
	})
	return err
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
