// WriteZeroes and Discard: zero flags (v3 zero clusters, extended-L2 zero
// subclusters) where possible, zero bytes only for partial clusters.

package qcow2

// WriteZeroes makes [off, off+n) read as zeros, with the format's zero flags
// (v3 zero clusters, extended-L2 zero subclusters) wherever it can, and zero
// bytes only for partial clusters (or v2 over a backing file).
func (img *Image) WriteZeroes(off, n int64) error { return img.zeroRange(off, n, false) }

// Discard deallocates [off, off+n); the range reads back as zeros (the zero
// flag hides a backing file where one would show through).
func (img *Image) Discard(off, n int64) error { return img.zeroRange(off, n, true) }

func (img *Image) zeroRange(off, n int64, discard bool) error {
	w := img.w
	if w == nil {
		return ErrReadOnly
	}
	if off < 0 || n < 0 || off > img.size || n > img.size-off {
		return ErrOutOfRange
	}
	if n == 0 {
		return nil
	}
	if err := w.begin(off, n); err != nil {
		return err
	}
	w.ioLock.RLock()
	defer w.ioLock.RUnlock()
	g := &img.s.g
	// One L2 table's reach at a time: a reach with no L2 table and no
	// backing file already reads as zeros (mkfs discards whole devices).
	reach := g.l2Entries << g.clusterBits
	for end := off + n; off < end; {
		chunk := min(end, (off/reach+1)*reach) - off
		img.s.mu.Lock()
		i := g.l1Index(g.clusterIndex(off))
		empty := img.s.backing == nil && (i >= int64(len(img.l1)) || img.l1[i]&l1EntryOffsetMask == 0)
		img.s.mu.Unlock()
		if !empty {
			var err error
			g.splitRange(off, chunk, func(pc piece) bool {
				err = w.zeroPiece(pc.cluster, pc.skip, pc.length)
				return err == nil
			})
			if err != nil {
				return err
			}
		}
		off += chunk
	}
	return nil
}

// zeroPiece zeroes [skip, skip+length) of guest cluster c.
func (w *writer) zeroPiece(c, skip, length int64) error {
	s := w.img.s
	g := &s.g
	hasBacking := s.backing != nil
	s.mu.Lock()
	w.waitInflight(c)
	if s.corrupt {
		s.mu.Unlock()
		return ErrCorrupt
	}
	e, err := w.img.lookup(c)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	full := skip == 0 && length == g.clusterSize
	if g.subclusters == 1 {
		k, err := e.kind(g, 0)
		if err != nil {
			s.mu.Unlock()
			return s.corruptf("%v", err)
		}
		if k == kindZero || k == kindUnallocated && !hasBacking {
			s.mu.Unlock()
			return nil // already reads as zeros
		}
		if full && (s.hdr.Version >= 3 || !hasBacking) {
			ne := l2Entry{}
			if hasBacking {
				ne.word = oflagZero
			}
			err := w.replaceEntry(c, e, ne)
			s.mu.Unlock()
			return err
		}
		s.mu.Unlock()
		return w.writePiece(w.zeroBuf[:length], c, skip)
	}

	// Extended L2.
	if full || !e.compressed() {
		sub := int64(1) << g.subclusterBits
		first := (skip + sub - 1) / sub // first whole subcluster
		last := (skip+length)/sub - 1   // last whole subcluster
		if full {
			ne := l2Entry{}
			if hasBacking {
				ne.bitmap = 0xffffffff << 32
			}
			if ne == e {
				s.mu.Unlock()
				return nil
			}
			err := w.replaceEntry(c, e, ne)
			s.mu.Unlock()
			return err
		}
		if first <= last {
			mask := uint64(1)<<(last+1) - uint64(1)<<first
			ne := e
			ne.bitmap &^= mask
			if hasBacking || w.hasHost(e) {
				ne.bitmap |= mask << 32
			}
			if ne != e {
				if err := w.setL2(c, ne); err != nil {
					s.mu.Unlock()
					return err
				}
			}
		}
		s.mu.Unlock()
		// Partial subclusters at the edges get zero bytes.
		if first > last {
			return w.writeZeroBytes(c, skip, length, e)
		}
		if head := first*sub - skip; head > 0 {
			if err := w.writeZeroBytes(c, skip, head, e); err != nil {
				return err
			}
		}
		if tail := skip + length - (last+1)*sub; tail > 0 {
			return w.writeZeroBytes(c, (last+1)*sub, tail, e)
		}
		return nil
	}
	s.mu.Unlock()
	return w.writePiece(w.zeroBuf[:length], c, skip)
}

// replaceEntry stores ne for guest cluster c in place of e and drops what e
// held (its host cluster, and its data in an external data file). Caller
// holds s.mu.
func (w *writer) replaceEntry(c int64, e, ne l2Entry) error {
	if err := w.setL2(c, ne); err != nil {
		return err
	}
	w.freeEntry(e)
	w.punchDataFile(c)
	return nil
}

// writeZeroBytes zeroes [skip, skip+length) of guest cluster c, a range
// holding no whole subcluster: it lies inside one subcluster or straddles
// two. Each part is left alone when its own subcluster already reads as
// zeros (the other one may hold data).
func (w *writer) writeZeroBytes(c, skip, length int64, e l2Entry) error {
	g := &w.img.s.g
	sub := int64(1) << g.subclusterBits
	for end := skip + length; skip < end; {
		n := min(end, (skip/sub+1)*sub) - skip
		zero := false
		if !e.compressed() {
			k, err := e.kind(g, int(skip>>g.subclusterBits))
			zero = err == nil && (k == kindZero || k == kindUnallocated && w.img.s.backing == nil)
		}
		if !zero {
			if err := w.writePiece(w.zeroBuf[:n], c, skip); err != nil {
				return err
			}
		}
		skip += n
	}
	return nil
}

// punchDataFile releases the space of guest cluster c in an external data
// file (data_file_raw keeps the data file a valid raw image: it must read
// zeros there too). Caller holds s.mu.
func (w *writer) punchDataFile(c int64) {
	s := w.img.s
	if s.dataF == s.f {
		return
	}
	_ = s.dataF.PunchHole(c<<s.g.clusterBits, s.g.clusterSize)
}
