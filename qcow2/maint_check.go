// Consistency check and repair, modelled on `qemu-img check`: every
// reference the metadata holds is counted per host cluster (header, L1 and
// L2 tables of the active state and of every snapshot, data and compressed
// clusters, snapshot table, refcount structure, bitmaps) and compared with
// the stored refcounts; then the COPIED flags of the active tables are
// checked against the refcounts.

package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// CheckOptions controls Check.
type CheckOptions struct {
	// Repair is "" (only check), "leaks" (lower refcounts that are too
	// high) or "all" (also raise refcounts that are too low, rebuild a
	// broken refcount structure, fix COPIED flags).
	Repair string
	// ForceShare checks without taking image locks (read-only check only).
	ForceShare bool
	// Progress, if set, is called now and then with work done and total.
	Progress func(done, total int64)

	// noExternalFiles opens no backing or data file the image names
	// (fuzzing: an image must never lead to other host files).
	noExternalFiles bool
}

// CheckResult is what Check found, with the JSON names of
// `qemu-img check --output=json`.
type CheckResult struct {
	Filename           string   `json:"filename"`
	Format             string   `json:"format"`
	CheckErrors        int      `json:"check-errors"`
	Corruptions        int      `json:"corruptions,omitempty"`
	Leaks              int      `json:"leaks,omitempty"`
	CorruptionsFixed   int      `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int      `json:"leaks-fixed,omitempty"`
	ImageEndOffset     int64    `json:"image-end-offset,omitempty"`
	TotalClusters      int64    `json:"total-clusters,omitempty"`
	AllocatedClusters  int64    `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64    `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64    `json:"compressed-clusters,omitempty"`
	Messages           []string `json:"-"` // what qemu-img prints on stderr, one line each
}

const maxCheckMessages = 10000

// Reserved bits of L1 entries and standard L2 cluster descriptors (QEMU's
// L1E_RESERVED_MASK, L2E_STD_RESERVED_MASK).
const (
	l1EntryReservedMask = 0x7f000000000001ff
	l2EntryReservedMask = 0x3f000000000001fe
)

// ExitCode is qemu-img check's exit status for this result: 0 clean, 1 the
// check could not complete (check errors), 2 corruptions, 3 leaks only.
// (An error from Check itself also means 1.)
func (r *CheckResult) ExitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// Check checks the image at path and, with o.Repair, repairs it. A returned
// error means the check could not run (qemu-img check's exit code 1); the
// result says what was found (corruptions: exit code 2, leaks only: 3).
// After a repair the image is checked again and the result is that second
// check's, with the fixed counts of the first.
func Check(path string, o CheckOptions) (*CheckResult, error) {
	var fix checkFix
	switch o.Repair {
	case "":
	case "leaks":
		fix = fixLeaks
	case "all":
		fix = fixLeaks | fixErrors
	default:
		return nil, fmt.Errorf("%s: unknown repair mode %q (leaks or all)", path, o.Repair)
	}
	if fix != 0 && o.ForceShare {
		return nil, fmt.Errorf("%s: force-share is only for a read-only check, not with repair", path)
	}
	img, err := Open(path, OpenOptions{ReadOnly: fix == 0, ForceShare: o.ForceShare, repair: fix != 0,
		NoBacking: o.noExternalFiles, NoDataFile: o.noExternalFiles})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	s := img.s
	s.mu.Lock()
	defer s.mu.Unlock()
	progress := o.Progress

	// Bitmap metadata QEMU refuses when it opens the image: the check
	// cannot run (qemu-img check: "Could not open", exit code 1).
	if _, err := s.loadBitmaps(); err != nil {
		return nil, nameFile(s.path, err)
	}
	if fix != 0 {
		// Unknown autoclear bits go before anything is written (the
		// refcounts of a dirty image are what is being checked: no
		// rebuild here).
		if err := img.w.prepareKeepBitmaps(false); err != nil {
			return nil, nameFile(s.path, err)
		}
	}
	ck := newChecker(img, progress)
	if err := ck.run(fix); err != nil {
		return nil, checkError(s.path, err)
	}
	res := ck.res
	if fix == 0 || res.Corruptions+res.Leaks == 0 {
		return res, nameFile(s.path, ck.finishRepair(fix))
	}
	// Double-check the repaired image.
	c2 := newChecker(img, progress)
	if err := c2.run(0); err != nil {
		return nil, checkError(s.path, err)
	}
	final := c2.res
	final.CorruptionsFixed = max(0, res.Corruptions-final.Corruptions)
	final.LeaksFixed = max(0, res.Leaks-final.Leaks)
	final.Messages = append(res.Messages, final.Messages...)
	c2.res = final
	return final, nameFile(s.path, c2.finishRepair(fix))
}

// checkError names the file in an error that ended a check pass.
func checkError(path string, err error) error {
	var cf *checkFailed
	if errors.As(err, &cf) {
		err = fmt.Errorf("Check failed: %w", err)
	}
	return nameFile(path, err)
}

type checkFix int

const (
	fixLeaks checkFix = 1 << iota
	fixErrors
)

// checker holds the state of one check pass: the reference walker's
// counts, compared with the stored refcount structure. Caller holds s.mu.
type checker struct {
	refWalker
	img *Image

	// The stored refcount structure, read from the file (the walker's
	// table holds its entries).
	order    uint32
	perBlock int64
	blocks   map[uint64][]byte
	eof      int64 // file length when the structure was loaded

	fixes []refFix
}

type refFix struct {
	cl int64
	rc uint64
}

func newChecker(img *Image, progress func(done, total int64)) *checker {
	s := img.s
	c := &checker{refWalker: newRefWalker(s, progress), img: img}
	c.order = s.hdr.RefcountOrder
	c.perBlock = c.cs * 8 >> c.order
	return c
}

func (ck *checker) loadRefStructure() error {
	s := ck.s
	raw := make([]byte, int64(s.hdr.RefcountTableClusters)*ck.cs)
	if err := preadFull(s.f, raw, int64(s.hdr.RefcountTableOffset)); err != nil {
		return fmt.Errorf("%s: read refcount table: %w", s.path, err)
	}
	ck.table = make([]uint64, len(raw)/8)
	for i := range ck.table {
		ck.table[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	ck.blocks = map[uint64][]byte{}
	// A repair may have grown the file since the walk began.
	eof, err := s.fileSize()
	if err != nil {
		return err
	}
	ck.eof = eof
	return nil
}

// storedRefcount is the refcount the image records for cluster cl. The
// block is read as QEMU reads it: zeros past the end of the file, an error
// past the largest offset QEMU reads at.
func (ck *checker) storedRefcount(cl int64) (uint64, error) {
	bi := cl / ck.perBlock
	if bi >= int64(len(ck.table)) {
		return 0, nil
	}
	off := ck.table[bi] & refTableOffsetMask
	if off == 0 {
		return 0, nil
	}
	if off&uint64(ck.cs-1) != 0 {
		return 0, fmt.Errorf("refblock offset %#x unaligned (reftable index %#x)", off, bi)
	}
	if off >= uint64(ck.eof) && off <= qemuMaxLength-uint64(ck.cs) {
		return 0, nil // all zeros: no need to read (or to hold) it
	}
	blk := ck.blocks[off]
	if blk == nil {
		// A few blocks stay cached; past that, a buffer is reused (the
		// table may name a different block for every lookup).
		if len(ck.blocks) >= max(4, checkBlockCacheBytes/int(ck.cs)) {
			for k, b := range ck.blocks {
				delete(ck.blocks, k)
				blk = b
				break
			}
		} else {
			blk = make([]byte, ck.cs)
		}
		if err := readMeta(ck.s.f, blk, off); err != nil {
			return 0, err
		}
		ck.blocks[off] = blk
	}
	return getRefcountEntry(blk, cl%ck.perBlock, ck.order), nil
}

// checkBlockCacheBytes bounds the refcount blocks a check keeps.
const checkBlockCacheBytes = 8 << 20

// run is one full pass: count, compare (with fixes), COPIED flags.
func (ck *checker) run(fix checkFix) error {
	s := ck.s
	fileLen, err := s.fileSize()
	if err != nil {
		return err
	}
	ck.setFileLen(fileLen)
	ck.res.TotalClusters = (int64(s.hdr.Size) + ck.cs - 1) >> ck.bits
	ck.total = int64(s.hdr.L1Size) + ck.nb/65536 + 1
	for _, sn := range s.snaps {
		ck.total += int64(sn.L1Size)
	}
	if err := ck.loadRefStructure(); err != nil {
		return err
	}
	if err := ck.countAll(); err != nil {
		return err
	}
	highest := ck.compare(fix)
	if fix != 0 {
		if err := ck.applyFixes(fix); err != nil {
			return err
		}
	}
	if err := ck.checkCopied(fix); err != nil {
		return err
	}
	ck.res.ImageEndOffset = (highest + 1) << ck.bits
	ck.progress(ck.total, ck.total)
	return nil
}

// compare compares stored refcounts with the counted references and
// returns the highest cluster in use; fixable mismatches are queued.
func (ck *checker) compare(fix checkFix) int64 {
	highest := int64(0)
	for i := int64(0); i < ck.nb; i++ {
		if i%65536 == 0 {
			ck.step(1)
		}
		rc1, err := ck.storedRefcount(i)
		if err != nil {
			ck.msg("Can't get refcount for cluster %d: %v", i, err)
			ck.res.CheckErrors++
			continue
		}
		rc2 := ck.count(i)
		if rc1 > 0 || rc2 > 0 {
			highest = i
		}
		if rc1 == rc2 {
			continue
		}
		fixable := false
		switch {
		case rc1 == 0:
			// No refcount at all: only a rebuild of the structure
			// (repair "all") fixes that.
			ck.rebuild = true
		case rc1 > rc2:
			fixable = fix&fixLeaks != 0
		default:
			fixable = fix&fixErrors != 0
		}
		what := "Leaked"
		if fixable {
			what = "Repairing"
		} else if rc1 < rc2 {
			what = "ERROR"
		}
		ck.msg("%s cluster %d refcount=%d reference=%d", what, i, rc1, rc2)
		if fixable {
			ck.fixes = append(ck.fixes, refFix{cl: i, rc: rc2})
		}
		if rc1 < rc2 {
			ck.res.Corruptions++
		} else {
			ck.res.Leaks++
		}
	}
	return highest
}

// checkCopied checks QCOW_OFLAG_COPIED on the active L1 and L2 entries
// against the refcounts, and repairs them when allowed (as QEMU: always
// with "all", with "leaks" only if nothing else is wrong).
func (ck *checker) checkCopied(fix checkFix) error {
	s := ck.s
	g := &s.g
	repair := false
	switch {
	case fix&fixErrors != 0:
		repair = true
	case fix&fixLeaks != 0:
		// Only on an otherwise sound image (the leaks counted above
		// have all been fixed in this mode).
		repair = ck.res.CheckErrors == 0 && ck.res.Corruptions == 0
	}
	w := ck.img.w
	l1 := ck.img.l1
	l2 := make([]byte, ck.cs)
	dirty := false
	for i, e := range l1 {
		l2off := int64(e & l1EntryOffsetMask)
		if l2off == 0 {
			continue
		}
		rc, err := ck.storedRefcount(l2off >> ck.bits)
		if err != nil {
			continue
		}
		if (rc == 1) != (e&oflagCopied != 0) {
			ck.res.Corruptions++
			verb := "ERROR"
			if repair {
				verb = "Repairing"
			}
			ck.msg("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", verb, i, e, rc)
			if repair {
				ck.img.l1[i] = withCopied(e, rc == 1)
				w.l1Dirty[int64(i)] = true
				dirty = true
			}
		}
		if l2off&(ck.cs-1) != 0 {
			continue
		}
		if err := preadFull(s.f, l2, l2off); err != nil {
			ck.res.CheckErrors++
			continue
		}
		for j := int64(0); j < g.l2Entries; j++ {
			word := binary.BigEndian.Uint64(l2[j*g.l2EntrySize:])
			if word&oflagCompressed != 0 {
				continue
			}
			offset := int64(word & l2EntryOffsetMask)
			zeroPlain := g.subclusters == 1 && word&oflagZero != 0 && offset == 0
			if zeroPlain || offset == 0 && !(g.dataFile && word&oflagCopied != 0) {
				continue
			}
			rc := uint64(1)
			if !g.dataFile {
				if rc, err = ck.storedRefcount(offset >> ck.bits); err != nil {
					continue
				}
			}
			if (rc == 1) == (word&oflagCopied != 0) {
				continue
			}
			ck.res.Corruptions++
			verb := "ERROR"
			if repair {
				verb = "Repairing"
			}
			ck.msg("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", verb, word, rc)
			if repair {
				if err := ck.setL2Word(l2off, j, withCopied(word, rc == 1)); err != nil {
					return err
				}
				dirty = true
			}
		}
	}
	if dirty {
		return w.flushLocked()
	}
	return nil
}
