// Tests of who may enter a mount with AllowRoot, AllowOther or neither,
// running commands as another user through setpriv.

package fusefs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// asUser runs a shell command as uid:gid (setpriv, util-linux) and returns
// its combined output and whether it succeeded.
func asUser(t *testing.T, uid int, script string) (string, bool) {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(uid), "--clear-groups", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

// publicDir makes a directory every user can traverse (t.TempDir's are
// private to root), for mount points other users must reach.
func publicDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "qcow2fs-fusefs-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestAllowRoot: with AllowRoot, the mounter (pretended: uid 4242) and
// root get in, anyone else gets EACCES on every way in; with AllowOther
// everyone gets in; with neither, only the mounter (the kernel refuses the
// others before we see them).
func TestAllowRoot(t *testing.T) {
	testenv.RequireFUSE(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		testenv.Lacking(t, "setpriv (util-linux)")
	}
	dir := publicDir(t)
	path := filepath.Join(dir, "img.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
	os.Chmod(path, 0o644)
	old := mountOwner
	mountOwner = func() uint32 { return 4242 }
	t.Cleanup(func() { mountOwner = old })

	const probe = `ls %[1]s >/dev/null && stat %[1]s/img.raw >/dev/null && head -c 1 %[1]s/img.raw >/dev/null && stat -f %[1]s >/dev/null`
	for _, tc := range []struct {
		name            string
		opts            Options
		owner, stranger bool // expected access
	}{
		{"allow_root", Options{ReadOnly: true, AllowRoot: true}, true, false},
		{"allow_other", Options{ReadOnly: true, AllowOther: true}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			mnt := filepath.Join(dir, "mnt-"+tc.name)
			os.Mkdir(mnt, 0o755)
			srv, err := Mount(mnt, []*qcow2.Image{img}, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer unmount(t, srv)
			script := strings.ReplaceAll(probe, "%[1]s", mnt)
			if _, ok := asUser(t, 0, script); !ok {
				t.Errorf("root was refused")
			}
			if out, ok := asUser(t, 4242, script); ok != tc.owner {
				t.Errorf("mounter (uid 4242): access %v, want %v (%s)", ok, tc.owner, out)
			}
			out, ok := asUser(t, 4343, script)
			if ok != tc.stranger {
				t.Errorf("another user (uid 4343): access %v, want %v (%s)", ok, tc.stranger, out)
			}
			if !tc.stranger && !strings.Contains(out, "Permission denied") {
				t.Errorf("another user was refused without EACCES: %s", out)
			}
		})
	}
}
