// The offline maintenance commands (create, check, snapshot, resize, map,
// commit, rebase, bitmap, backup, convert), registered here, each in a file
// of its own, and the argument checks they share. Their -o lists are read
// in optlist.go, their progress bar drawn in progress.go, and a refusal by
// the image lock explained in imageuse.go.

package main

func init() {
	// Registered here rather than in main.go's map so the maintenance
	// commands live in files of their own.
	commands["create"] = cmdCreate
	commands["check"] = cmdCheck
	commands["snapshot"] = cmdSnapshot
	commands["resize"] = cmdResize
	commands["map"] = cmdMap
	commands["commit"] = cmdCommit
	commands["rebase"] = cmdRebase
	commands["bitmap"] = cmdBitmap
	commands["backup"] = cmdBackup
	commands["convert"] = cmdConvert
}

// checkFormatFlag accepts -f qcow2 (qemu-img's habit) and nothing else.
func checkFormatFlag(cmd, format string) error {
	if format != "" && format != "qcow2" {
		return usagef("%s: only the qcow2 format is supported, not %q", cmd, format)
	}
	return nil
}

// negativeSizeArgs moves arguments that look like a negative size
// ("-1G", "-512") behind a "--", so the flag parser does not take them for
// short options (resize IMAGE -1G).
func negativeSizeArgs(args []string) []string {
	var flags, sizes []string
	for _, a := range args {
		if len(a) > 1 && a[0] == '-' && (a[1] >= '0' && a[1] <= '9' || a[1] == '.') {
			sizes = append(sizes, a)
			continue
		}
		flags = append(flags, a)
	}
	if len(sizes) == 0 {
		return args
	}
	for _, a := range flags {
		if a == "--" {
			// The caller already ends flags explicitly: keep the order.
			return args
		}
	}
	return append(append(flags, "--"), sizes...)
}
