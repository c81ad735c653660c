// Tests that the cache size takes the common size grammar as a flag and as
// an -o option, and that a bad size is a usage error.

package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// TestCacheSizeGrammar: the mount's cache size takes the size grammar of
// every other size on the command line, as a flag and as an -o option; a
// bad size is refused (exit code 2) with a message naming the flag.
func TestCacheSizeGrammar(t *testing.T) {
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	img := k.Path("vm")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	mnt := mkdir(t, dir, "mnt")
	for _, flags := range [][]string{
		{"--cache-size", "64M"},
		{"-o", "cache_size=64M"},
		{"--cache-size=67108864"},
		{"--cache-size=1.5M"},
	} {
		mountQcow2fs(t, mnt, flags, img)
		if got := listDir(t, mnt); strings.Join(got, " ") != "vm.info vm.raw" {
			t.Errorf("%q: mount lists %v", flags, got)
		}
		unmountQcow2fs(t, mnt, img)
	}
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--cache-size=64Q"}, `--cache-size: invalid size "64Q"`},
		{[]string{"--cache-size", "-1M"}, `--cache-size: negative size "-1M"`},
		{[]string{"-o", "cache_size=9E"}, `mount option "cache_size=9E": size "9E" is too large`},
	} {
		args := append(append([]string{"mount"}, tc.flags...), img, mnt)
		r := execute("", qcow2fsBin, args...)
		if r.Code != 2 || !strings.Contains(r.Stderr, tc.want) {
			t.Errorf("qcow2fs %s: %s\nwant exit 2 and %q", strings.Join(args, " "), r, tc.want)
		}
		if _, ok := mounts.Find(mnt); ok {
			t.Fatalf("qcow2fs %s mounted %s", strings.Join(args, " "), filepath.Base(mnt))
		}
	}
}
