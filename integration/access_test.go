// The threat model (docs/SECURITY.md): a user must never read or write,
// through a qcow2fs mount, anything they could not read or write directly.
// These tests run the forbidden access as a throwaway non-root user.

package integration

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"golang.org/x/sys/unix"
)

// readAs reads the first 4 KiB of file as u; writeAs overwrites them.
func readAs(u testUser, file string) result {
	return asUser(u, "dd", "if="+file, "of=/dev/null", "bs=4096", "count=1", "status=none")
}

func writeAs(u testUser, file string) result {
	return asUser(u, "dd", "if=/dev/zero", "of="+file, "bs=4096", "count=1", "conv=notrunc", "status=none")
}

// wantAccess checks that r (a readAs/writeAs of what) succeeded, or failed
// with EACCES, as wanted.
func wantAccess(t *testing.T, r result, u testUser, what string, allowed bool) {
	t.Helper()
	switch {
	case allowed && r.Code != 0:
		t.Errorf("%s: %s was refused, want allowed: %s", u, what, r)
	case !allowed && r.Code == 0:
		t.Errorf("%s: %s succeeded, want Permission denied", u, what)
	case !allowed && !strings.Contains(r.Stderr, "Permission denied"):
		t.Errorf("%s: %s failed, but not with Permission denied: %s", u, what, r)
	}
}

// wantAttr checks a file's owner, group and permission bits.
func wantAttr(t *testing.T, path string, uid, gid int, perm os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Errorf("stat: %v", err)
		return
	}
	sys := st.Sys().(*syscall.Stat_t)
	if int(sys.Uid) != uid || int(sys.Gid) != gid || st.Mode().Perm() != perm {
		t.Errorf("%s: %v %d:%d, want %v %d:%d", filepath.Base(path), st.Mode().Perm(), sys.Uid, sys.Gid, perm, uid, gid)
	}
}

// TestAllowOtherPermissions: with allow_other the files of a mount carry
// the owner, group and mode of the image file (write bits dropped for
// snapshots, info files and read-only mounts), and the kernel enforces
// them (default_permissions is implied): a root image of mode 0600 stays
// private, a 0660 image of a group is readable and writable by a member of
// that group (a supplementary group) and by nobody else.
func TestAllowOtherPermissions(t *testing.T) {
	requireEnv(t)
	dir := publicTestDir(t)
	grp, gid := newTestGroup(t, "m")
	member := newTestUser(t, "m", grp)
	stranger := newTestUser(t, "s")

	private := filepath.Join(dir, "private.qcow2")
	shared := filepath.Join(dir, "shared.qcow2")
	for _, img := range []string{private, shared} {
		qemuCreate(t, img, "4M", "", "", "")
		qemuIO(t, img, "write -P 0x5a 0 64k")
	}
	run(t, "qemu-img", "snapshot", "-c", "s1", shared)
	chmod(t, private, 0o600)
	chown(t, shared, 0, gid)
	chmod(t, shared, 0o660)
	mnt := mkdir(t, dir, "mnt")
	raw := func(name string) string { return filepath.Join(mnt, name) }

	t.Run("rw", func(t *testing.T) {
		mountQcow2fs(t, mnt, []string{"--allow-other"}, private, shared)
		wantAttr(t, raw("private.raw"), 0, 0, 0o600)
		wantAttr(t, raw("private.info"), 0, 0, 0o400)
		wantAttr(t, raw("shared.raw"), 0, gid, 0o660)
		wantAttr(t, raw("shared@s1.raw"), 0, gid, 0o440)
		wantAttr(t, raw("shared.info"), 0, gid, 0o440)

		for _, u := range []testUser{member, stranger} {
			wantAccess(t, readAs(u, raw("private.raw")), u, "read private.raw", false)
			wantAccess(t, writeAs(u, raw("private.raw")), u, "write private.raw", false)
			wantAccess(t, readAs(u, raw("private.info")), u, "read private.info", false)
		}
		wantAccess(t, readAs(stranger, raw("shared.raw")), stranger, "read shared.raw", false)
		wantAccess(t, writeAs(stranger, raw("shared.raw")), stranger, "write shared.raw", false)
		wantAccess(t, readAs(member, raw("shared.raw")), member, "read shared.raw", true)
		wantAccess(t, writeAs(member, raw("shared.raw")), member, "write shared.raw", true)
		wantAccess(t, readAs(member, raw("shared@s1.raw")), member, "read shared@s1.raw", true)
		wantAccess(t, writeAs(member, raw("shared@s1.raw")), member, "write shared@s1.raw", false)
		wantAccess(t, readAs(member, raw("shared.info")), member, "read shared.info", true)
		unmountQcow2fs(t, mnt, private, shared)
	})

	// Read-only with default_permissions asked for explicitly: the mode
	// loses its write bits, and stays the image's otherwise.
	t.Run("ro", func(t *testing.T) {
		mountQcow2fs(t, mnt, []string{"--ro", "--allow-other", "--default-permissions"}, private, shared)
		wantAttr(t, raw("private.raw"), 0, 0, 0o400)
		wantAttr(t, raw("shared.raw"), 0, gid, 0o440)
		for _, u := range []testUser{member, stranger} {
			wantAccess(t, readAs(u, raw("private.raw")), u, "read private.raw", false)
		}
		wantAccess(t, readAs(stranger, raw("shared.raw")), stranger, "read shared.raw", false)
		wantAccess(t, readAs(member, raw("shared.raw")), member, "read shared.raw", true)
		if r := writeAs(member, raw("shared.raw")); r.Code == 0 {
			t.Errorf("%s: write shared.raw on a read-only mount succeeded", member)
		}
		unmountQcow2fs(t, mnt, private, shared)
	})
}

