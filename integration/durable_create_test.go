// qcow2fs create makes the new file's name durable (an fsync of its
// directory): a live external snapshot sends fsynced writes into the new
// overlay at once, and a crash must not lose the file they live in.

package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestCreateSyncsDirectory traces qcow2fs create (and create with an
// external data file in another directory) and checks that each directory
// that gained a file is opened and fsynced after the image is complete.
func TestCreateSyncsDirectory(t *testing.T) {
	requireTools(t, "strace")
	dir := t.TempDir()
	other := filepath.Join(dir, "data")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		dirs []string
	}{
		{"plain", []string{"create", filepath.Join(dir, "a.qcow2"), "64M"}, []string{dir}},
		{"data-file", []string{"create", "-o", "data_file=" + filepath.Join(other, "b.data"), filepath.Join(dir, "b.qcow2"), "64M"}, []string{dir, other}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "trace")
			run(t, "strace", append([]string{"-f", "-qq", "-o", log, "-e", "trace=openat,fsync", qcow2fsBin}, tc.args...)...)
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range tc.dirs {
				// openat(AT_FDCWD, "DIR", O_RDONLY|O_CLOEXEC) = N ... fsync(N) = 0
				open := regexp.MustCompile(`openat\(AT_FDCWD, "` + regexp.QuoteMeta(d) + `", O_RDONLY[^)]*\) = (\d+)`)
				m := open.FindAllSubmatchIndex(b, -1)
				synced := false
				for _, at := range m {
					fd := string(b[at[2]:at[3]])
					if regexp.MustCompile(`fsync\(` + fd + `\)\s+= 0`).Match(b[at[1]:]) {
						synced = true
					}
				}
				if !synced {
					t.Errorf("no fsync of directory %s after creating in it; trace:\n%s", d, b)
				}
			}
		})
	}
}
