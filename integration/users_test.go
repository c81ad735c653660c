// Throwaway user accounts and groups for the tests of what another user may
// do through a mount, and running commands as them.

package integration

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testUser is a throwaway non-root account a test creates (and removes),
// to check what another user may do through a mount.
type testUser struct {
	Name     string
	Uid, Gid int // Gid: the user's own (primary) group
}

func (u testUser) String() string { return fmt.Sprintf("%s (uid %d)", u.Name, u.Uid) }

// retryAccounts runs a useradd/groupadd/usermod/userdel command, retrying
// while another process holds the lock on /etc/passwd or /etc/group (other
// tests on this machine create accounts too).
func retryAccounts(name string, args ...string) result {
	var r result
	for i := 0; i < 50; i++ {
		r = execute("", name, args...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "lock") {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

// newTestGroup creates a group named after the run and tag, removed after
// the test; it returns the group's name and gid.
func newTestGroup(t *testing.T, tag string) (string, int) {
	t.Helper()
	requireTools(t, "groupadd", "groupdel")
	name := fmt.Sprintf("q2g%d%s", os.Getpid(), tag)
	if r := retryAccounts("groupadd", name); r.Code != 0 {
		t.Fatalf("groupadd %s: %s", name, r)
	}
	t.Cleanup(func() {
		if r := retryAccounts("groupdel", name); r.Code != 0 {
			t.Errorf("cleanup: groupdel %s: %s", name, r)
		}
	})
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	return name, gid
}

// newTestUser creates an account with its own group and no home directory,
// member of the supplementary groups given; it is removed after the test.
func newTestUser(t *testing.T, tag string, groups ...string) testUser {
	t.Helper()
	requireTools(t, "useradd", "userdel", "setpriv")
	name := fmt.Sprintf("q2u%d%s", os.Getpid(), tag)
	args := []string{"--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"}
	if len(groups) > 0 {
		args = append(args, "--groups", strings.Join(groups, ","))
	}
	if r := retryAccounts("useradd", append(args, name)...); r.Code != 0 {
		t.Fatalf("useradd %s: %s", name, r)
	}
	t.Cleanup(func() {
		// Its files in the test directories are removed with them.
		if r := retryAccounts("userdel", name); r.Code != 0 {
			t.Errorf("cleanup: userdel %s: %s", name, r)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return testUser{Name: name, Uid: uid, Gid: gid}
}

// asUser runs a command as u, with u's groups from /etc/group (as a login
// would set them).
//
// QCOW2FS_URING is not passed on: a plain user's mount goes through
// fusermount3, which keeps the /dev/fuse descriptor FUSE over io_uring
// needs, so the rootless route is always the classic transport (make
// test-uring forces io_uring on the root mounts only).
func asUser(u testUser, name string, args ...string) result {
	full := append([]string{"--reuid=" + strconv.Itoa(u.Uid), "--regid=" + strconv.Itoa(u.Gid), "--init-groups", "--",
		"env", "-u", "QCOW2FS_URING", name}, args...)
	return execute("/", "setpriv", full...)
}

// asUserOK runs a command as u that must succeed and returns its stdout.
func asUserOK(t *testing.T, u testUser, name string, args ...string) string {
	t.Helper()
	r := asUser(u, name, args...)
	if r.Code != 0 {
		t.Fatalf("as %s: %s %s: %s", u, name, strings.Join(args, " "), r)
	}
	return r.Stdout
}

// publicTestDir makes a directory every user may enter (the run's own
// root, like every test directory, is private to root). Its name carries
// the run's prefix, so a dead run's leftovers are swept like the others.
func publicTestDir(t *testing.T) string {
	t.Helper()
	requireEnv(t)
	dir, err := os.MkdirTemp(os.TempDir(), fmt.Sprintf("%s%d-public-", rootPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sweepRoot(dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return dir
}

// chown sets path's owner and group (root's test files handed to a user).
func chown(t *testing.T, path string, uid, gid int) {
	t.Helper()
	if err := os.Lchown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// chmod sets path's mode.
func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
