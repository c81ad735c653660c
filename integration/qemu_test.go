// QEMU's tools are the oracle: images are made with qemu-img/qemu-io and what
// qcow2fs shows is compared with what qemu-img reads.

package integration

import (
	"encoding/json"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// qemuCreate makes a qcow2 image. opts is qemu-img's -o string (may be "");
// backing, when not "", is passed as -b with format backingFmt.
func qemuCreate(t testing.TB, path, size, opts, backing, backingFmt string) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	if backing != "" {
		args = append(args, "-b", backing, "-F", backingFmt)
	}
	args = append(args, path, size)
	// Relative backing names resolve against the image's directory; run
	// there so qemu-img can find the backing file to learn its size.
	runIn(t, filepath.Dir(path), "qemu-img", args...)
}

// qemuIO runs qemu-io commands (e.g. "write -P 0x11 0 64k") on a qcow2 image,
// from the image's directory so "-s FILE" names may be relative.
func qemuIO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	runIn(t, filepath.Dir(path), "qemu-io", args...)
}

// qemuToRaw writes the guest view of img (or of its internal snapshot snap,
// when not "") to out as a raw file.
func qemuToRaw(t testing.TB, img, snap, out string) {
	t.Helper()
	args := []string{"convert", "-O", "raw"}
	if snap != "" {
		args = append(args, "-l", "snapshot.name="+snap)
	}
	args = append(args, img, out)
	run(t, "qemu-img", args...)
}

// qemuImageInfo is the part of `qemu-img info --output=json` the tests use.
type qemuImageInfo struct {
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size"`
	Format      string `json:"format"`
	Dirty       bool   `json:"dirty-flag"`
	Snapshots   []struct {
		Name string `json:"name"`
	} `json:"snapshots"`
}

func qemuInfo(t testing.TB, img string) qemuImageInfo {
	t.Helper()
	// -U: the image may be open in a qcow2fs mount at this point.
	out := run(t, "qemu-img", "info", "-U", "--output=json", img)
	var info qemuImageInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", img, err, out)
	}
	return info
}

// qemuCheckClean asserts `qemu-img check` finds neither errors nor leaks.
func qemuCheckClean(t testing.TB, img string) {
	t.Helper()
	r := execute("", "qemu-img", "check", img)
	if r.Code != 0 || strings.Contains(r.Stdout, "leaked") {
		t.Errorf("qemu-img check %s is not clean: %s", img, r)
	}
}

// qemuCompareRaw asserts the qcow2 image reads exactly like the raw file.
func qemuCompareRaw(t testing.TB, raw, img string) {
	t.Helper()
	r := execute("", "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, img)
	if r.Code != 0 {
		t.Errorf("qemu-img compare %s %s: images differ: %s", raw, img, r)
	}
}

// writeRandomFile makes a file of n pseudo-random bytes (deterministic in
// seed), for qemu-io's "write -s FILE".
func writeRandomFile(t testing.TB, path string, seed int64, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(buf)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return buf
}

// holdWithQemuIO starts qemu-io holding img open read-write (it takes
// QEMU's image locks) and returns once the write lock is held; the process
// is killed by the returned release (idempotent) or at the end of the
// test. The wait only looks (F_OFD_GETLK on
// QEMU's "write" permission byte): probing with qemu-img info would take
// conflicting locks itself, and a qemu-io that opened during such a probe
// would give up with "Failed to get write lock".
func holdWithQemuIO(t testing.TB, img string) (release func()) {
	t.Helper()
	var stderr strings.Builder
	cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 600000", img)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	release = func() { cmd.Process.Kill(); <-done }
	t.Cleanup(release)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const writePermByte = 101 // QEMU: lock base 100 + bit 1 (BLK_PERM_WRITE)
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		select {
		case <-done:
			t.Fatalf("qemu-io exited before taking the locks of %s: %s", img, stderr.String())
		default:
		}
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: writePermByte, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatalf("%s: F_OFD_GETLK: %v", img, err)
		}
		if lk.Type != unix.F_UNLCK {
			return release
		}
		if time.Now().After(end) {
			t.Fatalf("qemu-io did not take the locks of %s within 30 s: %s", img, stderr.String())
		}
	}
}
