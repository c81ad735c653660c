// Package access answers one question the way the kernel would: could this
// user open that file? It looks at POSIX mode bits only (no capabilities
// but root's) on descriptors already open, plus search permission on every
// directory on the way to them. It does not evaluate ACLs: a file or
// directory that has one grants nobody but its owner and root anything
// here (an ACL may deny a named user what the mode bits allow). qcow2fs uses it to
// refuse files an image names that the image's owner could not open
// directly, and to narrow the permissions a mounted file shows to what
// every user granted them could read directly (see docs/SECURITY.md).
package access

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Perm is a set of permission bits of one class: Read, Write, Search.
type Perm uint32

const (
	Search Perm = 1 // execute, for a directory: look names up in it
	Write  Perm = 2
	Read   Perm = 4
)

// Attr is what a permission check needs of a file.
type Attr struct {
	Uid, Gid uint32
	Mode     uint32 // st_mode; only the permission bits (0777) count
	Dir      bool
	// ACL is set when the file has an access ACL beyond its mode bits:
	// then only its owner's bits are known to mean what they say.
	ACL bool
}

// AttrOf takes a file's attributes from its stat.
func AttrOf(st *syscall.Stat_t) Attr {
	return Attr{Uid: st.Uid, Gid: st.Gid, Mode: st.Mode & 0o777, Dir: st.Mode&syscall.S_IFMT == syscall.S_IFDIR}
}

// String shows the attributes as ls -l does: "-rw-r----- root:disk".
func (a Attr) String() string {
	const rwx = "rwxrwxrwx"
	b := []byte("----------")
	if a.Dir {
		b[0] = 'd'
	}
	for i := 0; i < 9; i++ {
		if a.Mode&(1<<(8-i)) != 0 {
			b[i+1] = rwx[i]
		}
	}
	if a.ACL {
		b = append(b, '+')
	}
	return fmt.Sprintf("%s %s:%s", b, userName(a.Uid), groupName(a.Gid))
}

// classBits returns the three bits of class shift (6 owner, 3 group, 0
// other).
func (a Attr) classBits(shift uint) Perm { return Perm(a.Mode>>shift) & 7 }

// everyone reports whether every user, whatever class they fall in, has
// want on the file: the owner, its group and the others all have it.
func (a Attr) everyone(want Perm) bool {
	if a.ACL {
		return false
	}
	return a.classBits(6)&want == want && a.classBits(3)&want == want && a.classBits(0)&want == want
}

// wholeGroup reports whether every member of group gid has want on the
// file, whatever other groups they are in and whether or not they own it.
func (a Attr) wholeGroup(gid uint32, want Perm) bool {
	if a.ACL {
		return false // named entries may deny some members
	}
	if a.everyone(want) {
		return true
	}
	return a.Gid == gid && a.classBits(6)&want == want && a.classBits(3)&want == want
}

// Principal is a user as the kernel checks them: a uid and every group
// (primary and supplementary).
type Principal struct {
	Uid  uint32
	Gids []uint32
	Name string // "" when the uid has no account
}

// Lookup returns the user with this uid and the groups they get at login,
// as NSS has them (accounts.go). A uid with no account gets no group at
// all: nothing is granted through a group we cannot name.
func Lookup(uid uint32) Principal {
	p := Principal{Uid: uid}
	a, ok := lookupUID(uid)
	if !ok {
		return p
	}
	p.Name = a.name
	p.Gids = loginGroups(a)
	return p
}

func (p Principal) String() string {
	if p.Name == "" {
		return fmt.Sprintf("uid %d", p.Uid)
	}
	return fmt.Sprintf("%s (uid %d)", p.Name, p.Uid)
}

// Allows reports whether p may do want on a file with attributes a under
// POSIX rules: root may do anything; otherwise the owner's bits apply to
// the owner, the group's bits to members of the file's group, the others'
// bits to everyone else (one class only: an owner is not helped by
// generous group or other bits). With an ACL only the owner's bits count.
func (p Principal) Allows(a Attr, want Perm) bool {
	if p.Uid == 0 {
		return true
	}
	switch {
	case a.Uid == p.Uid:
		return a.classBits(6)&want == want
	case a.ACL:
		return false
	case p.inGroup(a.Gid):
		return a.classBits(3)&want == want
	default:
		return a.classBits(0)&want == want
	}
}

func (p Principal) inGroup(gid uint32) bool {
	for _, g := range p.Gids {
		if g == gid {
			return true
		}
	}
	return false
}

