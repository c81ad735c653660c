// The access rule of docs/SECURITY.md for the files a mount opens: an
// image may only make qcow2fs open what its owner could open the same way
// (read, or read and write), and so for every image above it in the
// chain and for whoever made a symbolic link that leads to it. The qcow2
// package hands every file it opens to accessGuard.check (through
// OpenOptions.CheckFile) before reading or locking it; the descriptor,
// not the path, is what is checked, so a name swapped meanwhile changes
// nothing.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/qcow2fs/qcow2fs/internal/access"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// accessGuard checks the files of one image of a mount (its chain, its
// data files) and records them for the permissions its files show.
type accessGuard struct {
	// self is the daemon's user: the kernel checked its own opens
	// already, ACLs included.
	self uint32
	// links are the symbolic links that lead to the image, with their
	// makers; they must be able to open every file at least linkDepth
	// images down (1 for an overlay, whose evidence is the source).
	links     []linkOwner
	linkDepth int
	sources   *access.Sources
	users     map[uint32]access.Principal
}

// linkOwner is a symbolic link and the user who made it.
type linkOwner struct {
	path string
	uid  uint32
}

// newAccessGuard makes the guard of the image the mount names as source
// (a symbolic link's maker counts from linkDepth images down).
func newAccessGuard(source string, linkDepth int) *accessGuard {
	self := uint32(os.Geteuid())
	return &accessGuard{
		self:      self,
		links:     symlinkOwners(source),
		linkDepth: linkDepth,
		sources:   &access.Sources{Trusted: []uint32{0, self}},
		users:     map[uint32]access.Principal{},
	}
}

// symlinkOwners follows path while it is a symbolic link and returns each
// link with its owner. Links in the directories above are not followed:
// the source's own name is what a directory scan or an fstab line picks.
func symlinkOwners(path string) []linkOwner {
	var out []linkOwner
	for hops := 0; hops < 40; hops++ {
		st, err := os.Lstat(path)
		if err != nil || st.Mode()&os.ModeSymlink == 0 {
			break // not a link (any more); the open reports what is wrong
		}
		out = append(out, linkOwner{path: path, uid: st.Sys().(*syscall.Stat_t).Uid})
		target, err := os.Readlink(path)
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = target
	}
	return out
}

func (g *accessGuard) trusted(uid uint32) bool { return uid == 0 || uid == g.self }

func (g *accessGuard) lookup(uid uint32) access.Principal {
	p, ok := g.users[uid]
	if !ok {
		p = access.Lookup(uid)
		g.users[uid] = p
	}
	return p
}

// check is the qcow2.OpenOptions.CheckFile of the image: it refuses f
// when someone who made the chain lead to it could not open it the same
// way themselves.
func (g *accessGuard) check(f qcow2.OpenedFile) error {
	obj, err := access.Describe(f.File)
	if err != nil {
		return fmt.Errorf("refusing %s: %v", quoteName(f.Path), err)
	}
	g.sources.Add(obj, f.Write)
	want := access.Read
	if f.Write {
		want |= access.Write
	}
	// The image that names the file first, then those above it.
	for i := len(f.NamedBy) - 1; i >= 0; i-- {
		n := f.NamedBy[i]
		st, ok := statOf(n.Stat)
		if !ok {
			return fmt.Errorf("refusing %s: the owner of %s is unknown", quoteName(f.Path), quoteName(n.Path))
		}
		if g.trusted(st.Uid) {
			continue
		}
		p := g.lookup(st.Uid)
		if err := p.CanOpen(obj, want); err != nil {
			return fmt.Errorf("refusing %s: %s, owner of %s, %v", quoteName(f.Path), p, quoteName(n.Path), err)
		}
	}
	if len(f.NamedBy) < g.linkDepth {
		return nil
	}
	for _, l := range g.links {
		if g.trusted(l.uid) {
			continue
		}
		p := g.lookup(l.uid)
		if err := p.CanOpen(obj, want); err != nil {
			if f.Role == qcow2.RoleImage {
				return fmt.Errorf("%s: refusing the symbolic link made by %s: it leads to %s, and %s %v",
					quoteName(l.path), p, quoteName(obj.Path), shortName(p), err)
			}
			return fmt.Errorf("refusing %s: %s, who made the symbolic link %s, %v", quoteName(f.Path), p, quoteName(l.path), err)
		}
	}
	return nil
}

func statOf(fi os.FileInfo) (*syscall.Stat_t, bool) {
	if fi == nil {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return st, ok
}

// shortName is how a sentence refers to p again: "bob", or "uid 1234".
func shortName(p access.Principal) string {
	if p.Name != "" {
		return p.Name
	}
	return "uid " + strconv.FormatUint(uint64(p.Uid), 10)
}

// maxNameInMessage bounds a file name (which may come from an image, or
// from whoever may create files in a directory source) in a message.
const maxNameInMessage = 256

// quoteName escapes a file name for a message, cut to a readable length:
// a name is an image's (or another user's) to choose, and must not carry
// control characters or a screenful of text to a terminal or a log.
func quoteName(s string) string {
	if len(s) > maxNameInMessage {
		return strconv.Quote(s[:maxNameInMessage]) + "..."
	}
	return strconv.Quote(s)
}
