// Tests of forensic read-only use: evidence mounted --ro --partitions is
// read without a byte changing (sha256) and opened O_RDONLY|O_NOATIME, also
// from a read-only bind mount; and --no-backing.

package integration

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"golang.org/x/sys/unix"
)

// evidenceSet builds, in k.Dir, the images of a forensic case: a 3-layer
// chain (qcow2 over qcow2 over raw, relative names) with an internal
// snapshot, a dirty image left by a killed writer with lazy refcounts, and
// a disk with an MBR partition table. It returns the image paths.
func evidenceSet(t *testing.T, k *imageKit) []string {
	t.Helper()
	base := k.BkPath("base.raw")
	writeRandomFile(t, base, 7, 6<<20)
	mid := k.BkPath("mid.qcow2")
	qemuCreate(t, mid, "8M", "", "base.raw", "raw")
	qemuIO(t, mid, k.Rand(1<<20, 200000), Zero(2<<20, 64<<10))
	top := k.Path("chain")
	qemuCreate(t, top, "8M", "", "bk/mid.qcow2", "qcow2")
	qemuIO(t, top, k.Rand(1<<20+4096, 100), Discard(3<<20, 64<<10))
	run(t, "qemu-img", "snapshot", "-c", "seized", top)
	qemuIO(t, top, k.Rand(5<<20, 70000))

	dirty := k.Path("dirty")
	qemuCreate(t, dirty, "8M", "lazy_refcounts=on", "", "")
	args := []string{"-f", "qcow2"}
	for _, c := range append(k.Scribble(64<<10, 8<<20), "abort") {
		args = append(args, "-c", c)
	}
	_ = execute(k.Dir, "qemu-io", append(args, dirty)...) // dies of SIGABRT by design
	if !qemuInfo(t, dirty).Dirty {
		t.Fatalf("%s: qemu-io abort did not leave the image dirty", dirty)
	}

	parts := k.Path("parts")
	partitionedQcow2(t, parts, "label: dos\n2048,3M,83\n,,5\n,2M,83\n", k)
	return []string{top, dirty, parts}
}

// partitionedQcow2 makes a 16 MiB qcow2 image whose disk holds the
// partition table the sfdisk script describes, with random data written
// over the first MiB of every 2 MiB (so partitions hold data and holes).
func partitionedQcow2(t *testing.T, path, script string, k *imageKit) {
	t.Helper()
	raw := path + ".table.raw"
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, 16<<20); err != nil {
		t.Fatal(err)
	}
	sfdisk(t, raw, script)
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
	os.Remove(raw)
	var cmds []string
	for off := int64(1 << 20); off < 16<<20; off += 2 << 20 {
		cmds = append(cmds, k.Rand(off, 1<<20))
	}
	qemuIO(t, path, cmds...)
}

// sfdisk writes a partition table into the file with util-linux's sfdisk.
func sfdisk(t *testing.T, file, script string) {
	t.Helper()
	cmd := exec.Command("sfdisk", "-q", "--no-reread", file)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk %s: %v\n%s", file, err, out)
	}
}

// readAll reads every file in the mount to the end, and walks each one's
// data/hole map with SEEK_DATA/SEEK_HOLE: all the reading a forensic tool
// does.
func readAll(t *testing.T, mnt string) {
	t.Helper()
	for _, name := range listDir(t, mnt) {
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, f); err != nil {
			t.Errorf("read %s: %v", name, err)
		}
		for off := int64(0); ; {
			d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
			if err != nil {
				break
			}
			h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
			if err != nil || h <= d {
				t.Errorf("%s: SEEK_HOLE from %d: %d, %v", name, d, h, err)
				break
			}
			off = h
		}
		f.Close()
	}
}

// assertReadOnlyOpens checks that the daemon serving mnt holds every file
// under dir open read-only, and with O_NOATIME (it runs as root, who may).
func assertReadOnlyOpens(t *testing.T, mnt, dir string, wantFiles int) {
	t.Helper()
	pid := daemonPID(t, mnt)
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil || !underDir(target, dir) {
			continue
		}
		n++
		info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + fd.Name())
		if err != nil {
			t.Fatal(err)
		}
		var flags int64 = -1
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ = strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			}
		}
		if flags < 0 || flags&unix.O_ACCMODE != unix.O_RDONLY {
			t.Errorf("daemon has %s open with flags %#o: not read-only", target, flags)
		}
		if flags&unix.O_NOATIME == 0 {
			t.Errorf("daemon has %s open without O_NOATIME (flags %#o): reads change its atime", target, flags)
		}
	}
	if n < wantFiles {
		t.Errorf("daemon holds %d files under %s open, expected at least %d", n, dir, wantFiles)
	}
}

