// Sources and Mode: narrowing the permission bits a mounted file shows to
// what every class of users could read and write directly in the files
// behind it.

package access

import "sync"

// Sources are the files whose bytes one mounted file shows: the image,
// its external data file and its whole backing chain (Read), and the files
// writes to it reach: the image and its data file (Write). Their
// attributes are taken when they are opened.
//
// Mode narrows the permission bits the mounted file would show (the image
// file's own mode) so that they grant nobody more than they could read
// and write directly: a class of users keeps read only if every member of
// it may reach and read every file in Read, write only if it also keeps
// read and may write every file in Write, and execute only with read.
// The owner class is judged for the one user it names; the group and
// other classes for every possible member at once, which takes generous
// bits in every class of every file (an owner or group member is not
// helped by the others' bits), so the result errs on the side of less.
type Sources struct {
	Read, Write []Object
	// Trusted are uids known to reach every file already: root, and the
	// user who opened them (the kernel checked that user at open time,
	// ACLs included, which Allows cannot see).
	Trusted []uint32

	mu    sync.Mutex
	users map[uint32]Principal
}

// Add records a file of the chain; write says it is written too.
func (s *Sources) Add(o Object, write bool) {
	s.Read = append(s.Read, o)
	if write {
		s.Write = append(s.Write, o)
	}
}

// Mode returns the permission bits (0777) of mode that may stay on a file
// owned by uid and group gid showing these sources.
func (s *Sources) Mode(uid, gid, mode uint32) uint32 {
	mode &= 0o777
	owner := s.ownerPerm(uid)
	group := s.classPerm(func(a Attr, want Perm) bool { return a.wholeGroup(gid, want) })
	other := s.classPerm(func(a Attr, want Perm) bool { return a.everyone(want) })
	return keep(mode, 6, owner) | keep(mode, 3, group) | keep(mode, 0, other)
}

// keep returns the bits of class shift in mode that allowed lets stay:
// execute goes with read.
func keep(mode uint32, shift uint, allowed Perm) uint32 {
	if allowed&Read != 0 {
		allowed |= Search
	}
	return mode & (uint32(allowed) << shift)
}

// classPerm is what a class whose members may do want on a file when
// may(attr, want) holds is allowed on every source.
func (s *Sources) classPerm(may func(Attr, Perm) bool) Perm {
	reach := func(o Object, want Perm) bool {
		for _, d := range o.Dirs {
			if !may(d.Attr, Search) {
				return false
			}
		}
		return may(o.Attr, want)
	}
	for _, o := range s.Read {
		if !reach(o, Read) {
			return 0
		}
	}
	for _, o := range s.Write {
		if !may(o.Attr, Write) {
			return Read
		}
	}
	return Read | Write
}

func (s *Sources) ownerPerm(uid uint32) Perm {
	for _, t := range s.Trusted {
		if t == uid {
			return Read | Write
		}
	}
	p := s.lookup(uid)
	for _, o := range s.Read {
		if p.CanOpen(o, Read) != nil {
			return 0
		}
	}
	for _, o := range s.Write {
		if !p.Allows(o.Attr, Write) {
			return Read
		}
	}
	return Read | Write
}

func (s *Sources) lookup(uid uint32) Principal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.users[uid]; ok {
		return p
	}
	if s.users == nil {
		s.users = map[uint32]Principal{}
	}
	p := Lookup(uid)
	s.users[uid] = p
	return p
}