// mountRefused runs `qcow2fs mount ARGS... MNT`, which must fail (exit 1)
// with a message holding every one of want, and leave nothing mounted.
func mountRefused(t *testing.T, mnt string, want []string, args ...string) {
	t.Helper()
	full := append(append([]string{"mount"}, args...), mnt)
	r := execute("", qcow2fsBin, full...)
	if _, ok := mounts.Find(mnt); ok {
		forceUnmount(t, mnt)
		t.Errorf("qcow2fs %s mounted, want it refused", strings.Join(full, " "))
		return
	}
	if r.Code != 1 {
		t.Errorf("qcow2fs %s: want exit 1: %s", strings.Join(full, " "), r)
		return
	}
	t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
	for _, w := range want {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("qcow2fs %s: the error does not name %q: %s", strings.Join(full, " "), w, r.Stderr)
		}
	}
	if n := strings.Count(strings.TrimSpace(r.Stderr), "\n"); n != 0 {
		t.Errorf("qcow2fs %s: error on %d lines, want one: %s", strings.Join(full, " "), n+1, r.Stderr)
	}
}

// fillFile writes n bytes of b to a new file with the given mode.
func fillFile(t *testing.T, path string, b byte, n int, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Repeat([]byte{b}, n), mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, path, mode)
}

