// Documentation from the command definitions: the top-level help, the man
// pages (qcow2fs gen-man DIR) and the bash and zsh completions (qcow2fs
// completion bash|zsh) all come from commandTable and from the very flag
// sets the commands parse with, so --help, man and completion cannot
// disagree. A command's flag set is obtained by running the command in a
// capture mode in which parseFlags hands the set over and stops the
// command before it does anything (every command parses its flags first).

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// commandDoc is one line of the top-level help.
type commandDoc struct {
	Name     string
	Args     string // what follows the command name in the synopsis
	Summary  string
	Function func([]string) error
}

// commandTable lists the documented commands in help order (the hidden
// gen-man and completion, and the umount alias, are not in it).
var commandTable = []commandDoc{
	{"mount", "[OPTIONS] IMAGE... MOUNTPOINT", "mount images (vm.qcow2 appears as vm.raw)", cmdMount},
	{"unmount", "MOUNTPOINT", "unmount and wait for the daemon to finish", cmdUnmount},
	{"status", "[--output human|json]", "list mounts: mount points, modes, daemon pids", cmdStatus},
	{"suspend", "[--timeout D] MOUNTPOINT", "drain, flush and close the images, keep the mount (requests wait)", cmdSuspend},
	{"resume", "MOUNTPOINT", "reopen the images, refresh the snapshot files, go on", cmdResume},
	{"info", "[--output human|json] IMAGE", "describe an image, its backing chain and partitions", cmdInfo},
	{"hash", "[--algo sha256|sha1|md5] IMAGE", "hash of the virtual disk (what vm.raw hashes to)", cmdHash},
	{"create", "[-o OPTS] [-b BACKING] IMAGE [SIZE]", "create an image (like qemu-img create)", cmdCreate},
	{"check", "[--repair leaks|all] IMAGE", "check (and repair) the metadata; exit codes as qemu-img check", cmdCheck},
	{"snapshot", "list|create|delete|apply [NAME] IMAGE", "internal snapshots; create --external OVERLAY: an external one (live on a mount)", cmdSnapshot},
	{"resize", "[--shrink] IMAGE [+|-]SIZE", "change the virtual size", cmdResize},
	{"map", "[--output human|json] [--bitmap NAME] IMAGE", "allocation runs (or a bitmap's dirty runs)", cmdMap},
	{"bitmap", "--add|--remove|--clear|--enable|--disable|--merge SRC IMAGE BITMAP", "persistent dirty bitmaps", cmdBitmap},
	{"backup", "[--bitmap NAME [--full] [--clear]] [-b BACKING] IMAGE TARGET", "full or incremental backup", cmdBackup},
	{"convert", "[-O qcow2|raw] [-c] [-o OPTS] [-B BACKING] SOURCE TARGET", "convert an image (like qemu-img convert)", cmdConvert},
	{"commit", "IMAGE", "write the image's data into its backing file (live on a mount)", cmdCommit},
	{"rebase", "[-u] -b NEW [-F FMT] IMAGE", "change the backing file", cmdRebase},
	{"version", "", "print the version", cmdVersion},
}

func buildMainUsage() string {
	var b strings.Builder
	b.WriteString("qcow2fs presents QCOW2 disk images as flat raw files through FUSE.\n\nUsage:\n")
	line := func(left, summary string) {
		if len(left) < 44 {
			fmt.Fprintf(&b, "  %-44s  %s\n", left, summary)
		} else {
			fmt.Fprintf(&b, "  %s  %s\n", left, summary)
		}
	}
	for _, c := range commandTable {
		line(strings.TrimSpace("qcow2fs "+c.Name+" "+c.Args), c.Summary)
	}
	line("qcow2fs SOURCE MOUNTPOINT -o OPTIONS", "mount helper form (fstab, mount.fuse3)")
	b.WriteString("\nRun \"qcow2fs COMMAND --help\" for a command's options.\n\nExit codes: 0 success, 1 error, 2 usage error.\n")
	return b.String()
}

