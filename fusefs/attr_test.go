// Tests that the mounted files carry the image file's owner, group and mode
// (read-only ones without write bits) and that Options.Perm narrows them.

package fusefs

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// superOptions returns the file system's own options of the mount at mnt
// (the field after the source in /proc/self/mountinfo).
func superOptions(t *testing.T, mnt string) string {
	t.Helper()
	e, ok := mounts.Find(mnt)
	if !ok {
		t.Fatalf("%s not in /proc/self/mountinfo", mnt)
	}
	return e.SuperOptions
}

func statOwnerMode(t *testing.T, path string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return sys.Uid, sys.Gid, st.Mode().Perm()
}

// TestFilesCarryTheImageAttributes: every file of an image shows the image
// file's owner, group and mode (from the descriptor, followed while
// mounted), without write bits for snapshots and info files; allow_other
// brings default_permissions along.
func TestFilesCarryTheImageAttributes(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	if err := os.Chown(path, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o640)
	mnt, _, _ := mount(t, path, Options{AllowOther: true, InfoText: func(*qcow2.Image) []byte { return []byte("info\n") }})
	for _, tc := range []struct {
		name string
		mode os.FileMode
	}{{"img.raw", 0o640}, {"img@s1.raw", 0o440}, {"img.info", 0o440}} {
		uid, gid, mode := statOwnerMode(t, filepath.Join(mnt, tc.name))
		if uid != 4242 || gid != 4343 || mode != tc.mode {
			t.Errorf("%s: %d:%d %v, want 4242:4343 %v", tc.name, uid, gid, mode, tc.mode)
		}
	}
	if opts := superOptions(t, mnt); !strings.Contains(opts, "default_permissions") || !strings.Contains(opts, "allow_other") {
		t.Errorf("allow_other mount has options %s, want default_permissions and allow_other", opts)
	}
	// A chmod of the image shows once the cached attributes expire.
	os.Chmod(path, 0o600)
	time.Sleep(attrTimeout + 200*time.Millisecond)
	if _, _, mode := statOwnerMode(t, filepath.Join(mnt, "img.raw")); mode != 0o600 {
		t.Errorf("after chmod 0600 of the image: img.raw %v", mode)
	}
}

// TestPermNarrows: Options.Perm narrows the mode the files show, also after
// a chmod through the mount, which cannot grant more than Perm allows.
func TestPermNarrows(t *testing.T) {
	testenv.RequireFUSE(t)
	path := makeImage(t, t.TempDir())
	os.Chmod(path, 0o664)
	var mu sync.Mutex
	var asked []uint32
	perm := func(img *qcow2.Image, uid, gid, mode uint32) uint32 {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, mode)
		return 0o640
	}
	mnt, _, _ := mount(t, path, Options{Perm: perm})
	raw := filepath.Join(mnt, "img.raw")
	if _, _, mode := statOwnerMode(t, raw); mode != 0o640 {
		t.Errorf("img.raw %v, want 0640 (0664 narrowed)", mode)
	}
	if _, _, mode := statOwnerMode(t, filepath.Join(mnt, "img@s1.raw")); mode != 0o440 {
		t.Errorf("img@s1.raw %v, want 0440", mode)
	}
	if err := os.Chmod(raw, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, _, mode := statOwnerMode(t, raw); mode != 0o640 {
		t.Errorf("after chmod 0666 through the mount: %v, want 0640", mode)
	}
	if err := os.Chmod(raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, mode := statOwnerMode(t, raw); mode != 0o600 {
		t.Errorf("after chmod 0600 through the mount: %v, want 0600", mode)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) == 0 || asked[len(asked)-1] != 0o600 {
		t.Errorf("Perm was asked about %o, want the chmod'ed 0600 last", asked)
	}
}
