// Tests of --partitions: MBR and GPT partition files numbered as partx
// numbers them, equal to dd of their range, and writable with mkfs.ext4.

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// partxPartition is one line of partx -g -o NR,START,SECTORS,TYPE.
type partxPartition struct {
	Nr, Start, Sectors int64
	Type               string
}

// partxList lists the partitions util-linux's partx (libblkid) finds in a
// raw disk file: the oracle for numbers and ranges. Extended (container)
// partitions are left out: they hold no data of their own and qcow2fs
// shows no file for them.
func partxList(t *testing.T, raw string) []partxPartition {
	t.Helper()
	out := run(t, "partx", "-g", "-o", "NR,START,SECTORS,TYPE", raw)
	var ps []partxPartition
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("partx line %q", line)
		}
		if f[3] == "0x5" || f[3] == "0xf" || f[3] == "0x85" {
			continue
		}
		var p partxPartition
		p.Nr, _ = strconv.ParseInt(f[0], 10, 64)
		p.Start, _ = strconv.ParseInt(f[1], 10, 64)
		p.Sectors, _ = strconv.ParseInt(f[2], 10, 64)
		p.Type = f[3]
		ps = append(ps, p)
	}
	return ps
}

// ddRange copies sectors [start, start+count) of in to out with dd.
func ddRange(t *testing.T, in, out string, start, count int64) string {
	t.Helper()
	run(t, "dd", "if="+in, "of="+out, "bs=512", "skip="+strconv.FormatInt(start, 10), "count="+strconv.FormatInt(count, 10), "status=none")
	return out
}

// TestPartitions: with --partitions, each MBR (primary and logical) and GPT
// partition appears as NAME-pN.raw, numbered as partx numbers them, equal
// to dd of the partition's range of the disk; info prints the table; on a
// read-write mount a partition file takes a file system (mkfs.ext4 on
// vm-p1.raw) that fsck then finds clean inside the image.
func TestPartitions(t *testing.T) {
	requireTools(t, "sfdisk", "partx", "dd", "mkfs.ext4", "fsck.ext4", "blkid")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	mbr, gpt := k.Path("mbr"), k.Path("gpt")
	partitionedQcow2(t, mbr, "label: dos\n2048,3M,83,*\n,2M,82\n,,5\n,2M,83\n,1M,7\n,,8e\n", k)
	partitionedQcow2(t, gpt, "label: gpt\nsize=3M, type=U, name=efi\nsize=5M, type=L, name=\"root fs\"\ntype=S\n", k)
	before := testenv.HashTree(t, k.Dir)
	mnt := mkdir(t, dir, "mnt")

	mountQcow2fs(t, mnt, []string{"--ro", "-o", "partitions"}, mbr, gpt)
	var want []string
	for _, img := range []string{mbr, gpt} {
		name := strings.TrimSuffix(filepath.Base(img), ".qcow2")
		disk := qemuRawOf(t, img, filepath.Join(dir, name+"-disk.raw"))
		parts := partxList(t, disk)
		if len(parts) < 3 {
			t.Fatalf("partx finds %d partitions in %s", len(parts), disk)
		}
		want = append(want, name+".info", name+".raw")
		for _, p := range parts {
			file := fmt.Sprintf("%s-p%d.raw", name, p.Nr)
			want = append(want, file)
			ref := ddRange(t, disk, filepath.Join(dir, file+".dd"), p.Start, p.Sectors)
			compareFiles(t, filepath.Join(mnt, file), ref)
		}
		// info prints the table with the files and byte offsets.
		out := run(t, qcow2fsBin, "info", img)
		for _, p := range parts {
			line := fmt.Sprintf("%s-p%d.raw  %d", name, p.Nr, p.Start*512)
			if !strings.Contains(out, line) {
				t.Errorf("info %s lacks %q:\n%s", img, line, out)
			}
		}
	}
	sort.Strings(want)
	if got := listDir(t, mnt); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("mount lists %v, want %v", got, want)
	}
	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))

	// Read-write: mkfs.ext4 through the partition file, fsck inside the image.
	mountQcow2fs(t, mnt, []string{"--partitions"}, mbr)
	p1 := filepath.Join(mnt, "mbr-p1.raw")
	run(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", p1)
	run(t, "fsck.ext4", "-fn", p1)
	unmountQcow2fs(t, mnt, k.Dir)
	qemuCheckClean(t, mbr)
	disk := qemuRawOf(t, mbr, filepath.Join(dir, "mbr-after.raw"))
	parts := partxList(t, disk)
	if len(parts) == 0 || parts[0].Nr != 1 {
		t.Fatalf("partition table gone after mkfs on p1: %+v", parts)
	}
	ext := ddRange(t, disk, filepath.Join(dir, "p1-after.dd"), parts[0].Start, parts[0].Sectors)
	run(t, "fsck.ext4", "-fn", ext)
	if out := run(t, "blkid", "-o", "value", "-s", "TYPE", ext); strings.TrimSpace(out) != "ext4" {
		t.Errorf("blkid on partition 1 after mkfs: %q", out)
	}
	os.Remove(ext)
}
