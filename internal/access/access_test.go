// Unit tests of the access rule's primitives (Allows, CanOpen, Describe,
// parents, root lookups, Sources.Mode), with ACLs made by hand.

package access

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAllows(t *testing.T) {
	alice := Principal{Uid: 1000, Gids: []uint32{1000, 50}}
	for _, tc := range []struct {
		name string
		p    Principal
		a    Attr
		want Perm
		ok   bool
	}{
		{"owner reads 0600", alice, Attr{Uid: 1000, Gid: 1000, Mode: 0o600}, Read, true},
		{"owner writes 0400", alice, Attr{Uid: 1000, Gid: 1000, Mode: 0o400}, Write, false},
		{"owner not helped by other bits", alice, Attr{Uid: 1000, Gid: 1000, Mode: 0o044}, Read, false},
		{"supplementary group reads 0640", alice, Attr{Uid: 0, Gid: 50, Mode: 0o640}, Read, true},
		{"group member not helped by other bits", alice, Attr{Uid: 0, Gid: 50, Mode: 0o604}, Read, false},
		{"group member writes 0660", alice, Attr{Uid: 0, Gid: 50, Mode: 0o660}, Read | Write, true},
		{"group member writes 0640", alice, Attr{Uid: 0, Gid: 50, Mode: 0o640}, Read | Write, false},
		{"other reads 0644", alice, Attr{Uid: 0, Gid: 0, Mode: 0o644}, Read, true},
		{"other reads 0640", alice, Attr{Uid: 0, Gid: 0, Mode: 0o640}, Read, false},
		{"other searches 0711", alice, Attr{Uid: 0, Gid: 0, Mode: 0o711, Dir: true}, Search, true},
		{"other searches 0700", alice, Attr{Uid: 0, Gid: 0, Mode: 0o700, Dir: true}, Search, false},
		{"root reads 0000", Principal{Uid: 0}, Attr{Uid: 5, Gid: 5, Mode: 0}, Read | Write, true},
		{"no account, no groups", Principal{Uid: 4242}, Attr{Uid: 0, Gid: 0, Mode: 0o660}, Read, false},
		{"setuid bits do not count", alice, Attr{Uid: 0, Gid: 0, Mode: 0o4000}, Read, false},
		{"ACL: the owner's bits hold", alice, Attr{Uid: 1000, Gid: 0, Mode: 0o600, ACL: true}, Read | Write, true},
		{"ACL: other bits do not count", alice, Attr{Uid: 0, Gid: 0, Mode: 0o644, ACL: true}, Read, false},
		{"ACL: group bits do not count", alice, Attr{Uid: 0, Gid: 50, Mode: 0o640, ACL: true}, Read, false},
		{"ACL: root still may", Principal{Uid: 0}, Attr{Uid: 5, Gid: 5, Mode: 0, ACL: true}, Read, true},
	} {
		if got := tc.p.Allows(tc.a, tc.want); got != tc.ok {
			t.Errorf("%s: Allows = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestCanOpenNamesTheObstacle(t *testing.T) {
	bob := Principal{Uid: 1001, Gids: []uint32{1001}, Name: "bob"}
	o := Object{
		Path: "/root/img.raw",
		Attr: Attr{Uid: 0, Gid: 0, Mode: 0o644},
		Dirs: []Dir{{"/", Attr{Mode: 0o755, Dir: true}}, {"/root", Attr{Mode: 0o700, Dir: true}}},
	}
	err := bob.CanOpen(o, Read)
	if err == nil || !strings.Contains(err.Error(), `search directory "/root" (drwx------ `) {
		t.Errorf("CanOpen through a 0700 directory: %v", err)
	}
	o.Dirs[1].Attr.Mode = 0o711
	if err := bob.CanOpen(o, Read); err != nil {
		t.Errorf("CanOpen through a 0711 directory: %v", err)
	}
	err = bob.CanOpen(o, Read|Write)
	if err == nil || !strings.Contains(err.Error(), "cannot read and write it (-rw-r--r-- ") {
		t.Errorf("CanOpen for writing a 0644 root file: %v", err)
	}
}

func TestAttrString(t *testing.T) {
	a := Attr{Uid: 0, Gid: 0, Mode: 0o751, Dir: true}
	if got := a.String(); got != "drwxr-x--x root:root" {
		t.Errorf("String() = %q", got)
	}
	a = Attr{Uid: 4242424, Gid: 4242424, Mode: 0o640}
	if got := a.String(); got != "-rw-r----- 4242424:4242424" {
		t.Errorf("String() = %q", got)
	}
}

func TestParents(t *testing.T) {
	got, err := parents("/a/b/c.raw")
	if err != nil || !slices.Equal(got, []string{"/", "/a", "/a/b"}) {
		t.Errorf("parents = %v, %v", got, err)
	}
	if _, err := parents("anon_inode:[memfd]"); err == nil {
		t.Error("a descriptor with no path was given a way to it")
	}
	if _, err := parents("/nowhere/x (deleted)"); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Errorf("a removed file: %v", err)
	}
}

// Describe reports the file the descriptor holds, wherever a symbolic link
// pointed, with every directory up to it.
func TestDescribe(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "sub", "img.raw")
	if err := os.MkdirAll(filepath.Dir(real), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chmod(real, 0o640)
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(link)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o, err := Describe(f)
	if err != nil {
		t.Fatal(err)
	}
	if o.Path != real || o.Attr.Mode != 0o640 || o.Attr.Dir {
		t.Errorf("Describe = %+v, want %s mode 0640", o, real)
	}
	last := o.Dirs[len(o.Dirs)-1]
	if o.Dirs[0].Path != "/" || last.Path != filepath.Dir(real) || last.Attr.Mode != 0o750 || !last.Attr.Dir {
		t.Errorf("directories %+v", o.Dirs)
	}
}

func TestLookupRoot(t *testing.T) {
	p := Lookup(0)
	if p.Name != "root" || !slices.Contains(p.Gids, 0) {
		t.Errorf("Lookup(0) = %+v", p)
	}
	if p := Lookup(4242424); p.Name != "" || len(p.Gids) != 0 || p.String() != "uid 4242424" {
		t.Errorf("Lookup of a uid with no account = %+v", p)
	}
}

func TestSourcesMode(t *testing.T) {
	pub := []Dir{{"/", Attr{Mode: 0o755, Dir: true}}, {"/srv", Attr{Mode: 0o755, Dir: true}}}
	private := []Dir{{"/", Attr{Mode: 0o755, Dir: true}}, {"/root", Attr{Mode: 0o700, Dir: true}}}
	groupDir := []Dir{{"/", Attr{Mode: 0o755, Dir: true}}, {"/g", Attr{Gid: 50, Mode: 0o750, Dir: true}}}
	obj := func(uid, gid, mode uint32, dirs []Dir) Object {
		return Object{Path: "/x", Attr: Attr{Uid: uid, Gid: gid, Mode: mode}, Dirs: dirs}
	}
	alice := Principal{Uid: 1000, Gids: []uint32{1000}, Name: "alice"}
	for _, tc := range []struct {
		name           string
		read, write    []Object
		uid, gid, mode uint32
		want           uint32
	}{
		{"one public file keeps its mode", []Object{obj(0, 0, 0o644, pub)}, []Object{obj(0, 0, 0o644, pub)}, 0, 0, 0o644, 0o644},
		{"private directory: others lose read", []Object{obj(0, 0, 0o644, private)}, nil, 0, 0, 0o444, 0o400},
		{"private backing file: others lose read and write",
			[]Object{obj(0, 0, 0o666, pub), obj(0, 0, 0o600, pub)}, []Object{obj(0, 0, 0o666, pub)}, 0, 0, 0o666, 0o600},
		{"group backing file, same group: kept",
			[]Object{obj(0, 50, 0o664, pub), obj(0, 50, 0o640, pub)}, []Object{obj(0, 50, 0o664, pub)}, 0, 50, 0o664, 0o660},
		{"group backing file, other group: group loses it",
			[]Object{obj(0, 50, 0o660, pub), obj(0, 60, 0o640, pub)}, []Object{obj(0, 50, 0o660, pub)}, 0, 50, 0o660, 0o600},
		{"group-only directory: the group keeps read, others lose it",
			[]Object{obj(0, 50, 0o644, groupDir)}, nil, 0, 50, 0o644, 0o640},
		// Any member of the view's group or any other user may be in group
		// 70 too, which may not read that file.
		{"backing file negative for its group: group and others lose read",
			[]Object{obj(0, 0, 0o644, pub), obj(0, 70, 0o604, pub)}, nil, 0, 0, 0o644, 0o600},
		{"data file others may not write: others keep read only",
			[]Object{obj(0, 0, 0o666, pub), obj(0, 0, 0o644, pub)}, []Object{obj(0, 0, 0o666, pub), obj(0, 0, 0o644, pub)}, 0, 0, 0o666, 0o644},
		{"execute goes with read", []Object{obj(0, 0, 0o700, pub)}, nil, 0, 0, 0o755, 0o700},
		{"owner alice who cannot read a backing file loses everything",
			[]Object{obj(1000, 1000, 0o644, pub), obj(0, 0, 0o600, pub)}, nil, 1000, 1000, 0o644, 0o000},
		{"owner alice who may read it keeps her bits",
			[]Object{obj(1000, 1000, 0o600, pub), obj(1000, 1000, 0o400, pub)}, []Object{obj(1000, 1000, 0o600, pub)}, 1000, 1000, 0o600, 0o600},
		{"a trusted owner is not judged", []Object{obj(0, 0, 0o600, private)}, nil, 77, 0, 0o600, 0o600},
		{"a backing file with an ACL: only the owner keeps read",
			[]Object{obj(0, 50, 0o644, pub), {Path: "/acl", Attr: Attr{Gid: 50, Mode: 0o644, ACL: true}, Dirs: pub}}, nil, 0, 50, 0o644, 0o600},
	} {
		s := &Sources{Read: tc.read, Write: tc.write, Trusted: []uint32{0, 77}, users: map[uint32]Principal{1000: alice}}
		if got := s.Mode(tc.uid, tc.gid, tc.mode); got != tc.want {
			t.Errorf("%s: Mode(%d, %d, %04o) = %04o, want %04o", tc.name, tc.uid, tc.gid, tc.mode, got, tc.want)
		}
	}
}

// setACL gives path an access ACL: its mode bits, plus a named user entry
// (uid 4242, no permissions) and a mask, as setfacl -m u:4242:- would.
func setACL(t *testing.T, path string) {
	t.Helper()
	entry := func(tag, perm uint16, id uint32) []byte {
		return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, tag), perm), id)
	}
	const undefined = 0xffffffff
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	b = append(b, entry(0x01, 7, undefined)...)   // ACL_USER_OBJ rwx
	b = append(b, entry(0x02, 0, 4242)...)        // ACL_USER 4242 ---
	b = append(b, entry(0x04, 5, undefined)...)   // ACL_GROUP_OBJ r-x
	b = append(b, entry(0x10, 5, undefined)...)   // ACL_MASK r-x
	b = append(b, entry(0x20, 5, undefined)...)   // ACL_OTHER r-x
	if err := unix.Setxattr(path, "system.posix_acl_access", b, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Fatalf("the test directory's file system has no ACLs: %v", err)
		}
		t.Fatal(err)
	}
}