// TestForensicReadOnly mounts a directory of evidence --ro --partitions,
// reads every file in the mount end to end, and checks that no byte of any
// image or backing file changed (sha256), that every file was opened
// O_RDONLY|O_NOATIME, and that the mount refuses writes. The dirty image is
// repaired in memory only.
func TestForensicReadOnly(t *testing.T) {
	requireTools(t, "sfdisk")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "evidence"))
	images := evidenceSet(t, k)
	before := testenv.HashTree(t, k.Dir)
	mnt := mkdir(t, dir, "mnt")

	mountQcow2fs(t, mnt, []string{"--ro", "--partitions"}, k.Dir)
	names := listDir(t, mnt)
	want := "chain.info chain.raw chain@seized.raw dirty.info dirty.raw parts-p1.raw parts-p5.raw parts.info parts.raw"
	if strings.Join(names, " ") != want {
		t.Errorf("mount lists %v, want %s", names, want)
	}
	if opts := mountOptions(t, mnt); !hasAll(opts, "ro", "nodev", "nosuid", "noexec") {
		t.Errorf("mount options %q lack ro,nodev,nosuid,noexec", opts)
	}
	for _, n := range names {
		// The images are 0644, without their write bits on a read-only
		// mount; only root may enter the run's directory, so nobody else
		// could read them and the files keep only the owner's bit.
		st, err := os.Stat(filepath.Join(mnt, n))
		if err != nil || st.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v (%v), want 0400", n, st.Mode(), err)
		}
		if _, err := os.OpenFile(filepath.Join(mnt, n), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
			t.Errorf("open %s read-write: %v, want EROFS", n, err)
		}
	}
	readAll(t, mnt)
	compareFiles(t, filepath.Join(mnt, "dirty.raw"), qemuRawOf(t, images[1], filepath.Join(dir, "dirty-oracle.raw")))
	// chain, mid, base.raw, dirty, parts.
	assertReadOnlyOpens(t, mnt, k.Dir, 5)
	unmountQcow2fs(t, mnt, k.Dir)

	if !qemuInfo(t, images[1]).Dirty {
		t.Errorf("the dirty image lost its dirty bit: the repair was written back")
	}
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// TestForensicReadOnlyBindMount: evidence on a read-only bind mount (as on
// write-blocked media) mounts --ro and reads exactly as QEMU reads it; a
// read-write mount of it fails with a clear error.
func TestForensicReadOnlyBindMount(t *testing.T) {
	requireTools(t, "sfdisk")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "evidence"))
	images := evidenceSet(t, k)
	before := testenv.HashTree(t, k.Dir)
	blocked := mkdir(t, dir, "write-blocked")
	run(t, "mount", "--bind", "-o", "ro", k.Dir, blocked)
	t.Cleanup(func() {
		if _, ok := mounts.Find(blocked); ok {
			quietRun("umount", blocked)
		}
	})
	if opts := mountOptions(t, blocked); !hasAll(opts, "ro") {
		t.Fatalf("bind mount %s is not read-only (%s)", blocked, opts)
	}

	mnt := mkdir(t, dir, "mnt")
	r := execute("", qcow2fsBin, "mount", filepath.Join(blocked, "chain.qcow2"), mnt)
	if r.Code != 1 || !strings.Contains(strings.ToLower(r.Stderr), "read-only file system") {
		t.Errorf("read-write mount of evidence on a read-only file system: %s", r)
	}
	if _, ok := mounts.Find(mnt); ok {
		forceUnmount(t, mnt)
		t.Fatal("read-write mount of read-only evidence succeeded")
	}

	mountQcow2fs(t, mnt, []string{"--ro", "--partitions"}, blocked)
	for i, name := range []string{"chain", "dirty", "parts"} {
		compareFiles(t, filepath.Join(mnt, name+".raw"), qemuRawOf(t, images[i], filepath.Join(dir, name+"-oracle.raw")))
	}
	snap := filepath.Join(dir, "seized-oracle.raw")
	qemuToRaw(t, images[0], "seized", snap)
	compareFiles(t, filepath.Join(mnt, "chain@seized.raw"), snap)
	readAll(t, mnt)
	unmountQcow2fs(t, mnt, blocked)
	quietRun("umount", blocked)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// TestNoBacking: --no-backing shows the top layer alone, as QEMU reads the
// image with "backing": null, and opens no file the image names; info
// lists those files without opening them; a read-write mount of an image
// with a backing file is refused with --no-backing.
func TestNoBacking(t *testing.T) {
	requireTools(t, "sfdisk")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "evidence"))
	chain := evidenceSet(t, k)[0]
	before := testenv.HashTree(t, k.Dir)
	mid, base := k.BkPath("mid.qcow2"), k.BkPath("base.raw")

	out := run(t, qcow2fsBin, "info", chain)
	for _, f := range []string{chain, mid, base} {
		if !strings.Contains(out, "    "+f+"\n") {
			t.Errorf("info does not list %s among the files opened:\n%s", f, out)
		}
	}
	r := execute("", qcow2fsBin, "info", "--no-backing", chain)
	if r.Code != 0 || !strings.Contains(r.Stdout, "not opened") || !strings.Contains(r.Stdout, "    "+mid+" (backing file)") {
		t.Errorf("info --no-backing does not name the backing file it did not open: %s", r)
	}

	mnt := mkdir(t, dir, "mnt")
	if r := execute("", qcow2fsBin, "mount", "--no-backing", chain, mnt); r.Code != 1 || !strings.Contains(r.Stderr, "read-only") {
		t.Errorf("read-write --no-backing mount of an image with a backing file: %s", r)
	}
	mountQcow2fs(t, mnt, []string{"--ro", "--no-backing", "--no-snapshots"}, chain)
	oracle := filepath.Join(dir, "top-only.raw")
	run(t, "qemu-img", "convert", "-O", "raw",
		`json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"`+chain+`"}}`, oracle)
	compareFiles(t, filepath.Join(mnt, "chain.raw"), oracle)
	// Only chain.qcow2 is open: nothing in bk/.
	assertReadOnlyOpens(t, mnt, k.Dir, 1)
	if h := mounts.OpenUnder(k.Bk); len(h) > 0 {
		t.Errorf("--no-backing opened files the image names: %s", strings.Join(h, "; "))
	}
	unmountQcow2fs(t, mnt, k.Dir)
	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}