var (
	// flagCapture, when set, receives the flag set a command parses with,
	// instead of the command running (see parseFlags).
	flagCapture      func(*pflag.FlagSet)
	errFlagsCaptured = errors.New("flags captured")
	// flagSetUsage holds the help text each flag set was made with.
	flagSetUsage = map[*pflag.FlagSet]string{}
)

// commandFlags returns the flag set and help text of a command, without
// running it. The flag set is nil for a command without flags (version).
func commandFlags(fn func([]string) error) (*pflag.FlagSet, string) {
	var got *pflag.FlagSet
	flagCapture = func(fs *pflag.FlagSet) { got = fs }
	defer func() { flagCapture = nil }()
	if err := fn(nil); !errors.Is(err, errFlagsCaptured) {
		return nil, ""
	}
	return got, flagSetUsage[got]
}

const versionUsage = "Usage: qcow2fs version\n\nPrints the version of qcow2fs and of the libraries it was built with (also: qcow2fs --version).\n"

// docOf returns what the docs say about one command.
func docOf(c commandDoc) (*pflag.FlagSet, string) {
	if c.Name == "version" {
		return nil, versionUsage
	}
	return commandFlags(c.Function)
}

func cmdGenMan(args []string) error {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return usagef("usage: qcow2fs gen-man DIR (writes qcow2fs.1 and mount.qcow2fs.8)")
	}
	dir := args[0]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "qcow2fs.1"), []byte(manPage()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "mount.qcow2fs.8"), []byte(mountHelperManPage()), 0o644)
}

func cmdCompletion(args []string) error {
	if len(args) != 1 {
		return usagef("usage: qcow2fs completion bash|zsh")
	}
	switch args[0] {
	case "bash":
		fmt.Print(bashCompletion())
	case "zsh":
		fmt.Print(zshCompletion())
	default:
		return usagef("completion: bash or zsh, not %q", args[0])
	}
	return nil
}

// flagNames lists a flag set's flags as they are typed (--name, -x).
func flagNames(fs *pflag.FlagSet) []string {
	var names []string
	if fs == nil {
		return []string{"--help"}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		names = append(names, "--"+f.Name)
		if f.Shorthand != "" {
			names = append(names, "-"+f.Shorthand)
		}
	})
	return names
}

func commandNames() []string {
	var names []string
	for _, c := range commandTable {
		names = append(names, c.Name)
	}
	return names
}

func bashCompletion() string {
	var b strings.Builder
	b.WriteString(`# bash completion for qcow2fs (generated by "qcow2fs completion bash")
_qcow2fs() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -*) ;;
            *) cmd=${COMP_WORDS[i]}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "` + strings.Join(commandNames(), " ") + `" -- "$cur"))
            [[ $cur == */* || $cur == .* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
        fi
        return
    fi
    local flags=""
    case $cmd in
`)
	for _, c := range commandTable {
		fs, _ := docOf(c)
		fmt.Fprintf(&b, "        %s) flags=%q ;;\n", c.Name, strings.Join(flagNames(fs), " "))
	}
	b.WriteString(`    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -o filenames -o bashdefault -F _qcow2fs qcow2fs
`)
	return b.String()
}

// zshQuote makes text safe inside a single-quoted _arguments spec.
func zshQuote(s string) string {
	r := strings.NewReplacer("'", "'\\''", "[", "(", "]", ")", ":", "\\:")
	return r.Replace(s)
}

