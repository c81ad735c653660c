// Tests of Server.SwitchImage: a resume serves a new layer (an overlay over
// the image) through the same file node only when allowed.

package fusefs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
	"github.com/qcow2fs/qcow2fs/qcow2"
)

// TestSwitchImage: a resume refuses another file in an image's place
// unless SwitchImage allowed it; then the same file node (same name, an
// open descriptor kept across) serves the new layer — here an overlay
// whose backing file is the image, which takes the writes while the image
// stays as it was.
func TestSwitchImage(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	path := makeImage(t, dir)
	overlay := filepath.Join(dir, "ov.qcow2")
	img, err := qcow2.Open(path, qcow2.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, err := Mount(mnt, []*qcow2.Image{img}, Options{NoSnapshots: true})
	if err != nil {
		img.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmount(t, srv)
		for _, i := range srv.Images() {
			i.Flush()
			i.Close()
		}
	})
	f, err := os.OpenFile(filepath.Join(mnt, "img.raw"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if err := srv.SwitchImage(0); err == nil {
		t.Fatal("SwitchImage on a mount that is not suspended succeeded")
	}
	if err := srv.Suspend(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := qcow2.Create(overlay, qcow2.CreateOptions{BackingFile: "img.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	open := func(p string) *qcow2.Image {
		t.Helper()
		n, err := qcow2.Open(p, qcow2.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ov := open(overlay)
	if _, err := srv.Resume([]*qcow2.Image{ov}); err == nil {
		t.Fatal("resume with another file in the image's place, without SwitchImage, succeeded")
	}
	if err := srv.SwitchImage(0); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Resume([]*qcow2.Image{ov}); err != nil {
		ov.Close()
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 4096)) {
		t.Fatalf("through the overlay the image's data does not show (%v)", err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x11}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a write after the switch changed the image, not the overlay")
	}
	if srv.Images()[0].Path() != overlay {
		t.Fatalf("the mount serves %s, want %s", srv.Images()[0].Path(), overlay)
	}
}
