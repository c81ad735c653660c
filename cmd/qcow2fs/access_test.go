// Unit tests of the access rule: name quoting, following symlink owners,
// and accessGuard refusing, trusting and applying link makers.

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/access"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

func TestQuoteName(t *testing.T) {
	if got := quoteName("/srv/a b.qcow2"); got != `"/srv/a b.qcow2"` {
		t.Errorf("quoteName = %s", got)
	}
	if got := quoteName("/x\n\x1b[2Jevil"); strings.ContainsAny(got, "\n\x1b") {
		t.Errorf("quoteName kept control characters: %q", got)
	}
	long := strings.Repeat("a", 5000)
	if got := quoteName(long); len(got) > maxNameInMessage+10 || !strings.HasSuffix(got, "...") {
		t.Errorf("quoteName of 5000 bytes: %d bytes", len(got))
	}
}

// TestSymlinkOwners follows a chain of links (relative and absolute) and
// stops at the file.
func TestSymlinkOwners(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l1 := filepath.Join(dir, "l1")
	l2 := filepath.Join(dir, "sub", "l2")
	os.Mkdir(filepath.Dir(l2), 0o755)
	if err := os.Symlink("../img.qcow2", l2); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(l2, l1); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(l2, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	got := symlinkOwners(l1)
	if len(got) != 2 || got[0] != (linkOwner{l1, uint32(os.Geteuid())}) || got[1] != (linkOwner{l2, 4242}) {
		t.Errorf("symlinkOwners = %+v", got)
	}
	if got := symlinkOwners(img); len(got) != 0 {
		t.Errorf("symlinkOwners of a file = %+v", got)
	}
}

// TestAccessGuard: the guard refuses a file for the first maker of the
// chain who could not open it (naming them, the file and the image), trusts
// root and the daemon's own user, and applies a link's maker only from
// linkDepth down.
func TestAccessGuard(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Lacking(t, "root (a root-owned file to check other users against)")
	}
	// t.TempDir's parent is private to root: a directory others may enter.
	dir, err := os.MkdirTemp("", "qcow2fs-guard-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(secret, 0o600)
	f, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	namer := func(path string, uid uint32) qcow2.Namer {
		return qcow2.Namer{Path: path, Stat: fakeInfo{uid}}
	}
	const stranger = 4242424 // no account: no groups either
	for _, tc := range []struct {
		name    string
		g       *accessGuard
		file    qcow2.OpenedFile
		refused []string
	}{
		{"root's image", &accessGuard{self: 0},
			qcow2.OpenedFile{Role: qcow2.RoleBacking, Path: secret, File: f, NamedBy: []qcow2.Namer{namer("/top", 0)}}, nil},
		{"the mounter's own image", &accessGuard{self: 1234},
			qcow2.OpenedFile{Role: qcow2.RoleBacking, Path: secret, File: f, NamedBy: []qcow2.Namer{namer("/top", 1234)}}, nil},
		{"another user's image", &accessGuard{self: 0},
			qcow2.OpenedFile{Role: qcow2.RoleBacking, Path: secret, File: f, NamedBy: []qcow2.Namer{namer("/top", stranger)}},
			[]string{`refusing "` + secret + `"`, "uid 4242424, owner of \"/top\"", "cannot read it (-rw------- root:root)"}},
		{"another user's image higher up", &accessGuard{self: 0},
			qcow2.OpenedFile{Role: qcow2.RoleBacking, Path: secret, File: f, NamedBy: []qcow2.Namer{namer("/top", stranger), namer("/mid", 0)}},
			[]string{"owner of \"/top\""}},
		{"data file to write", &accessGuard{self: 0},
			qcow2.OpenedFile{Role: qcow2.RoleDataFile, Path: secret, File: f, Write: true, NamedBy: []qcow2.Namer{namer("/top", stranger)}},
			[]string{"cannot read and write it"}},
		{"a stranger's link to the image", &accessGuard{self: 0, links: []linkOwner{{"/src/l", stranger}}},
			qcow2.OpenedFile{Role: qcow2.RoleImage, Path: "/src/l", File: f},
			[]string{`"/src/l": refusing the symbolic link made by uid 4242424: it leads to "` + secret + `", and uid 4242424 cannot read it`}},
		{"a stranger's link, above the depth", &accessGuard{self: 0, links: []linkOwner{{"/src/l", stranger}}, linkDepth: 1},
			qcow2.OpenedFile{Role: qcow2.RoleImage, Path: "/ovl", File: f}, nil},
		{"a stranger's link, from the depth", &accessGuard{self: 0, links: []linkOwner{{"/src/l", stranger}}, linkDepth: 1},
			qcow2.OpenedFile{Role: qcow2.RoleBacking, Path: "/src/l", File: f, NamedBy: []qcow2.Namer{namer("/ovl", 0)}},
			[]string{"who made the symbolic link \"/src/l\", cannot read it"}},
	} {
		g := tc.g
		g.users = map[uint32]access.Principal{}
		g.sources = &access.Sources{Trusted: []uint32{0, g.self}}
		err := g.check(tc.file)
		switch {
		case tc.refused == nil && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.refused != nil && err == nil:
			t.Errorf("%s: allowed, want refused", tc.name)
		}
		for _, w := range tc.refused {
			if err != nil && !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\n  does not say %s", tc.name, err, w)
			}
		}
		if len(g.sources.Read) != 1 || (len(g.sources.Write) == 1) != tc.file.Write {
			t.Errorf("%s: recorded %d read, %d written sources", tc.name, len(g.sources.Read), len(g.sources.Write))
		}
	}
}

// fakeInfo is the fstat of a naming image: only its owner matters.
type fakeInfo struct{ uid uint32 }

func (fakeInfo) Name() string       { return "img" }
func (fakeInfo) Size() int64        { return 0 }
func (fakeInfo) Mode() os.FileMode  { return 0o644 }
func (fakeInfo) ModTime() time.Time { return time.Time{} }
func (fakeInfo) IsDir() bool        { return false }
func (i fakeInfo) Sys() any         { return &syscall.Stat_t{Uid: i.uid} }
