// The FUSE-over-io_uring transport end to end: -o uring=on, status, fio
// with verification at queue depth 32 on the file and a direct-I/O loop
// device, a clean image after.

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuseURingParam is the kernel's switch for FUSE over io_uring.
const fuseURingParam = "/sys/module/fuse/parameters/enable_uring"

// enableFUSEURing switches FUSE over io_uring on (root). Nothing turns it
// off again: a connection that uses it keeps it, others don't care.
func enableFUSEURing() error {
	b, err := os.ReadFile(fuseURingParam)
	if err == nil && strings.TrimSpace(string(b)) == "Y" {
		return nil
	}
	return os.WriteFile(fuseURingParam, []byte("Y\n"), 0o644)
}

// requireFUSEURing needs a kernel with FUSE over io_uring
// (CONFIG_FUSE_IO_URING, Linux 6.14+: the enable_uring parameter exists;
// requireTools skips, loudly, or fails on CI without it) and switches it on.
func requireFUSEURing(t *testing.T) {
	t.Helper()
	requireTools(t, fuseURingParam)
	if err := enableFUSEURing(); err != nil {
		t.Fatalf("switching FUSE over io_uring on: %v", err)
	}
}

// TestURingTransport: a mount with -o uring=on serves over io_uring (status
// says so), fio at queue depth 32 — on the file and through a loop device
// with direct I/O, several requests in flight on each CPU's queue — reads
// back what it wrote, and the image is clean after the unmount; uring=off
// beside it is the classic loop.
func TestURingTransport(t *testing.T) {
	requireFUSEURing(t)
	requireTools(t, "fio", "losetup")
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	qemuCreate(t, img, "256M", "", "", "qcow2")
	mnt := mkdir(t, dir, "mnt")
	mountQcow2fs(t, mnt, []string{"-o", "uring=on"}, img)
	classicImg := k.Path("classic")
	qemuCreate(t, classicImg, "16M", "", "", "qcow2")
	classicMnt := mkdir(t, dir, "classic")
	mountQcow2fs(t, classicMnt, []string{"--uring", "off"}, classicImg)

	var list []struct {
		Mountpoint string `json:"mountpoint"`
		Transport  string `json:"transport"`
	}
	if err := json.Unmarshal([]byte(run(t, qcow2fsBin, "status", "--output", "json")), &list); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{mnt: "io_uring", classicMnt: "classic"}
	for _, m := range list {
		if w, ok := want[m.Mountpoint]; ok {
			if m.Transport != w {
				t.Errorf("status: %s uses transport %q, want %q", m.Mountpoint, m.Transport, w)
			}
			delete(want, m.Mountpoint)
		}
	}
	if len(want) > 0 {
		t.Errorf("status does not list %v", want)
	}

	raw := filepath.Join(mnt, "vm.raw")
	verify := func(file, offset string) {
		t.Helper()
		r := execute(dir, "fio", "--name=uring-verify", "--filename="+file,
			"--ioengine=libaio", "--iodepth=32", "--direct=1",
			"--rw=randwrite", "--bsrange=4k-128k", "--offset="+offset, "--size=64M",
			"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--minimal")
		if r.Code != 0 {
			t.Fatalf("fio verify on %s: %s", file, r)
		}
	}
	verify(raw, "0")
	dev := loopAttach(t, raw, "--direct-io=on")
	verify(dev, "128M")
	loopDetach(t, dev)
	unmountQcow2fs(t, classicMnt, classicImg)
	unmountQcow2fs(t, mnt, k.Dir)
	qemuCheckClean(t, img)
}