// TestNamedFilesOwnerMayOpen: an image only gets the backing and data files
// its owner could open the same way. A user's image naming a root-only file
// as its raw backing file, a file in a directory the user cannot enter, a
// root image whose own backing file the user cannot read, or a root-owned
// data file the user may read but not write (for a read-write mount) is
// refused, naming the image, the file and the user; what the user may open
// is served. Root's own images and the strict --no-backing mode are not
// affected.
func TestNamedFilesOwnerMayOpen(t *testing.T) {
	requireEnv(t)
	dir := publicTestDir(t)
	u := newTestUser(t, "o")
	home := mkdir(t, dir, "home")
	chown(t, home, u.Uid, u.Gid)
	mnt := mkdir(t, dir, "mnt")
	userImage := func(name, opts, backing, fmt string) string {
		p := filepath.Join(home, name)
		qemuCreate(t, p, "4M", opts, backing, fmt)
		chown(t, p, u.Uid, u.Gid)
		return p
	}

	secret := filepath.Join(dir, "secret.raw") // root's, 0600
	fillFile(t, secret, 0x77, 1<<20, 0o600)
	hidden := mkdir(t, dir, "hidden") // root's, 0700, with a 0644 file
	chmod(t, hidden, 0o700)
	hiddenFile := filepath.Join(hidden, "open.raw")
	fillFile(t, hiddenFile, 0x66, 1<<20, 0o644)
	rootBase := filepath.Join(dir, "rootbase.qcow2") // root's, 0600
	qemuCreate(t, rootBase, "4M", "", "", "")
	qemuIO(t, rootBase, "write -P 0x55 0 64k")
	chmod(t, rootBase, 0o600)
	rootMid := filepath.Join(dir, "rootmid.qcow2") // root's, 0644, over rootbase
	qemuCreate(t, rootMid, "4M", "", rootBase, "qcow2")
	rootData := filepath.Join(dir, "rootdata.raw") // root's, 0644

	t.Run("raw backing file only root may read", func(t *testing.T) {
		img := userImage("evil.qcow2", "", secret, "raw")
		mountRefused(t, mnt, []string{img, secret, u.Name}, "--ro", "--allow-other", img)
		mountRefused(t, mnt, []string{img, secret, u.Name}, img) // read-write, no allow_other
	})
	t.Run("backing file in a directory the owner cannot enter", func(t *testing.T) {
		img := userImage("hidden.qcow2", "", hiddenFile, "raw")
		mountRefused(t, mnt, []string{img, hiddenFile, u.Name, hidden}, "--ro", "--allow-other", img)
	})
	t.Run("backing file whose ACL denies the owner", func(t *testing.T) {
		denied := filepath.Join(dir, "acl.raw") // 0644, but not for u
		fillFile(t, denied, 0x88, 1<<20, 0o644)
		denyByACL(t, denied, u.Uid)
		if r := readAs(u, denied); r.Code == 0 {
			t.Fatalf("the ACL does not keep %s out of %s: the test is wrong", u, denied)
		}
		img := userImage("acl.qcow2", "", denied, "raw")
		mountRefused(t, mnt, []string{img, denied, u.Name, "ACL"}, "--ro", "--allow-other", img)
	})
	t.Run("root image whose backing file the owner cannot read", func(t *testing.T) {
		img := userImage("top.qcow2", "", rootMid, "qcow2")
		mountRefused(t, mnt, []string{img, rootBase, u.Name}, "--ro", "--allow-other", img)
		// Root's own image of the same chain is root's business.
		mountQcow2fs(t, mnt, []string{"--ro", "--allow-other"}, rootMid)
		unmountQcow2fs(t, mnt, rootMid, rootBase)
	})
	t.Run("data file the owner may read but not write", func(t *testing.T) {
		img := filepath.Join(home, "data.qcow2")
		qemuCreate(t, img, "4M", "data_file="+rootData, "", "")
		qemuIO(t, img, "write -P 0x44 0 64k")
		chown(t, img, u.Uid, u.Gid)
		chmod(t, rootData, 0o644)
		before := testenv.HashTree(t, dir)
		mountRefused(t, mnt, []string{img, rootData, u.Name, "write"}, "--allow-other", img)
		mountRefused(t, mnt, []string{img, rootData, u.Name, "write"}, img)
		testenv.SameHashes(t, before, testenv.HashTree(t, dir))
		// Read-only, it is what the user could read anyway.
		mountQcow2fs(t, mnt, []string{"--ro", "--allow-other"}, img)
		compareFiles(t, filepath.Join(mnt, "data.raw"), qemuRawOf(t, img, filepath.Join(dir, "data-oracle.raw")))
		unmountQcow2fs(t, mnt, img, rootData)
	})
	t.Run("files the owner may open", func(t *testing.T) {
		own := filepath.Join(home, "own.raw")
		fillFile(t, own, 0x33, 1<<20, 0o600)
		chown(t, own, u.Uid, u.Gid)
		img := userImage("good.qcow2", "", own, "raw")
		chmod(t, img, 0o600)
		mountQcow2fs(t, mnt, []string{"--ro", "--allow-other"}, img)
		wantAttr(t, filepath.Join(mnt, "good.raw"), u.Uid, u.Gid, 0o400)
		if got := asUserOK(t, u, "od", "-An", "-tx1", "-N4", filepath.Join(mnt, "good.raw")); strings.TrimSpace(got) != "33 33 33 33" {
			t.Errorf("good.raw as its owner starts with %q, want the backing file's 33 33 33 33", got)
		}
		unmountQcow2fs(t, mnt, img, own)
	})
	t.Run("backing file readable through a supplementary group", func(t *testing.T) {
		// The daemon learns the owner's groups as a login would (NSS,
		// through getent): a member of the file's group may use it, the
		// image of someone outside the group is refused.
		grp, gid := newTestGroup(t, "b")
		member := newTestUser(t, "b", grp)
		groupFile := filepath.Join(dir, "group.raw") // root:grp, 0640
		fillFile(t, groupFile, 0x22, 1<<20, 0o640)
		chown(t, groupFile, 0, gid)
		memberHome := mkdir(t, dir, "member-home")
		chown(t, memberHome, member.Uid, member.Gid)
		img := filepath.Join(memberHome, "grp.qcow2")
		qemuCreate(t, img, "4M", "", groupFile, "raw")
		chown(t, img, member.Uid, member.Gid)
		mountQcow2fs(t, mnt, []string{"--ro", "--allow-other"}, img)
		if got := asUserOK(t, member, "od", "-An", "-tx1", "-N4", filepath.Join(mnt, "grp.raw")); strings.TrimSpace(got) != "22 22 22 22" {
			t.Errorf("grp.raw as its owner starts with %q, want the backing file's 22 22 22 22", got)
		}
		unmountQcow2fs(t, mnt, img, groupFile)
		outsider := userImage("outsider.qcow2", "", groupFile, "raw")
		mountRefused(t, mnt, []string{outsider, groupFile, u.Name}, "--ro", "--allow-other", outsider)
	})
	t.Run("no-backing stays strict", func(t *testing.T) {
		img := userImage("strict.qcow2", "", secret, "raw")
		mountQcow2fs(t, mnt, []string{"--ro", "--no-backing", "--allow-other"}, img)
		b, err := os.ReadFile(filepath.Join(mnt, "strict.raw"))
		if err != nil || bytes.IndexByte(b, 0x77) >= 0 {
			t.Errorf("--no-backing: read %d bytes, err %v; the root-only backing file must not show", len(b), err)
		}
		unmountQcow2fs(t, mnt, img)
	})
}