func zshCompletion() string {
	var b strings.Builder
	b.WriteString("#compdef qcow2fs\n# zsh completion for qcow2fs (generated by \"qcow2fs completion zsh\")\n\n_qcow2fs() {\n  local -a commands\n  commands=(\n")
	for _, c := range commandTable {
		fmt.Fprintf(&b, "    '%s:%s'\n", c.Name, zshQuote(c.Summary))
	}
	b.WriteString("  )\n  if (( CURRENT == 2 )); then\n    _describe -t commands 'qcow2fs command' commands\n    _files\n    return\n  fi\n  local cmd=${words[2]}\n  shift words\n  (( CURRENT-- ))\n  case $cmd in\n")
	for _, c := range commandTable {
		fs, _ := docOf(c)
		var specs []string
		if fs != nil {
			fs.VisitAll(func(f *pflag.Flag) {
				value := ""
				if f.Value.Type() != "bool" {
					name, _ := pflag.UnquoteUsage(f)
					value = ":" + strings.ToLower(zshQuote(name)) + ":_files"
				}
				desc := "[" + zshQuote(f.Usage) + "]"
				repeat := ""
				if strings.Contains(f.Value.Type(), "Array") {
					repeat = "*"
				}
				if f.Shorthand != "" {
					specs = append(specs, fmt.Sprintf("'%s(-%s --%s)'{-%s,--%s}'%s%s'", repeat, f.Shorthand, f.Name, f.Shorthand, f.Name, desc, value))
				} else {
					specs = append(specs, fmt.Sprintf("'%s--%s%s%s'", repeat, f.Name, desc, value))
				}
			})
		}
		specs = append(specs, "'*:file:_files'")
		fmt.Fprintf(&b, "    %s)\n      _arguments -s \\\n        %s ;;\n", c.Name, strings.Join(specs, " \\\n        "))
	}
	b.WriteString("  esac\n}\n\n_qcow2fs \"$@\"\n")
	return b.String()
}

// roff escapes text for a man page: backslashes, and a line starting with
// a control character.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

// manText renders a help text: its first block (the Usage: lines) as a
// synopsis, every other paragraph filled, except indented ones (tables,
// examples), which keep their layout.
func manText(b *strings.Builder, usage string) {
	paras := strings.Split(strings.TrimSpace(usage), "\n\n")
	for i, p := range paras {
		lines := strings.Split(p, "\n")
		indented := false
		for _, l := range lines {
			if strings.HasPrefix(l, " ") {
				indented = true
			}
		}
		switch {
		case i == 0 && strings.HasPrefix(p, "Usage:"):
			b.WriteString(".nf\n")
			for _, l := range lines {
				b.WriteString(roff(strings.TrimSpace(strings.TrimPrefix(l, "Usage:"))) + "\n")
			}
			b.WriteString(".fi\n.PP\n")
		case indented:
			b.WriteString(".nf\n.RS 2\n" + roff(p) + "\n.RE\n.fi\n.PP\n")
		default:
			b.WriteString(roff(p) + "\n.PP\n")
		}
	}
}

// manFlags lists a flag set as tagged paragraphs.
func manFlags(b *strings.Builder, fs *pflag.FlagSet) {
	if fs == nil {
		return
	}
	fs.VisitAll(func(f *pflag.Flag) {
		tag := `\fB\-\-` + roff(f.Name) + `\fR`
		if f.Shorthand != "" {
			tag = `\fB\-` + roff(f.Shorthand) + `\fR, ` + tag
		}
		name, usage := pflag.UnquoteUsage(f)
		if f.Value.Type() != "bool" && name != "" {
			tag += ` \fI` + roff(name) + `\fR`
		}
		if d := f.DefValue; d != "" && d != "false" && d != "[]" && d != "0" {
			usage += fmt.Sprintf(" (default %s)", d)
		}
		b.WriteString(".TP\n" + tag + "\n" + roff(usage) + "\n")
	})
	b.WriteString(".PP\n")
}

func manHeader(b *strings.Builder, name, section, title string) {
	v := version
	if v == "" {
		v = "dev"
	}
	fmt.Fprintf(b, ".\\\" Generated by \"qcow2fs gen-man\" from the command definitions; do not edit.\n")
	fmt.Fprintf(b, ".TH %s %s \"\" \"qcow2fs %s\" \"%s\"\n", strings.ToUpper(name), section, roff(v), title)
}

