// Tests that the mount's directory is fixed: rm, mv, mkdir, create, links
// and mkfifo fail (EPERM, or EROFS read-only) and nothing changes.

package integration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestNamespaceOpsRefused: the mount's directory is fixed. rm, mv, mkdir,
// touch (create), ln, ln -s and mkfifo fail with EPERM on a read-write
// mount and EROFS on a read-only one; nothing vanishes or appears, not
// even until the next mount, and a loop device over vm.raw never sees its
// file "(deleted)".
func TestNamespaceOpsRefused(t *testing.T) {
	requireTools(t, "losetup")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "4M", "", "", "")
	run(t, "qemu-img", "snapshot", "-c", "S", img)
	want := []string{"vm.info", "vm.raw", "vm@S.raw"}

	for _, tc := range []struct {
		name  string
		flags []string
		errno syscall.Errno
	}{
		{"rw", nil, syscall.EPERM},
		{"ro", []string{"--ro"}, syscall.EROFS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := mkdir(t, dir, "mnt-"+tc.name)
			mountQcow2fs(t, mnt, tc.flags, img)
			raw := filepath.Join(mnt, "vm.raw")
			var losetupFlags []string
			if tc.name == "ro" {
				losetupFlags = []string{"-r"}
			}
			dev := loopAttach(t, raw, losetupFlags...)

			p := func(name string) string { return filepath.Join(mnt, name) }
			for _, op := range []struct {
				what string
				do   func() error
			}{
				{"rm vm.raw", func() error { return syscall.Unlink(raw) }},
				{"rm vm.info", func() error { return syscall.Unlink(p("vm.info")) }},
				{"rm vm@S.raw", func() error { return syscall.Unlink(p("vm@S.raw")) }},
				{"mv vm.raw other.raw", func() error { return syscall.Rename(raw, p("other.raw")) }},
				{"mv vm.info over vm.raw", func() error { return syscall.Rename(p("vm.info"), raw) }},
				{"mkdir", func() error { return syscall.Mkdir(p("d"), 0o755) }},
				{"touch new.raw", func() error {
					fd, err := syscall.Open(p("new.raw"), syscall.O_CREAT|syscall.O_WRONLY|syscall.O_EXCL, 0o644)
					if err == nil {
						syscall.Close(fd)
					}
					return err
				}},
				{"ln vm.raw", func() error { return syscall.Link(raw, p("hard.raw")) }},
				{"ln -s", func() error { return syscall.Symlink("vm.raw", p("sym.raw")) }},
				{"mkfifo", func() error { return syscall.Mknod(p("fifo"), syscall.S_IFIFO|0o644, 0) }},
			} {
				if err := op.do(); !errors.Is(err, tc.errno) {
					t.Errorf("%s in a %s mount: %v, want %v", op.what, tc.name, err, tc.errno)
				}
			}
			// rm(1) itself says so.
			if r := execute("", "rm", "-f", raw); r.Code == 0 || !strings.Contains(strings.ToLower(r.Stderr), tc.errno.Error()) {
				t.Errorf("rm -f vm.raw: %s; want a failure saying %q", r, tc.errno.Error())
			}

			if got := listDir(t, mnt); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("the mount lists %v after the refused changes, want %v", got, want)
			}
			if _, err := os.Stat(raw); err != nil {
				t.Errorf("stat vm.raw: %v", err)
			}
			if back := strings.TrimSpace(run(t, "losetup", "-l", "-n", "-O", "BACK-FILE", dev)); back != raw {
				t.Errorf("losetup -l shows %s backed by %q, want %q", dev, back, raw)
			}
			loopDetach(t, dev)
			unmountQcow2fs(t, mnt, img)
			// Nothing changed behind the refusals: a new mount shows the same.
			mountQcow2fs(t, mnt, tc.flags, img)
			if got := listDir(t, mnt); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("after remounting the mount lists %v, want %v", got, want)
			}
			unmountQcow2fs(t, mnt, img)
		})
	}
	qemuCheckClean(t, img)
}
