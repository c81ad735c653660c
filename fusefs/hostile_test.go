// Tests of a mount of an image with hostile snapshot entries: good snapshots
// served (a long name shortened), bad ones hidden with bounded, escaped
// warnings.

package fusefs

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// hostileSnapshotImage: snapshots "s1" (fine), a 300-character name
// (valid, too long for a file name), one with an unaligned L1
// table, one whose disk size is 2^64-1, and one whose name holds a '/'.
func hostileSnapshotImage(t *testing.T, dir string) (path, long string) {
	t.Helper()
	path = makeImage(t, dir) // snapshot s1
	// (qemu-img snapshot -c cuts names at 255 bytes; the format and
	// QEMU's reading do not.)
	long = strings.Repeat("n", 300)
	if err := qcow2.SnapshotCreate(path, long); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bad\x1b[31m", "huge", "a/b"} {
		run(t, "qemu-img", "snapshot", "-c", name, path)
	}
	bad := testenv.SnapshotEntryOffset(t, path, 2)
	b, _ := os.ReadFile(path)
	testenv.PatchFile(t, path, bad, binary.BigEndian.AppendUint64(nil, binary.BigEndian.Uint64(b[bad:])+512))
	testenv.PatchFile(t, path, testenv.SnapshotEntryOffset(t, path, 3)+40+8, bytes.Repeat([]byte{0xff}, 8)) // disk size
	return path, long
}

// A mount of an image with hostile snapshots serves the image, the good
// snapshots (the long name under a shortened file name), and warns about
// the ones it hides, with their names escaped.
func TestHostileSnapshotsTree(t *testing.T) {
	dir := t.TempDir()
	path, long := hostileSnapshotImage(t, dir)
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer img.Close()
	var warns []string
	root, views, err := buildTree([]*qcow2.Image{img}, Options{Warn: func(m string) { warns = append(warns, m) }})
	if err != nil {
		t.Fatalf("buildTree: %v", err)
	}
	for _, v := range views {
		defer v.Close()
	}
	short, shortened, err := SnapshotFile("img", long)
	if err != nil || !shortened {
		t.Fatal(err)
	}
	var names []string
	for _, f := range root.files {
		names = append(names, f.name)
	}
	if want := []string{"img.raw", "img@s1.raw", short}; !slices.Equal(names, want) {
		t.Errorf("files %q, want %q", names, want)
	}
	joined := strings.Join(warns, "\n")
	for _, want := range []string{`"bad\x1b[31m"`, "not cluster-aligned", `"huge"`, "disk size 18446744073709551615", `"a/b"`} {
		if !strings.Contains(joined, want) {
			t.Errorf("warnings lack %q:\n%s", want, joined)
		}
	}
	if strings.ContainsRune(joined, 0x1b) || len(warns) != 3 {
		t.Errorf("%d warnings, raw ESC %v:\n%s", len(warns), strings.ContainsRune(joined, 0x1b), joined)
	}

	root, views, err = buildTree([]*qcow2.Image{img}, Options{NoSnapshots: true})
	if err != nil || len(root.files) != 1 || len(views) != 0 {
		t.Errorf("NoSnapshots: %v, %d files", err, len(root.files))
	}
}

// Mounted: every listed file can be stat'ed and read; the shortened file
// holds the long-named snapshot.
func TestHostileSnapshotsMount(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	path, long := hostileSnapshotImage(t, dir)
	mnt, _, _ := mount(t, path, Options{ReadOnly: true, Warn: func(string) {}})
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	short, _, _ := SnapshotFile("img", long)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if _, err := os.Stat(filepath.Join(mnt, e.Name())); err != nil {
			t.Errorf("stat %s: %v", e.Name(), err)
		}
	}
	slices.Sort(names)
	want := []string{"img.raw", "img@s1.raw", short}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("directory %q, want %q", names, want)
	}
	got, err := os.ReadFile(filepath.Join(mnt, short))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, qemuRaw(t, path, long)) {
		t.Errorf("%s differs from QEMU's snapshot %.20s…", short, long)
	}
}

// Many unusable snapshots: a few warnings and a count, not one line each.
func TestHiddenSnapshotWarningsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
	const n = 20
	for i := 0; i < n; i++ {
		run(t, "qemu-img", "snapshot", "-c", "s"+strings.Repeat("x", i), path)
	}
	for i := 0; i < n; i++ {
		testenv.PatchFile(t, path, testenv.SnapshotEntryOffset(t, path, i)+40+8, binary.BigEndian.AppendUint64(nil, 1000)) // disk size
	}
	img, err := qcow2.Open(path, qcow2.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var warns []string
	root, views, err := buildTree([]*qcow2.Image{img}, Options{Warn: func(m string) { warns = append(warns, m) }})
	if err != nil || len(views) != 0 || len(root.files) != 1 {
		t.Fatalf("buildTree: %v, %d views, %d files", err, len(views), len(root.files))
	}
	if len(warns) != 17 || !strings.Contains(warns[16], "4 more snapshots not shown") {
		t.Errorf("%d warnings, the last: %q", len(warns), warns[len(warns)-1])
	}
}