func manPage() string {
	var b strings.Builder
	manHeader(&b, "qcow2fs", "1", "User Commands")
	b.WriteString(".SH NAME\nqcow2fs \\- present QCOW2 disk images as raw files through FUSE, and maintain them\n")
	b.WriteString(".SH SYNOPSIS\n.nf\n")
	for _, c := range commandTable {
		b.WriteString(`\fBqcow2fs ` + roff(c.Name) + `\fR ` + roff(c.Args) + "\n")
	}
	b.WriteString(`\fBqcow2fs\fR \fISOURCE MOUNTPOINT\fR \-o \fIOPTIONS\fR` + "\n.fi\n")
	b.WriteString(".SH DESCRIPTION\n" + roff(strings.SplitN(mainUsage, "\n", 2)[0]) +
		"\nMounting vm.qcow2 gives a directory holding vm.raw, a regular file whose bytes are what QEMU reads from the image.\n" +
		"The maintenance commands work on unmounted images and interoperate with QEMU.\n")
	b.WriteString(".SH COMMANDS\n")
	for _, c := range commandTable {
		fs, usage := docOf(c)
		fmt.Fprintf(&b, ".SS \"%s\"\n%s\n.PP\n", roff("qcow2fs "+c.Name), roff(c.Summary+"."))
		manText(&b, usage)
		if fs != nil {
			b.WriteString("Options:\n")
			manFlags(&b, fs)
		}
	}
	b.WriteString(".SH EXIT STATUS\n0 success, 1 error, 2 usage error (check: 0 clean, 1 the check could not run, 2 corruptions, 3 only leaks).\n")
	b.WriteString(".SH FILES\n.TP\n/run/qcow2fs\nrun state and mount locks of root's mounts\n.TP\n$XDG_RUNTIME_DIR/qcow2fs, /tmp/qcow2fs\\-UID\nthose of other users (a private directory, 0700)\n.TP\n/etc/fuse.conf\n" +
		"user_allow_other lets users other than root mount with allow_other or allow_root\n")
	b.WriteString(".SH SEE ALSO\n\\fBmount.qcow2fs\\fR(8), \\fBqemu\\-img\\fR(1), \\fBfusermount3\\fR(1), \\fBfstab\\fR(5), /usr/share/doc/qcow2fs\n")
	return b.String()
}

func mountHelperManPage() string {
	var b strings.Builder
	manHeader(&b, "mount.qcow2fs", "8", "System Administration")
	b.WriteString(".SH NAME\nmount.qcow2fs, mount.fuse.qcow2fs \\- mount(8) helpers for qcow2fs (fstab type fuse.qcow2fs or qcow2fs)\n")
	fs, usage := commandFlags(cmdMountHelper)
	b.WriteString(".SH SYNOPSIS\n")
	manText(&b, usage)
	b.WriteString(".SH DESCRIPTION\nmount(8) runs /sbin/mount.fuse.qcow2fs for fstab entries of type fuse.qcow2fs and /sbin/mount.qcow2fs for type qcow2fs, e.g.\n" +
		".PP\n.nf\n.RS 2\n/var/lib/images/vm.qcow2  /mnt/vm  fuse.qcow2fs  ro,nofail  0 0\n.RE\n.fi\n.PP\n" +
		"Both are the qcow2fs binary; they mount as \\fBqcow2fs mount\\fR does and return once the mount is ready. The options column takes every \\-o key of qcow2fs mount:\n.PP\n")
	b.WriteString(".SH OPTIONS\n")
	manFlags(&b, fs)
	_, mountHelp := commandFlags(cmdMount)
	b.WriteString(".SH \"MOUNT OPTIONS (qcow2fs mount)\"\n")
	manText(&b, mountHelp)
	b.WriteString(".SH SEE ALSO\n\\fBqcow2fs\\fR(1), \\fBmount\\fR(8), \\fBfstab\\fR(5), \\fBsystemd.mount\\fR(5)\n")
	return b.String()
}
