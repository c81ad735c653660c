// The packaged systemd template unit, tested without systemctl: verified by
// systemd-analyze, and its ExecStart=/ExecStop= run as systemd would run them
// for an instance.

package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
	"github.com/qcow2fs/qcow2fs/internal/proc"

	"github.com/qcow2fs/qcow2fs/internal/unitfile"
)

// TestSystemdUnit checks the template unit the package ships,
// packaging/qcow2fs@.service, without systemctl: these machines (CI's
// too) are containers where systemd is not PID 1, so no unit can be
// started for real. Instead it does the two halves of what systemd does:
//
//   - systemd-analyze verify loads the unit as the manager would (its
//     syntax, specifiers, dependencies, that the commands exist and the
//     man pages it names are there) and must have nothing to say. It runs
//     in an alternate root holding the system's units, the binary under
//     test at /usr/bin/qcow2fs and the unit, with the man pages the binary
//     generates.
//   - For an instance, the test expands the unit's ExecStart= and
//     ExecStop= as systemd does (specifiers at load, Environment= then
//     EnvironmentFile= assignments, ${VAR} expansion at run time; see
//     internal/unitfile) and runs them as a Type=forking service: with
//     the manager's environment, from /, with no input. Start must return
//     with the mount answering and the daemon left behind; stop must
//     unmount, and the daemon must be gone by the time it returns (so
//     that KillMode= has nothing to kill), leaving the image clean.
//
// The only liberties: /etc/qcow2fs stands in a test directory, and
// /usr/bin/qcow2fs, which the unit names, is the binary under test.
func TestSystemdUnit(t *testing.T) {
	requireTools(t, "systemd-analyze", "man", "cp") // .ci/run installs systemd and man-db
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	unitPath := filepath.Join(repo, "packaging", "qcow2fs@.service")
	unitText, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := testDir(t)
	// An instance name as systemd-escape makes them, with an escape in it.
	const instance = `vm\x2dtest`
	unitName := "qcow2fs@" + instance + ".service"

	t.Run("verify", func(t *testing.T) {
		root := mkdir(t, dir, "root")
		run(t, "cp", "-a", "/usr/lib/systemd/system", mkdir(t, root, "usr/lib/systemd"))
		bin := filepath.Join(mkdir(t, root, "usr/bin"), "qcow2fs")
		run(t, "cp", qcow2fsBin, bin)
		if err := os.WriteFile(filepath.Join(mkdir(t, root, "etc/systemd/system"), "qcow2fs@.service"), unitText, 0o644); err != nil {
			t.Fatal(err)
		}
		gen := mkdir(t, dir, "gen-man")
		run(t, qcow2fsBin, "gen-man", gen)
		man := mkdir(t, dir, "man")
		for _, p := range []struct{ page, sec string }{{"qcow2fs.1", "man1"}, {"mount.qcow2fs.8", "man8"}} {
			run(t, "cp", filepath.Join(gen, p.page), filepath.Join(mkdir(t, man, p.sec), p.page))
		}
		cmd := exec.Command("systemd-analyze", "verify", "--root="+root, unitName)
		cmd.Env = append(os.Environ(), "MANPATH="+man, "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unitName, err, out)
		}
	})

	t.Run("start-stop", func(t *testing.T) {
		u, err := unitfile.Parse(bytes.NewReader(unitText))
		if err != nil {
			t.Fatal(err)
		}
		if typ := u.Value("Service", "Type"); typ != "forking" {
			t.Fatalf("Type=%s: this test runs the unit as Type=forking", typ)
		}
		name, err := unitfile.ParseName(unitName)
		if err != nil {
			t.Fatal(err)
		}
		expand := func(s string) string {
			t.Helper()
			v, err := unitfile.ExpandSpecifiers(s, name)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		// The configuration file, where the unit says it is.
		etc := mkdir(t, dir, "etc-qcow2fs") // stands for /etc/qcow2fs
		conf := expand(u.Value("Service", "EnvironmentFile"))
		if want := "/etc/qcow2fs/" + instance + ".conf"; conf != want {
			t.Fatalf("EnvironmentFile=%s, want %s", conf, want)
		}
		if cond := expand(u.Value("Unit", "ConditionPathExists")); cond != conf {
			t.Errorf("ConditionPathExists=%s, but the configuration is %s", cond, conf)
		}
		confHere := filepath.Join(etc, filepath.Base(conf))

		// The example configuration in the unit's header comment means
		// what it says when systemd reads it.
		var example strings.Builder
		for _, line := range strings.Split(string(unitText), "\n") {
			if ex, ok := strings.CutPrefix(line, "#   "); ok {
				example.WriteString(ex + "\n")
			}
		}
		exEnv := map[string]string{}
		if err := unitfile.ParseEnvFile(example.String(), exEnv); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"IMAGE", "MOUNTPOINT", "OPTIONS"} {
			if v, ok := exEnv[k]; !ok || strings.ContainsAny(v, "# ") {
				t.Errorf("the unit's example configuration sets %s to %q", k, v)
			}
		}

		// An image written by QEMU, then moved to a directory whose name
		// has a space (qemu-io's commands cannot name such a path).
		k := newImageKit(t, mkdir(t, dir, "img"))
		qemuCreate(t, k.Path("vm"), "16M", "", "", "")
		qemuIO(t, k.Path("vm"), k.Rand(0, 1<<20), k.Rand(5<<20+4096, 300<<10))
		img := filepath.Join(mkdir(t, dir, "my images"), "vm.qcow2")
		if err := os.Rename(k.Path("vm"), img); err != nil {
			t.Fatal(err)
		}
		want := qemuRawOf(t, img, filepath.Join(dir, "want.raw"))
		mnt := mkdir(t, dir, "mnt")
		t.Cleanup(func() { forceUnmount(t, mnt) })
		// As MOUNTING.md shows it, with comments on lines of their own
		// (systemd takes a '#' after a value as part of it). No OPTIONS:
		// the unit's Environment= default (a read-write mount) applies.
		confText := "# qcow2fs@" + instance + "\nIMAGE=" + img + "\n# where\nMOUNTPOINT=" + mnt + "\n"
		if err := os.WriteFile(confHere, []byte(confText), 0o644); err != nil {
			t.Fatal(err)
		}

		// The environment systemd gives the commands: its own PATH, then
		// Environment=, then the EnvironmentFile= assignments over them.
		env := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		var envValues []string
		for _, v := range u.Values("Service", "Environment") {
			envValues = append(envValues, expand(v))
		}
		if err := unitfile.ParseEnvironment(envValues, env); err != nil {
			t.Fatal(err)
		}
		if err := unitfile.ParseEnvFile(confText, env); err != nil {
			t.Fatal(err)
		}
		var environ []string
		for k, v := range env {
			environ = append(environ, k+"="+v)
		}
		// command turns ExecStart= or ExecStop= into an argument vector.
		command := func(key string) []string {
			t.Helper()
			vals := u.Values("Service", key)
			if len(vals) != 1 {
				t.Fatalf("%s= is given %d times; this test runs one command", key, len(vals))
			}
			words, err := unitfile.SplitWords(vals[0])
			if err != nil {
				t.Fatal(err)
			}
			for i := range words {
				words[i] = expand(words[i])
			}
			if len(words) == 0 || strings.ContainsAny(words[0][:1], "-@+!:|") {
				t.Fatalf("%s=%s: this test runs plain commands (no prefixes)", key, vals[0])
			}
			argv, err := unitfile.ExpandCommand(words, env)
			if err != nil {
				t.Fatal(err)
			}
			if argv[0] != "/usr/bin/qcow2fs" {
				t.Fatalf("%s= runs %s, not the packaged /usr/bin/qcow2fs", key, argv[0])
			}
			argv[0] = qcow2fsBin
			return argv
		}
		start, stop := command("ExecStart"), command("ExecStop")
		if got := strings.Join(start[1:], "|"); got != "mount|-o|defaults|"+img+"|"+mnt {
			t.Errorf("ExecStart= expands to %q", got)
		}
		runUnitCommand := func(key string, argv []string) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			cmd.Env, cmd.Dir = environ, "/"
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ctx.Err() != nil {
					err = errors.Join(err, ctx.Err())
				}
				t.Fatalf("%s= %q: %v\n%s", key, argv, err, out.String())
			}
		}

		runUnitCommand("ExecStart", start)
		m, ok := mounts.Find(mnt)
		if !ok || m.FSType != fuseType {
			t.Fatalf("after ExecStart= %s is not a qcow2fs mount (%+v)", mnt, m)
		}
		pid := daemonPID(t, mnt)
		raw := filepath.Join(mnt, "vm.raw")
		compareFiles(t, raw, want)
		// Write through the mount, so that stop has something to flush.
		f, err := os.OpenFile(raw, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte("qcow2fs@.service "), 4000)
		if _, err := f.WriteAt(data, 9<<20+512); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		wf, err := os.OpenFile(want, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wf.WriteAt(data, 9<<20+512); err != nil {
			t.Fatal(err)
		}
		wf.Close()

		runUnitCommand("ExecStop", stop)
		if _, ok := mounts.Find(mnt); ok {
			t.Fatalf("ExecStop= returned but %s is still mounted", mnt)
		}
		if !proc.Gone(pid) {
			t.Errorf("ExecStop= returned with the daemon (pid %d) still running: KillMode= would kill it", pid)
		}
		if h := mounts.OpenUnder(img); len(h) > 0 {
			t.Errorf("after ExecStop= the image is still open: %s", strings.Join(h, "; "))
		}
		qemuCheckClean(t, img)
		qemuCompareRaw(t, want, img)
	})
}
