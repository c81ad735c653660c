// Live external snapshots and the live (active-layer) commit (issue 14),
// under the load of live_test.go: ext4 on a direct-I/O loop device over the
// mount, fio writing and verifying throughout.

package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fileSHA256 hashes a file by reading it (as a backup would).
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// statusImagesOf returns the images (the layers served) and the images as
// mounted of mnt, from qcow2fs status --output json.
func statusImagesOf(t *testing.T, mnt string) (images, mounted []string) {
	t.Helper()
	var list []struct {
		Mountpoint string   `json:"mountpoint"`
		Images     []string `json:"images"`
		Mounted    []string `json:"mounted"`
	}
	if err := json.Unmarshal([]byte(q2OK(t, mnt, "status", "--output", "json")), &list); err != nil {
		t.Fatal(err)
	}
	for _, m := range list {
		if m.Mountpoint == mnt {
			return m.Images, m.Mounted
		}
	}
	t.Fatalf("qcow2fs status does not list %s", mnt)
	return nil, nil
}

// TestLiveExternalSnapshot: an external snapshot taken under load with the
// file system frozen makes the base image a stable point-in-time copy
// (its hash does not change while the overlay takes the writes, QEMU
// checks it clean, it holds a clean ext4, nobody may write it); a live
// commit merges the overlay back and switches the mount to the base; in
// the end the one image left equals the disk.
func TestLiveExternalSnapshot(t *testing.T) {
	s := newLiveStack(t, "256M")
	overlay := filepath.Join(filepath.Dir(s.img), "vm-overlay.qcow2")
	fio := startFio(t, s)
	time.Sleep(3 * time.Second) // fio well under way

	mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-f", s.fsDir)
	start := time.Now()
	q2OK(t, s.mnt, "snapshot", "create", "--external", overlay, s.img)
	took := time.Since(start)
	mustBounded(t, time.Minute, []string{s.mnt}, "", "fsfreeze", "-u", s.fsDir)
	t.Logf("live external snapshot in %v", took.Round(time.Millisecond))

	// The mount serves the overlay now, under the same file name.
	images, mounted := statusImagesOf(t, s.mnt)
	if len(images) != 1 || images[0] != overlay || len(mounted) != 1 || mounted[0] != s.img {
		t.Fatalf("status after the external snapshot: images %q mounted %q, want [%s] in place of [%s]", images, mounted, overlay, s.img)
	}
	if _, err := os.Stat(s.raw); err != nil {
		t.Fatalf("the mount's file after the switch: %v", err)
	}
	info := mustBounded(t, time.Minute, nil, "", "qemu-img", "info", "-U", overlay)
	if !strings.Contains(info, "backing file: vm.qcow2") || !strings.Contains(info, "backing file format: qcow2") {
		t.Fatalf("qemu-img info of the overlay:\n%s", info)
	}

	// The base is a stable copy: the same hash with writes in between,
	// clean for QEMU (no -U: only a shared read lock is held on it), and
	// nobody may open it for writing.
	h1 := fileSHA256(t, s.img)
	mustBounded(t, time.Minute, nil, "", "qemu-img", "check", s.img)
	if r := bounded(time.Minute, nil, "", "qemu-io", "-c", "write 0 512", s.img); r.Code == 0 || !strings.Contains(r.Stderr, "lock") {
		t.Fatalf("qemu-io could write the base of a mounted overlay: %s", r)
	}
	baseRaw := filepath.Join(s.dir, "base.raw")
	mustBounded(t, 2*time.Minute, nil, "", "qemu-img", "convert", "-O", "raw", s.img, baseRaw)
	snapshotCleanExt4(t, baseRaw)
	os.Remove(baseRaw)
	time.Sleep(3 * time.Second)
	if fio.exited() {
		t.Fatalf("fio ended before the commit: the workload is too short to test anything:\n%s%s", fio.stdout.String(), fio.stderr.String())
	}
	if h2 := fileSHA256(t, s.img); h2 != h1 {
		t.Fatalf("the base image changed while the overlay took the writes (sha256 %s, then %s)", h1, h2)
	}
	if out := mustBounded(t, time.Minute, nil, "", "qemu-img", "info", "-U", "--output=json", overlay); !strings.Contains(out, `"actual-size"`) {
		t.Fatalf("qemu-img info of the overlay: %s", out)
	}

	// Live commit, fio still running.
	start = time.Now()
	out := q2OK(t, s.mnt, "commit", overlay)
	t.Logf("live commit in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	images, mounted = statusImagesOf(t, s.mnt)
	if len(images) != 1 || images[0] != s.img || len(mounted) != 0 {
		t.Fatalf("status after the commit: images %q mounted %q, want [%s] alone", images, mounted, s.img)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Fatalf("the overlay after a live commit: %v, want it removed", err)
	}
	fioOK(t, fio, 3*time.Minute)

	// The disk as the loop device shows it, once ext4 is gone from it.
	run(t, "umount", s.fsDir)
	if r := bounded(2*time.Minute, nil, "", "fsck.ext4", "-fn", s.dev); r.Code != 0 {
		t.Fatalf("fsck.ext4 -fn %s: %s", s.dev, r)
	}
	dump := filepath.Join(s.dir, "disk.raw")
	mustBounded(t, 2*time.Minute, []string{s.mnt}, "", "dd", "if="+s.dev, "of="+dump, "bs=1M", "iflag=direct", "status=none")
	loopDetach(t, s.dev)
	unmountQcow2fs(t, s.mnt, s.img)
	qemuCheckClean(t, s.img)
	if r := bounded(2*time.Minute, nil, "", "qemu-img", "compare", "-f", "qcow2", "-F", "raw", s.img, dump); r.Code != 0 {
		t.Fatalf("the image differs from the disk: %s", r)
	}
}

// TestLiveExternalSuspendedCommit: commit on a suspended mount runs
// offline (the suspend released the locks) and resume reopens the active
// layer — the overlay, not the image the mount was made of. A resume after
// the external snapshot does the same. An external snapshot that cannot
// create its overlay leaves the mount serving the image, writable. The
// maintenance commands refused on a mounted image name the live forms.
func TestLiveExternalSuspendedCommit(t *testing.T) {
	mnt, img := liveMount(t)
	raw := filepath.Join(mnt, "vm.raw")
	overlay := filepath.Join(filepath.Dir(img), "vm-ov.qcow2")
	a := bytes.Repeat([]byte{0xa1}, 65536)
	b := bytes.Repeat([]byte{0xb2}, 65536)
	c := bytes.Repeat([]byte{0xc3}, 65536)
	writeAt(t, raw, a, 1<<20)

	if r := q2(mnt, "resize", img, "+1M"); r.Code == 0 || !strings.Contains(r.Stderr, "snapshot create --external") || !strings.Contains(r.Stderr, "suspend "+mnt) {
		t.Fatalf("resize of a mounted image: want a refusal naming the live forms, got %s", r)
	}
	// Offline form, on an image nobody writes: only creates the overlay.
	other := filepath.Join(filepath.Dir(img), "other.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", other, "16M")
	q2OK(t, mnt, "snapshot", "create", "--external", other+".top", other)
	if info := run(t, "qemu-img", "info", other+".top"); !strings.Contains(info, "backing file: other.qcow2") {
		t.Fatalf("offline external snapshot:\n%s", info)
	}
	if r := q2(mnt, "snapshot", "create", "--external", other+".top", other); r.Code == 0 || !strings.Contains(r.Stderr, "already exists") {
		t.Fatalf("external snapshot onto an existing file: want refused, got %s", r)
	}

	// The overlay cannot be created (a read-only file system): the mount
	// goes on with the image, writable.
	ro := mkdir(t, filepath.Dir(img), "ro")
	run(t, "mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro)
	t.Cleanup(func() { run(t, "umount", ro) })
	if r := q2(mnt, "snapshot", "create", "--external", filepath.Join(ro, "ov.qcow2"), img); r.Code == 0 || !strings.Contains(r.Stderr, "the mount goes on with "+img) {
		t.Fatalf("external snapshot onto a read-only file system: want a failure saying the mount goes on with the image, got %s", r)
	}
	if r := q2(mnt, "snapshot", "create", "--external", filepath.Join(mnt, "ov.qcow2"), img); r.Code == 0 || !strings.Contains(r.Stderr, "inside the qcow2fs mount at "+mnt) {
		t.Fatalf("external snapshot into the mount itself: want refused, got %s", r)
	}
	if images, mounted := statusImagesOf(t, mnt); len(images) != 1 || images[0] != img || len(mounted) != 0 {
		t.Fatalf("after failed external snapshots the mount serves %q (mounted %q), want the image alone", images, mounted)
	}
	h0 := fileSHA256(t, img)
	f, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt(a, 4<<20)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		t.Fatalf("writing after a failed external snapshot: %v", err)
	}
	if fileSHA256(t, img) == h0 {
		t.Fatal("a synced write after a failed external snapshot did not reach the image")
	}

	q2OK(t, mnt, "snapshot", "create", "--external", overlay, img)
	writeAt(t, raw, b, 2<<20)
	h := fileSHA256(t, img)
	// Suspend and resume: the overlay comes back, with its data.
	q2OK(t, mnt, "suspend", mnt)
	q2OK(t, mnt, "resume", mnt)
	if images, _ := statusImagesOf(t, mnt); len(images) != 1 || images[0] != overlay {
		t.Fatalf("after suspend and resume the mount serves %q, want the overlay %s", images, overlay)
	}
	writeAt(t, raw, c, 3<<20)
	if fileSHA256(t, img) != h {
		t.Fatal("the base changed after a resume: the resume reopened the image, not the overlay")
	}
	// Commit on the suspended mount: offline, the locks are free.
	q2OK(t, mnt, "suspend", mnt)
	q2OK(t, mnt, "commit", overlay)
	q2OK(t, mnt, "resume", mnt)
	for _, w := range []struct {
		off  int64
		want []byte
	}{{1 << 20, a}, {2 << 20, b}, {3 << 20, c}, {4 << 20, a}} {
		got := make([]byte, len(w.want))
		f, err := os.Open(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, w.off)
		f.Close()
		if err != nil || !bytes.Equal(got, w.want) {
			t.Fatalf("after suspend, commit, resume: data at %#x differs (%v)", w.off, err)
		}
	}
	unmountQcow2fs(t, mnt, img, overlay)
	qemuCheckClean(t, img)
	qemuCheckClean(t, overlay)
	// The base holds everything now; the (empty) overlay reads the same.
	run(t, "qemu-img", "compare", img, overlay)
	for _, w := range []struct {
		off int64
		pat string
	}{{1 << 20, "0xa1"}, {2 << 20, "0xb2"}, {3 << 20, "0xc3"}, {4 << 20, "0xa1"}} {
		if out := run(t, "qemu-io", "-r", "-c", "read -P "+w.pat+" "+strconv.FormatInt(w.off, 10)+" 64k", img); strings.Contains(out, "verification failed") {
			t.Fatalf("the base lacks the write at %#x: %s", w.off, out)
		}
	}
}

// TestLiveCommitMountedOverlay: live commit of an overlay that was mounted
// as such (not made by a live snapshot) switches the mount to its backing
// file and leaves the overlay, empty; status and unmount say which file
// the mount serves. An overlay mount (--overlay: the image is evidence)
// refuses both live layer operations.
func TestLiveCommitMountedOverlay(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io")
	dir := testDir(t)
	mnt := mkdir(t, dir, "mnt")
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
	run(t, "qemu-io", "-c", "write -P 0x41 0 1M", base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	mountQcow2fs(t, mnt, nil, top)
	raw := filepath.Join(mnt, "top.raw")
	writeAt(t, raw, bytes.Repeat([]byte{0x42}, 65536), 2<<20)

	out := q2OK(t, mnt, "commit", top)
	if !strings.Contains(out, "is empty and no longer used") {
		t.Fatalf("live commit of a mounted overlay: %s", out)
	}
	images, mounted := statusImagesOf(t, mnt)
	if len(images) != 1 || images[0] != base || len(mounted) != 1 || mounted[0] != top {
		t.Fatalf("after the commit: images %q mounted %q, want [%s] in place of [%s]", images, mounted, base, top)
	}
	if _, err := os.Stat(top); err != nil {
		t.Fatalf("an overlay the mount did not create was removed: %v", err)
	}
	// Writes go to the base now.
	writeAt(t, raw, bytes.Repeat([]byte{0x43}, 65536), 3<<20)
	r := bounded(time.Minute, []string{mnt}, "", qcow2fsBin, "unmount", mnt)
	if r.Code != 0 || !strings.Contains(r.Stderr, "served "+base) {
		t.Fatalf("unmount of a mount switched to another layer: want a note naming %s, got %s", base, r)
	}
	qemuCheckClean(t, base)
	qemuCheckClean(t, top)
	for _, w := range []struct{ off, pat string }{{"0", "0x41"}, {"2M", "0x42"}, {"3M", "0x43"}} {
		if out := run(t, "qemu-io", "-r", "-c", "read -P "+w.pat+" "+w.off+" 64k", base); strings.Contains(out, "verification failed") {
			t.Fatalf("base at %s: %s", w.off, out)
		}
	}
	if out := run(t, "qemu-img", "map", "--output=json", top); strings.Contains(out, `"depth": 0`) {
		t.Fatalf("the overlay still holds data after the commit:\n%s", out)
	}

	// An overlay mount keeps its image unchanged: no live layer operation.
	ev := filepath.Join(dir, "ev.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", ev, "16M")
	mnt2 := mkdir(t, dir, "mnt2")
	mountQcow2fs(t, mnt2, []string{"--overlay", filepath.Join(dir, "ev-writes.qcow2")}, ev)
	if r := q2(mnt2, "commit", filepath.Join(dir, "ev-writes.qcow2")); r.Code == 0 || !strings.Contains(r.Stderr, "overlay mount") {
		t.Fatalf("live commit on an --overlay mount: want refused, got %s", r)
	}
	if r := q2(mnt2, "snapshot", "create", "--external", filepath.Join(dir, "x.qcow2"), filepath.Join(dir, "ev-writes.qcow2")); r.Code == 0 || !strings.Contains(r.Stderr, "overlay mount") {
		t.Fatalf("live external snapshot on an --overlay mount: want refused, got %s", r)
	}
	unmountQcow2fs(t, mnt2, ev)
}