// TestDescribeSeesACLs: a file or directory with an ACL is marked, shows
// "+" like ls -l, and grants nobody but its owner (and root) anything.
func TestDescribeSeesACLs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "acl")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o, err := Describe(f)
	if err != nil || o.Attr.ACL || o.Dirs[len(o.Dirs)-1].Attr.ACL {
		t.Fatalf("without ACLs: %+v, %v", o, err)
	}
	setACL(t, file)
	setACL(t, dir)
	if o, err = Describe(f); err != nil {
		t.Fatal(err)
	}
	last := o.Dirs[len(o.Dirs)-1]
	if !o.Attr.ACL || !last.Attr.ACL || !strings.HasSuffix(strings.Fields(o.Attr.String())[0], "+") {
		t.Fatalf("ACLs not seen: file %+v (%s), directory %+v", o.Attr, o.Attr, last)
	}
	// Uid 4242 has no rights by its ACL entry, though the mode bits would
	// let it read; the directory says the same for searching.
	p := Principal{Uid: 4242}
	if err := p.CanOpen(Object{Attr: o.Attr}, Read); err == nil || !strings.Contains(err.Error(), "has an ACL") {
		t.Errorf("CanOpen of a file with an ACL: %v", err)
	}
	if err := p.CanOpen(Object{Attr: Attr{Mode: 0o644}, Dirs: []Dir{last}}, Read); err == nil || !strings.Contains(err.Error(), "search directory") {
		t.Errorf("CanOpen through a directory with an ACL: %v", err)
	}
}

