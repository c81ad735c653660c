// Tests that the docs cover every command and flag (man page, completions)
// and that the generated files are valid for their tools.

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/spf13/pflag"
)

// Every command is documented (or deliberately hidden), and the man page
// and completions carry every flag the commands parse.
func TestDocsCoverEveryCommandAndFlag(t *testing.T) {
	hidden := map[string]bool{"umount": true, "gen-man": true, "completion": true, "test-panic": true}
	documented := map[string]bool{}
	for _, c := range commandTable {
		documented[c.Name] = true
		if commands[c.Name] == nil {
			t.Errorf("commandTable lists %q, which is no command", c.Name)
		}
	}
	for name := range commands {
		if !documented[name] && !hidden[name] {
			t.Errorf("command %q is missing from commandTable (help, man page, completion)", name)
		}
	}
	man := manPage()
	bash := bashCompletion()
	zsh := zshCompletion()
	for _, c := range commandTable {
		fs, usage := docOf(c)
		if usage == "" {
			t.Errorf("%s: no help text captured", c.Name)
		}
		if fs == nil && c.Name != "version" {
			t.Errorf("%s: no flag set captured", c.Name)
		}
		if !strings.Contains(man, `.SS "qcow2fs `+c.Name+`"`) {
			t.Errorf("man page has no section for %s", c.Name)
		}
		if fs == nil {
			continue
		}
		fs.VisitAll(func(f *pflag.Flag) {
			if !strings.Contains(man, `\fB\-\-`+roff(f.Name)+`\fR`) {
				t.Errorf("man page lacks %s --%s", c.Name, f.Name)
			}
			if !strings.Contains(zsh, "--"+f.Name+"[") && !strings.Contains(zsh, ",--"+f.Name+"}") {
				t.Errorf("zsh completion lacks %s --%s", c.Name, f.Name)
			}
		})
		line := c.Name + `) flags="` + strings.Join(flagNames(fs), " ") + `"`
		if !strings.Contains(bash, line) {
			t.Errorf("bash completion lacks %q", line)
		}
	}
	// The capture leaves nothing behind: commands run normally afterwards.
	if flagCapture != nil {
		t.Fatal("flagCapture still set")
	}
}

// The generated files are valid for their tools (where installed).
func TestDocsSyntax(t *testing.T) {
	dir := t.TempDir()
	if err := cmdGenMan([]string{dir}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "c.bash"), []byte(bashCompletion()), 0o644)
	os.WriteFile(filepath.Join(dir, "_qcow2fs"), []byte(zshCompletion()), 0o644)
	checks := [][]string{{"bash", "-n", "c.bash"}, {"zsh", "-n", "_qcow2fs"}}
	for _, page := range []string{"qcow2fs.1", "mount.qcow2fs.8"} {
		checks = append(checks, []string{"man", "--warnings", "-l", page})
	}
	for _, c := range checks {
		testenv.RequireTools(t, c[0])
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%v: %v\n%s", c, err, out)
			continue
		}
		if c[0] == "man" {
			// Warnings go to stderr; the page itself is long.
			cmd = exec.Command(c[0], c[1:]...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "MANWIDTH=80", "LC_ALL=C.UTF-8")
			cmd.Stdout = nil
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if cmd.Run(); stderr.Len() > 0 {
				t.Errorf("man %s warns: %s", c[3], stderr.String())
			}
		}
	}
}