// Dir is one directory on the way to a file.
type Dir struct {
	Path string
	Attr Attr
}

// Object is an open file as the kernel reaches it from the root: its
// attributes and those of every directory on its path, "/" first.
type Object struct {
	Path string
	Attr Attr
	Dirs []Dir
}

// Describe fstats f and stats every directory of the path the kernel
// says f has (/proc/self/fd), so that what is checked is what was opened,
// whatever symbolic links led there.
func Describe(f *os.File) (Object, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return Object{}, fmt.Errorf("fstat: %w", err)
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return Object{}, fmt.Errorf("where is it: %w", err)
	}
	o := Object{Path: path, Attr: AttrOf(&st)}
	if o.Attr.ACL, err = hasACL(func(dest []byte) (int, error) { return unix.Fgetxattr(int(f.Fd()), aclXattr, dest) }); err != nil {
		return Object{}, err
	}
	dirs, err := parents(path)
	if err != nil {
		return Object{}, err
	}
	for _, d := range dirs {
		var dst syscall.Stat_t
		if err := syscall.Stat(d, &dst); err != nil {
			return Object{}, fmt.Errorf("stat directory %s: %w", d, err)
		}
		a := AttrOf(&dst)
		if a.ACL, err = hasACL(func(dest []byte) (int, error) { return unix.Getxattr(d, aclXattr, dest) }); err != nil {
			return Object{}, fmt.Errorf("directory %s: %w", d, err)
		}
		o.Dirs = append(o.Dirs, Dir{Path: d, Attr: a})
	}
	return o, nil
}

// aclXattr holds a file's access ACL; Linux stores none for a file whose
// ACL is just its mode bits.
const aclXattr = "system.posix_acl_access"

// hasACL reports whether get (a getxattr of aclXattr) finds an ACL. A file
// system without ACLs has none; any other failure is an error, since it
// leaves the question open.
func hasACL(get func(dest []byte) (int, error)) (bool, error) {
	n, err := get(nil)
	switch {
	case err == nil:
		return n > 0, nil
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	}
	return false, fmt.Errorf("read its ACL: %w", err)
}

// parents lists the directories on the way to the absolute path p, "/"
// first. A path the kernel reports as deleted or not absolute (a file
// outside this mount namespace's tree) has no way to it.
func parents(p string) ([]string, error) {
	if len(p) == 0 || p[0] != '/' {
		return nil, fmt.Errorf("%q is not reachable by a path", p)
	}
	if len(p) > len(" (deleted)") && p[len(p)-len(" (deleted)"):] == " (deleted)" {
		if _, err := os.Lstat(p); err != nil {
			return nil, fmt.Errorf("%s was removed", p)
		}
	}
	dirs := []string{"/"}
	for i := 1; i < len(p); i++ {
		if p[i] == '/' {
			dirs = append(dirs, p[:i])
		}
	}
	return dirs, nil
}

// CanOpen returns nil when p may search every directory on the way to o
// and do want on o itself, and otherwise an error saying what stops them
// ("cannot search directory /root (drwx------ root:root)").
func (p Principal) CanOpen(o Object, want Perm) error {
	for _, d := range o.Dirs {
		if !p.Allows(d.Attr, Search) {
			if d.Attr.ACL && d.Attr.Uid != p.Uid {
				return fmt.Errorf("may not search directory %q (%s: it has an ACL, and qcow2fs trusts ACLs for nobody but the owner) on the way to it", d.Path, d.Attr)
			}
			return fmt.Errorf("cannot search directory %q (%s) on the way to it", d.Path, d.Attr)
		}
	}
	if !p.Allows(o.Attr, want) {
		if o.Attr.ACL && o.Attr.Uid != p.Uid {
			return fmt.Errorf("may not %s it (%s: it has an ACL, and qcow2fs trusts ACLs for nobody but the owner)", verb(want), o.Attr)
		}
		return fmt.Errorf("cannot %s it (%s)", verb(want), o.Attr)
	}
	return nil
}

func verb(want Perm) string {
	switch want {
	case Read:
		return "read"
	case Write:
		return "write"
	case Read | Write:
		return "read and write"
	}
	return fmt.Sprintf("open (%o)", want)
}

func userName(uid uint32) string {
	if a, ok := lookupUID(uid); ok {
		return a.name
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func groupName(gid uint32) string {
	if name, ok := groupNameOf(gid); ok {
		return name
	}
	return strconv.FormatUint(uint64(gid), 10)
}