// TestAccountsGetentAndFiles: the NSS answers (getent) and the /etc files
// (os/user, the fallback when getent is missing) agree on every account
// and group of the files; a uid or gid with no entry has no name either
// way.
func TestAccountsGetentAndFiles(t *testing.T) {
	if getentPath() == "" {
		t.Fatal("no getent on PATH: it is part of libc-bin, which every Debian system has")
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	var uids []uint32
	for _, l := range strings.Split(string(passwd), "\n") {
		if f := strings.Split(l, ":"); len(f) > 3 {
			if u, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				uids = append(uids, uint32(u))
			}
		}
	}
	uids = append(uids, 4242424)
	sorted := func(g []uint32) []uint32 { g = slices.Clone(g); slices.Sort(g); return g }
	saved := getentPath
	defer func() { getentPath = saved }()
	for _, uid := range uids {
		getentPath = saved
		nss, nssUser := Lookup(uid), userName(uid)
		nssGroup := groupName(uid) // a gid of the same number
		getentPath = func() string { return "" }
		files, filesUser, filesGroup := Lookup(uid), userName(uid), groupName(uid)
		if nss.Name != files.Name || !slices.Equal(sorted(nss.Gids), sorted(files.Gids)) || nssUser != filesUser || nssGroup != filesGroup {
			t.Errorf("uid %d: getent says %+v %q %q, the files %+v %q %q", uid, nss, nssUser, nssGroup, files, filesUser, filesGroup)
		}
	}
	getentPath = saved
	if p := Lookup(0); p.Name != "root" || !slices.Contains(p.Gids, 0) {
		t.Errorf("Lookup(0) through getent = %+v", p)
	}
	t.Logf("%d uids looked up both ways", len(uids))
}
