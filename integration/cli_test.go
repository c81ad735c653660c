// Tests of CLI basics: --version, info in both forms on a chain with a
// snapshot (agreeing with qemu-img), and --no-snapshots.

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestCLIBasics: --version, `info` in both output forms on a backing chain
// with a snapshot (agreeing with qemu-img, writing nothing), and a mount
// with --no-snapshots hiding the snapshot files.
func TestCLIBasics(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	base := k.BkPath("base.qcow2")
	qemuCreate(t, base, "16M", "cluster_size=4096", "", "")
	qemuIO(t, base, k.Rand(0, 1<<20))
	img := k.Path("top")
	qemuCreate(t, img, "32M", "", "bk/base.qcow2", "qcow2")
	qemuIO(t, img, k.Rand(1<<20, 100))
	run(t, "qemu-img", "snapshot", "-c", "S", img)
	before := testenv.HashTree(t, k.Dir)

	t.Run("version", func(t *testing.T) {
		if out := strings.TrimSpace(run(t, qcow2fsBin, "--version")); out == "" {
			t.Errorf("--version printed nothing")
		}
	})

	t.Run("info-json", func(t *testing.T) {
		var info struct {
			Filename    string `json:"filename"`
			VirtualSize int64  `json:"virtual-size"`
			ClusterSize int64  `json:"cluster-size"`
			Snapshots   []struct {
				Name string `json:"name"`
			} `json:"snapshots"`
			Backing *struct {
				Filename    string `json:"filename"`
				VirtualSize int64  `json:"virtual-size"`
				ClusterSize int64  `json:"cluster-size"`
			} `json:"backing-image"`
		}
		out := run(t, qcow2fsBin, "info", "--output", "json", img)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("info --output json is not JSON: %v\n%s", err, out)
		}
		if info.VirtualSize != 32<<20 || info.ClusterSize != 64<<10 {
			t.Errorf("virtual-size %d, cluster-size %d; want %d, %d", info.VirtualSize, info.ClusterSize, 32<<20, 64<<10)
		}
		if len(info.Snapshots) != 1 || info.Snapshots[0].Name != "S" {
			t.Errorf("snapshots %+v, want one named S", info.Snapshots)
		}
		if info.Backing == nil {
			t.Fatalf("no backing-image layer in\n%s", out)
		}
		if info.Backing.VirtualSize != 16<<20 || info.Backing.ClusterSize != 4096 || !strings.HasSuffix(info.Backing.Filename, "base.qcow2") {
			t.Errorf("backing layer %+v, want base.qcow2 of 16 MiB with 4 KiB clusters", *info.Backing)
		}
	})

	t.Run("info-human", func(t *testing.T) {
		out := run(t, qcow2fsBin, "info", img)
		for _, want := range []string{"top.qcow2", "base.qcow2"} {
			if !strings.Contains(out, want) {
				t.Errorf("info output does not mention %s:\n%s", want, out)
			}
		}
	})

	t.Run("no-snapshots", func(t *testing.T) {
		mnt := mkdir(t, dir, "mnt")
		mountQcow2fs(t, mnt, []string{"--ro", "--no-snapshots"}, img)
		entries, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		if strings.Join(names, " ") != "top.info top.raw" {
			t.Errorf("--no-snapshots mount lists %v, want [top.info top.raw]", names)
		}
		compareFiles(t, filepath.Join(mnt, "top.raw"), qemuRawOf(t, img, filepath.Join(dir, "top-oracle.raw")))
		unmountQcow2fs(t, mnt, k.Dir)
	})

	testenv.SameHashes(t, before, testenv.HashTree(t, k.Dir))
}

// qemuRawOf converts img to the raw file out and returns out.
func qemuRawOf(t *testing.T, img, out string) string {
	t.Helper()
	qemuToRaw(t, img, "", out)
	return out
}
