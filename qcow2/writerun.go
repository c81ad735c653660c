// writeRun, the write path of convert: a run of fresh whole clusters
// allocated together and written with one pwrite per contiguous host run.

package qcow2

// writeRun writes p at guest offset off the way convert fills a new
// image: when the range is whole clusters of which none holds a host
// cluster yet (unallocated, or zero with nothing preallocated), all their
// data clusters are allocated first, so they are contiguous on the host
// wherever the free space is, and each contiguous host run is written
// with a single pwrite; then the L2 entries are set. WriteAt instead
// allocates and writes one cluster at a time (a 64 KiB pwrite each), which
// in a 1 MiB copy costs sixteen system calls and lock round trips where
// one does. Any other range (partial clusters, clusters already allocated
// or compressed) goes through WriteAt.
//
// The ordering rules are those of writePiece: the clusters are claimed in
// inflight while their data is written outside the lock, and the L2
// entries are set only after, with unsyncedData raised so that they reach
// the disk behind a barrier.
func (img *Image) writeRun(p []byte, off int64) error {
	w := img.w
	if w == nil {
		return ErrReadOnly
	}
	g := &img.s.g
	n := int64(len(p))
	if n == 0 || off < 0 || off&(g.clusterSize-1) != 0 || n&(g.clusterSize-1) != 0 ||
		off > img.size || n > img.size-off {
		_, err := img.WriteAt(p, off)
		return err
	}
	done, err := img.tryWriteRun(p, off)
	if done || err != nil {
		return err
	}
	_, err = img.WriteAt(p, off)
	return err
}

// tryWriteRun is writeRun's fast path; done is false (and nothing was
// written) when a cluster of the range already has a host cluster or is
// compressed.
func (img *Image) tryWriteRun(p []byte, off int64) (done bool, err error) {
	w := img.w
	s := img.s
	g := &s.g
	cs := g.clusterSize
	if err := w.begin(off, int64(len(p))); err != nil {
		return false, err
	}
	w.ioLock.RLock()
	defer w.ioLock.RUnlock()
	first, count := off>>g.clusterBits, int64(len(p))>>g.clusterBits

	s.mu.Lock()
	// Wait until no cluster of the run is being allocated; waiting drops
	// the lock, so look again until a whole pass waited for nothing.
	for again := true; again; {
		again = false
		for c := first; c < first+count; c++ {
			if w.inflight[c] != nil {
				w.waitInflight(c)
				again = true
			}
		}
	}
	if s.corrupt {
		s.mu.Unlock()
		return false, ErrCorrupt
	}
	for c := first; c < first+count; c++ {
		e, err := img.lookup(c)
		if err != nil {
			s.mu.Unlock()
			return false, err
		}
		if e.compressed() || w.hasHost(e) {
			s.mu.Unlock()
			return false, nil
		}
	}
	// Claim the run: one channel for all its clusters, closed once.
	ch := make(chan struct{})
	for c := first; c < first+count; c++ {
		w.inflight[c] = ch
	}
	endRun := func() {
		for c := first; c < first+count; c++ {
			delete(w.inflight, c)
		}
		close(ch)
	}
	for c := first; c < first+count; c++ {
		w.waitInPlace(c) // none expected: the clusters have no host
	}
	hosts := make([]int64, 0, count)
	for c := first; c < first+count; c++ {
		h, _, err := w.allocDataCluster(c)
		if err != nil {
			for _, h := range hosts {
				w.releaseDataCluster(h)
			}
			endRun()
			s.mu.Unlock()
			return false, err
		}
		hosts = append(hosts, h)
	}
	s.mu.Unlock()

	var werr error
	for i := 0; i < len(hosts) && werr == nil; {
		j := i + 1
		for j < len(hosts) && hosts[j] == hosts[j-1]+cs {
			j++
		}
		werr = w.pwriteData(p[int64(i)*cs:int64(j)*cs], hosts[i])
		i = j
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	defer endRun()
	if werr != nil {
		for _, h := range hosts {
			w.releaseDataCluster(h)
		}
		return false, werr
	}
	// The new mappings may reach the disk only after this data has.
	w.unsyncedData = true
	var bitmap uint64
	if g.subclusters > 1 {
		bitmap = uint64(1)<<g.subclusters - 1 // every subcluster allocated
	}
	for i, h := range hosts {
		if err := w.setL2(first+int64(i), l2Entry{word: uint64(h) | oflagCopied, bitmap: bitmap}); err != nil {
			return true, err
		}
	}
	return true, nil
}