// TestSymlinkSourcesOwnerMayOpen: a directory source may hold symbolic
// links to images; a link made by one user to an image that user cannot
// read is refused (naming the link, its owner and the image), a link to an
// image its maker may read is served.
func TestSymlinkSourcesOwnerMayOpen(t *testing.T) {
	requireEnv(t)
	dir := publicTestDir(t)
	u := newTestUser(t, "l")
	src := mkdir(t, dir, "images") // like /tmp: everyone may add links
	chmod(t, src, 0o1777)
	mnt := mkdir(t, dir, "mnt")

	own := filepath.Join(src, "root.qcow2")
	qemuCreate(t, own, "4M", "", "", "")
	private := filepath.Join(dir, "private.qcow2")
	qemuCreate(t, private, "4M", "", "", "")
	chmod(t, private, 0o600)
	public := filepath.Join(dir, "public.qcow2")
	qemuCreate(t, public, "4M", "", "", "")
	chmod(t, public, 0o644)

	link := filepath.Join(src, "stolen.qcow2")
	asUserOK(t, u, "ln", "-s", private, link)
	mountRefused(t, mnt, []string{link, u.Name, private}, "--ro", "--allow-other", src)
	mountRefused(t, mnt, []string{link, u.Name, private}, "--ro", link)

	// Root's own link to the private image is fine.
	rootLink := filepath.Join(dir, "rootlink.qcow2")
	if err := os.Symlink(private, rootLink); err != nil {
		t.Fatal(err)
	}
	mountQcow2fs(t, mnt, []string{"--ro"}, rootLink)
	unmountQcow2fs(t, mnt, private)

	// The user's link to an image the user may read is served.
	asUserOK(t, u, "rm", link)
	asUserOK(t, u, "ln", "-s", public, link)
	mountQcow2fs(t, mnt, []string{"--ro", "--allow-other"}, src)
	if got := strings.Join(listDir(t, mnt), " "); got != "root.info root.raw stolen.info stolen.raw" {
		t.Errorf("mount lists %s", got)
	}
	unmountQcow2fs(t, mnt, src)
}

// denyByACL gives path an access ACL that leaves its mode bits as they
// are but gives uid no permission at all (setfacl -m u:UID:- path; the
// acl tools are not installed, the kernel takes the xattr directly).
func denyByACL(t *testing.T, path string, uid int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	mode := uint16(st.Mode().Perm())
	entry := func(tag, perm uint16, id uint32) []byte {
		b := binary.LittleEndian.AppendUint16(nil, tag)
		b = binary.LittleEndian.AppendUint16(b, perm)
		return binary.LittleEndian.AppendUint32(b, id)
	}
	const undefined = 0xffffffff
	b := binary.LittleEndian.AppendUint32(nil, 2)         // version
	b = append(b, entry(0x01, mode>>6&7, undefined)...)   // user::
	b = append(b, entry(0x02, 0, uint32(uid))...)         // user:UID:---
	b = append(b, entry(0x04, mode>>3&7, undefined)...)   // group::
	b = append(b, entry(0x10, mode>>3&7|4, undefined)...) // mask::
	b = append(b, entry(0x20, mode&7, undefined)...)      // other::
	if err := unix.Setxattr(path, "system.posix_acl_access", b, 0); err != nil {
		t.Fatalf("set an ACL on %s: %v", path, err)
	}
}
