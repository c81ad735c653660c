// Accounts: a uid's name and login groups, a gid's name, the way the C
// library sees them (NSS: files, LDAP, SSSD, ...).
//
// qcow2fs is built without cgo (a static binary: no loader and C library
// start-up in each of the two processes a mount starts, and no dependence
// on the host's glibc). Go's os/user then reads /etc/passwd and /etc/group
// alone and would miss accounts and groups that come from a directory
// service, so getent(1) — part of libc-bin, always present on Debian —
// answers first, and os/user only where getent is missing. Lookups are
// rare: only for users other than root and the mounter, and in messages.

package access

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// getentPath is getent(1), looked for on first use (not at start-up: a
// mount starts two processes, and most never look an account up) on $PATH,
// then where Debian puts it (mount(8) may run us with a bare environment);
// "" when there is none. A variable so tests can take it away.
var getentPath = sync.OnceValue(func() string {
	if p, err := exec.LookPath("getent"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/getent"); err == nil {
		return "/usr/bin/getent"
	}
	return ""
})

// errNoGetent: use os/user instead.
var errNoGetent = errors.New("no getent")

// getent runs getent DB KEY... and returns its lines. A key with no entry
// gives no lines (exit 2) and no error.
func getent(db string, keys ...string) ([]string, error) {
	path := getentPath()
	if path == "" {
		return nil, errNoGetent
	}
	// An NSS back end that hangs (an unreachable LDAP server) must not
	// hang a mount.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{db}, keys...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return nil, nil // not found
	}
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(out.String(), "\n"), "\n"), nil
}

// account is what Lookup needs of a user.
type account struct {
	name string
	gid  uint32
}

// lookupUID returns the account of uid; ok is false when it has none.
func lookupUID(uid uint32) (a account, ok bool) {
	id := strconv.FormatUint(uint64(uid), 10)
	lines, err := getent("passwd", id)
	if err != nil {
		u, err := user.LookupId(id)
		if err != nil {
			return account{}, false
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return account{}, false
		}
		return account{name: u.Username, gid: uint32(gid)}, true
	}
	for _, l := range lines {
		// name:password:uid:gid:gecos:home:shell
		f := strings.Split(l, ":")
		if len(f) < 4 || f[2] != id {
			continue
		}
		gid, err := strconv.ParseUint(f[3], 10, 32)
		if err != nil {
			continue
		}
		return account{name: f[0], gid: uint32(gid)}, true
	}
	return account{}, false
}

// loginGroups returns the groups a user gets at login: the primary group
// and every supplementary one.
func loginGroups(a account) []uint32 {
	gids := []uint32{a.gid}
	add := func(g uint32) {
		if !slices.Contains(gids, g) {
			gids = append(gids, g)
		}
	}
	lines, err := getent("initgroups", a.name)
	if err != nil {
		// os/user: the name's memberships in /etc/group.
		u, err := user.Lookup(a.name)
		if err != nil {
			return gids
		}
		ids, _ := u.GroupIds()
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				add(uint32(g))
			}
		}
		return gids
	}
	// "name gid gid ...": the supplementary groups.
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != a.name {
			continue
		}
		for _, s := range f[1:] {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				add(uint32(g))
			}
		}
	}
	return gids
}

// groupNameOf returns the name of group gid; ok is false when it has none.
func groupNameOf(gid uint32) (string, bool) {
	id := strconv.FormatUint(uint64(gid), 10)
	lines, err := getent("group", id)
	if err != nil {
		g, err := user.LookupGroupId(id)
		if err != nil {
			return "", false
		}
		return g.Name, true
	}
	for _, l := range lines {
		// name:password:gid:members
		if f := strings.Split(l, ":"); len(f) >= 3 && f[2] == id {
			return f[0], true
		}
	}
	return "", false
}
