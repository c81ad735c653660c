// A stress test: fio's concurrent direct-I/O jobs write and verify (crc32c)
// random blocks on a mounted file; the image is clean afterwards.

package integration

import (
	"path/filepath"
	"testing"
)

// TestFioVerify: fio's concurrent jobs do mixed random reads and writes
// with direct I/O on the mounted file and verify every block they wrote
// (crc32c), so racing allocations, copy-on-write over a backing file and
// reads during allocation all get exercised; the image is clean afterwards.
func TestFioVerify(t *testing.T) {
	requireTools(t, "fio")
	cases := []struct {
		name, opts string
		backing    bool
		bs         string
	}{
		{"v3-64k", "", false, "4k"},
		{"v3-4k-backing", "cluster_size=4096", true, "4k-64k"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := testDir(t)
			k := newImageKit(t, mkdir(t, dir, "img"))
			mnt := mkdir(t, dir, "mnt")
			img := k.Path(c.name)
			backing := ""
			if c.backing {
				base := k.BkPath("base.qcow2")
				qemuCreate(t, base, "128M", "", "", "")
				qemuIO(t, base, k.Rand(0, 32<<20))
				backing = "bk/base.qcow2"
			}
			qemuCreate(t, img, "128M", c.opts, backing, "qcow2")

			mountQcow2fs(t, mnt, nil, img)
			// Each job owns a 24 MiB region (offset_increment) so verification
			// is meaningful; the regions share L2 tables and refcount blocks.
			r := execute(dir, "fio",
				"--name=qcow2fs-verify",
				"--filename="+filepath.Join(mnt, c.name+".raw"),
				"--ioengine=psync", "--direct=1",
				"--rw=randrw", "--rwmixread=30",
				"--bsrange="+bsRange(c.bs), "--bs_unaligned=0",
				"--numjobs=4", "--size=24M", "--offset_increment=24M",
				"--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
				"--group_reporting", "--minimal")
			if r.Code != 0 {
				t.Fatalf("fio verify failed: %s", r)
			}
			unmountQcow2fs(t, mnt, k.Dir)
			qemuCheckClean(t, img)
		})
	}
}

// bsRange turns "4k" into "4k-4k" and leaves ranges alone.
func bsRange(bs string) string {
	for _, c := range bs {
		if c == '-' {
			return bs
		}
	}
	return bs + "-" + bs
}
