// Tests that broken or unsupported images make mount and info fail with one
// line naming the file, never a panic, leaving no mount or daemon behind.

package integration

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TestBadImages: broken or unsupported images make `qcow2fs mount` (and
// `qcow2fs info`) exit non-zero with one clear line naming the file, never a
// panic, and leave neither a mount nor a daemon behind.
func TestBadImages(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	good := k.Path("good")
	plain("", 64<<10, 4<<20)(k, good)

	// Each builder gets a fresh valid v3 image at path to break.
	bad := []struct {
		name  string
		build func(path string)
	}{
		{"bad-magic", func(p string) { testenv.PatchFile(t, p, 0, []byte("XFI\xfb")) }},
		{"truncated-header", func(p string) {
			if err := os.Truncate(p, 50); err != nil {
				t.Fatal(err)
			}
		}},
		{"empty", func(p string) {
			if err := os.Truncate(p, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"l1-past-eof", func(p string) { testenv.PatchFile(t, p, 40, be64(1<<40)) }},
		{"l1-unaligned", func(p string) { testenv.PatchFile(t, p, 40, be64(0x30008)) }},
		{"unknown-incompat-bit", func(p string) { testenv.PatchFile(t, p, 72, be64(1<<40)) }},
		{"cluster-bits-30", func(p string) { testenv.PatchFile(t, p, 20, be32(30)) }},
		{"encrypted-luks", func(p string) {
			// qemu-img times PBKDF2 on the thread's CPU clock and gives up
			// ("Unable to get accurate CPU usage") on a starved machine.
			var out []byte
			var err error
			for try := 0; try < 8; try++ {
				_ = os.Remove(p)
				out, err = exec.Command("qemu-img", "create", "-q", "--object", "secret,id=sec0,data=secret",
					"-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", p, "4M").CombinedOutput()
				if err == nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Fatalf("qemu-img create (LUKS): %v\n%s", err, out)
		}},
		{"encrypted-aes", func(p string) {
			_ = os.Remove(p)
			run(t, "qemu-img", "create", "-q", "--object", "secret,id=sec0,data=secret",
				"-f", "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0", p, "4M")
		}},
	}

	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			path := k.Path(b.name)
			qemuCreate(t, path, "4M", "", "", "")
			qemuIO(t, path, "write -P 0x33 0 128k")
			b.build(path)
			mnt := mkdir(t, dir, "mnt-"+b.name)

			assertCleanFailure(t, path, execute("", qcow2fsBin, "mount", "--ro", path, mnt))
			assertNothingLeft(t, mnt, path)

			// A good image beside the bad one does not make the mount succeed.
			assertCleanFailure(t, path, execute("", qcow2fsBin, "mount", "--ro", good, path, mnt))
			assertNothingLeft(t, mnt, path)

			assertCleanFailure(t, path, execute("", qcow2fsBin, "info", path))
		})
	}
}

// assertCleanFailure: the command failed with exactly one stderr line that
// names path, and did not panic.
func assertCleanFailure(t *testing.T, path string, r result) {
	t.Helper()
	msg := strings.TrimSpace(r.Stderr)
	switch {
	case r.Code <= 0:
		t.Errorf("want a non-zero exit for %s, got %s", path, r)
	case strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine "):
		t.Errorf("panicked on %s: %s", path, r)
	case strings.Count(msg, "\n") != 0:
		t.Errorf("want one error line on stderr, got %d:\n%s", strings.Count(msg, "\n")+1, msg)
	case !strings.Contains(msg, path) && !strings.Contains(msg, filepath.Base(path)):
		t.Errorf("error does not name %s: %q", path, msg)
	}
}

// assertNothingLeft: no mount at mnt and no process still running for path.
func assertNothingLeft(t *testing.T, mnt, path string) {
	t.Helper()
	if _, ok := mounts.Find(mnt); ok {
		t.Errorf("a failed mount left %s mounted", mnt)
		quietRun("fusermount3", "-u", "-z", mnt)
	}
	var pids []int
	for i := 0; i < 20; i++ { // a daemon on its way out gets a second
		if pids = pidsWithCmdline(path); len(pids) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("a failed mount left processes running for %s: %v", path, pids)
}
