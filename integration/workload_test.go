// A workload is a seeded list of guest operations applied to two files at
// once: the raw file qcow2fs exposes and a plain raw reference file. After
// the run the two must be equal, as seen through the mount and as seen by
// qemu-img.

package integration

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

type opKind int

const (
	opWrite   opKind = iota // random bytes
	opDiscard               // fallocate PUNCH_HOLE|KEEP_SIZE
	opZero                  // fallocate ZERO_RANGE
	opRead                  // compare both files over the range
	opFsync
)

func (k opKind) String() string {
	return [...]string{"write", "discard", "zero-range", "read", "fsync"}[k]
}

type op struct {
	Kind   opKind
	Off, N int64
	Seed   int64 // content of a write
}

func (o op) String() string { return fmt.Sprintf("%s off=%d len=%d", o.Kind, o.Off, o.N) }

// workloadShape says where a workload aims.
type workloadShape struct {
	Size    int64 // virtual size
	Cluster int64
	L2Span  int64 // guest bytes one L2 table maps
	Ops     int
}

// seedFor returns the seed of a named workload: QCOW2FS_SEED (default 1)
// mixed with the name, so each case differs but every run repeats.
func seedFor(t *testing.T, name string) int64 {
	base := int64(1)
	if s := os.Getenv("QCOW2FS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("QCOW2FS_SEED: %v", err)
		}
		base = v
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	seed := base ^ int64(h.Sum64()&(1<<62-1))
	t.Logf("workload seed %d (QCOW2FS_SEED=%d)", seed, base)
	return seed
}

// genWorkload aims operations at hot spots (start and end of the disk, the
// middle, L2-table boundaries) so they overlap each other, cross cluster
// and L2 boundaries, and start and end at unaligned offsets.
func genWorkload(seed int64, s workloadShape) []op {
	r := rand.New(rand.NewSource(seed))
	hot := []int64{0, s.Size / 2, s.Size}
	for b := s.L2Span; b < s.Size && len(hot) < 6; b += s.L2Span {
		hot = append(hot, b)
	}
	const maxLen = 8 << 20
	ops := make([]op, 0, s.Ops)
	for len(ops) < s.Ops {
		var o op
		switch p := r.Intn(100); {
		case p < 55:
			o.Kind = opWrite
		case p < 70:
			o.Kind = opDiscard
		case p < 85:
			o.Kind = opZero
		case p < 95:
			o.Kind = opRead
		default:
			o.Kind = opFsync
			ops = append(ops, o)
			continue
		}
		if r.Intn(5) == 0 {
			o.Off = r.Int63n(s.Size)
		} else {
			o.Off = hot[r.Intn(len(hot))] + r.Int63n(8*s.Cluster) - 4*s.Cluster
		}
		switch p := r.Intn(10); {
		case p < 4: // inside one cluster or just across
			o.N = 1 + r.Int63n(s.Cluster)
		case p < 8: // a few clusters
			o.N = 1 + r.Int63n(3*s.Cluster+s.Cluster/2)
		case p < 9: // whole clusters, aligned
			o.Off -= o.Off % s.Cluster
			o.N = s.Cluster * (1 + r.Int63n(4))
		default: // larger
			o.N = 1 + r.Int63n(16*s.Cluster)
		}
		o.N = min(o.N, maxLen)
		o.Off = min(max(o.Off, 0), s.Size-1)
		o.N = min(o.N, s.Size-o.Off)
		o.Seed = r.Int63()
		ops = append(ops, o)
	}
	return ops
}

// refFile is where a workload's reference copy goes.
type refFile interface {
	io.ReaderAt
	io.WriterAt
}

// applyWorkload runs ops on the mounted file and the reference file.
func applyWorkload(mounted *os.File, ref refFile, ops []op) error {
	for i, o := range ops {
		if err := applyOp(mounted, ref, o); err != nil {
			return fmt.Errorf("op %d of %d (%s): %w", i, len(ops), o, err)
		}
	}
	return nil
}

func applyOp(mounted *os.File, ref refFile, o op) error {
	switch o.Kind {
	case opWrite:
		buf := make([]byte, o.N)
		rand.New(rand.NewSource(o.Seed)).Read(buf)
		if _, err := mounted.WriteAt(buf, o.Off); err != nil {
			return err
		}
		_, err := ref.WriteAt(buf, o.Off)
		return err
	case opDiscard, opZero:
		mode := uint32(unix.FALLOC_FL_ZERO_RANGE)
		if o.Kind == opDiscard {
			mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		}
		if err := unix.Fallocate(int(mounted.Fd()), mode, o.Off, o.N); err != nil {
			return fmt.Errorf("fallocate mode %#x: %w", mode, err)
		}
		// Both read back as zeros: the reference just gets zeros written.
		_, err := ref.WriteAt(make([]byte, o.N), o.Off)
		return err
	case opRead:
		got := make([]byte, o.N)
		want := make([]byte, o.N)
		if _, err := mounted.ReadAt(got, o.Off); err != nil {
			return err
		}
		if _, err := ref.ReadAt(want, o.Off); err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			i := firstDiff(got, want)
			return fmt.Errorf("read back differs at offset %d: got %s, want %s", o.Off+int64(i), excerpt(got, i), excerpt(want, i))
		}
		return nil
	case opFsync:
		return mounted.Sync()
	}
	return fmt.Errorf("unknown op %d", o.Kind)
}
