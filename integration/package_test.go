// Tests of the .deb: built with make deb, installed with dpkg -i, used (man
// pages, completions, an fstab mount), purged, leaving nothing behind.

package integration

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// debPaths lists the files and symlinks a .deb installs (dpkg-deb -c),
// without the directories.
func debPaths(t *testing.T, deb string) []string {
	t.Helper()
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || strings.HasPrefix(f[0], "d") {
			continue
		}
		paths = append(paths, strings.TrimPrefix(f[5], "."))
	}
	if len(paths) == 0 {
		t.Fatalf("dpkg-deb -c %s lists no files", deb)
	}
	return paths
}

// setAside moves path away for the test (an earlier make install, say) and
// puts it back afterwards, whatever the test left there.
func setAside(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return
	}
	saved := path + ".qcow2fs-test-saved"
	if err := os.Rename(path, saved); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(path)
		if err := os.Rename(saved, path); err != nil {
			t.Errorf("cleanup: restore %s: %v", path, err)
		}
	})
}

// TestDebPackage builds the .deb with make deb, installs it into the real
// system with dpkg -i, uses what it installed (man pages, bash and zsh
// completion, an fstab mount through /sbin/mount.fuse.qcow2fs), then
// purges it and checks nothing it installed is left. Whatever stood at
// those paths before (make install's helpers) is restored afterwards.
func TestDebPackage(t *testing.T) {
	requireTools(t, "make", "dpkg", "dpkg-deb", "dpkg-query", "man", "mount", "bash", "zsh",
		"/usr/share/bash-completion/bash_completion") // .ci/run installs bash-completion
	if r := execute("", "dpkg-query", "-W", "-f", "${Status}", "qcow2fs"); r.Code == 0 && strings.Contains(r.Stdout, "installed") {
		testenv.NotClean(t, "the qcow2fs package is installed; the test does not replace it")
	}
	requireAbsent(t, "/usr/local/sbin/qcow2fs") // mount.fuse3's route must not be the one taken
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := testDir(t)
	out := strings.TrimSpace(runIn(t, repo, "make", "--no-print-directory", "-s", "deb", "DEBDIR="+dir))
	deb := out[strings.LastIndexByte(out, '\n')+1:]
	version := strings.TrimSpace(runIn(t, repo, "scripts/version.sh"))
	if filepath.Base(deb) != "qcow2fs_"+version+"_"+strings.TrimSpace(run(t, "dpkg", "--print-architecture"))+".deb" {
		t.Fatalf("make deb made %q", deb)
	}
	if info := run(t, "dpkg-deb", "-f", deb, "Depends"); strings.TrimSpace(info) != "fuse3" {
		t.Errorf("Depends: %q, want fuse3", info)
	}
	paths := debPaths(t, deb)
	for _, want := range []string{"/usr/bin/qcow2fs", "/sbin/mount.fuse.qcow2fs", "/sbin/mount.qcow2fs",
		"/usr/share/man/man1/qcow2fs.1.gz", "/usr/share/man/man8/mount.qcow2fs.8.gz",
		"/usr/share/bash-completion/completions/qcow2fs", "/usr/share/zsh/vendor-completions/_qcow2fs",
		"/lib/systemd/system/qcow2fs@.service", "/usr/share/doc/qcow2fs/examples/mnt-vm.mount"} {
		if !strings.Contains(" "+strings.Join(paths, " ")+" ", " "+want+" ") {
			t.Errorf("the package lacks %s", want)
		}
	}
	for _, p := range paths {
		setAside(t, p)
	}
	purged := false
	t.Cleanup(func() {
		if !purged {
			quietRun("dpkg", "--purge", "qcow2fs")
		}
	})
	run(t, "dpkg", "-i", deb)

	// Static: no ELF interpreter, so no C library to depend on.
	if f, err := elf.Open("/usr/bin/qcow2fs"); err != nil {
		t.Error(err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("/usr/bin/qcow2fs is dynamically linked (it has an ELF interpreter); the package declares no C library")
			}
		}
		f.Close()
	}
	if v := run(t, "/usr/bin/qcow2fs", "--version"); !strings.HasPrefix(v, "qcow2fs "+version+" ") {
		t.Errorf("qcow2fs --version: %q, want version %s", v, version)
	}
	// Man pages, found by man-db and rendered.
	if p := strings.TrimSpace(run(t, "man", "-w", "qcow2fs")); p != "/usr/share/man/man1/qcow2fs.1.gz" {
		t.Errorf("man -w qcow2fs: %q", p)
	}
	for _, name := range []string{"mount.qcow2fs", "mount.fuse.qcow2fs"} {
		if p := strings.TrimSpace(run(t, "man", "-w", "8", name)); !strings.HasPrefix(p, "/usr/share/man/man8/") {
			t.Errorf("man -w 8 %s: %q", name, p)
		}
	}
	page := run(t, "env", "LC_ALL=C", "MANWIDTH=100", "man", "-P", "cat", "qcow2fs")
	for _, want := range []string{"qcow2fs mount", "qcow2fs unmount", "--partitions", "--force-share", "EXIT STATUS"} {
		if !strings.Contains(page, want) {
			t.Errorf("man qcow2fs lacks %q", want)
		}
	}
	// bash completion: sourced directly and through bash-completion's loader.
	script := `source /usr/share/bash-completion/completions/qcow2fs && complete -p qcow2fs &&
COMP_WORDS=(qcow2fs unm); COMP_CWORD=1; _qcow2fs; echo "words: ${COMPREPLY[*]}"
COMP_WORDS=(qcow2fs mount --no-s); COMP_CWORD=2; _qcow2fs; echo "flags: ${COMPREPLY[*]}"`
	got := run(t, "bash", "-c", script)
	for _, want := range []string{"-F _qcow2fs qcow2fs", "words: unmount\n", "flags: --no-snapshots\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("bash completion: %q lacks %q", got, want)
		}
	}
	got = run(t, "bash", "-c", `source /usr/share/bash-completion/bash_completion; __load_completion qcow2fs && complete -p qcow2fs`)
	if !strings.Contains(got, "_qcow2fs") {
		t.Errorf("bash-completion does not load qcow2fs's completion: %q", got)
	}
	run(t, "zsh", "-n", "/usr/share/zsh/vendor-completions/_qcow2fs")

	// An fstab mount through the installed /sbin/mount.fuse.qcow2fs.
	if dst, err := os.Readlink("/sbin/mount.fuse.qcow2fs"); err != nil || dst != "/usr/bin/qcow2fs" {
		t.Fatalf("/sbin/mount.fuse.qcow2fs -> %q (%v)", dst, err)
	}
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "8M", "", "", "")
	qemuIO(t, img, k.Rand(0, 1<<20))
	oracle := qemuRawOf(t, img, filepath.Join(dir, "vm-oracle.raw"))
	mnt := mkdir(t, dir, "mnt")
	fstab := writeFstab(t, dir, img, mnt, "fuse.qcow2fs", "ro,nofail")
	fstabMount(t, fstab, mnt, img)
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(daemonPID(t, mnt)) + "/exe"); err != nil || exe != "/usr/bin/qcow2fs" {
		t.Errorf("the daemon runs %q (%v), want the installed /usr/bin/qcow2fs", exe, err)
	}
	compareFiles(t, filepath.Join(mnt, "vm.raw"), oracle)
	if r := execute("", "/usr/bin/qcow2fs", "unmount", mnt); r.Code != 0 {
		t.Fatalf("unmount: %s", r)
	}

	// Purge: nothing it installed is left.
	run(t, "dpkg", "--purge", "qcow2fs")
	purged = true
	for _, p := range append(paths, "/usr/share/doc/qcow2fs") {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after dpkg --purge (%v)", p, err)
		}
	}
	if r := execute("", "dpkg-query", "-W", "-f", "${Status}", "qcow2fs"); r.Code == 0 && strings.Contains(r.Stdout, " installed") {
		t.Errorf("dpkg still lists qcow2fs: %s", r.Stdout)
	}
}
