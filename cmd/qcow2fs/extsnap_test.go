// Unit tests of external snapshots' helpers (overlay backing name and
// options, switched layers, paths under a mount) and an offline external
// snapshot.

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

func TestOverlayBackingName(t *testing.T) {
	tests := []struct{ overlay, image, want string }{
		{"/a/ov.qcow2", "/a/vm.qcow2", "vm.qcow2"},
		{"/b/ov.qcow2", "/a/vm.qcow2", "/a/vm.qcow2"},
		{"/a/sub/ov.qcow2", "/a/vm.qcow2", "/a/vm.qcow2"},
	}
	for _, tt := range tests {
		if got := overlayBackingName(tt.overlay, tt.image); got != tt.want {
			t.Errorf("overlayBackingName(%q, %q) = %q, want %q", tt.overlay, tt.image, got, tt.want)
		}
	}
}

func TestOverlayCreateOptions(t *testing.T) {
	in := &qcow2.Info{Filename: "/x/vm.qcow2", VirtualSize: 3 << 30, ClusterSize: 1 << 21, ExtendedL2: true}
	o := overlayCreateOptions("/x/top.qcow2", in)
	if o.Size != in.VirtualSize || o.ClusterSize != in.ClusterSize || !o.ExtendedL2 || o.BackingFile != "vm.qcow2" || o.BackingFormat != "qcow2" {
		t.Fatalf("overlayCreateOptions = %+v", o)
	}
}

func TestSwitchedLayers(t *testing.T) {
	tests := []struct {
		images, mounted []string
		want            int
	}{
		{[]string{"/a"}, nil, 0},
		{[]string{"/a"}, []string{"/a"}, 0},
		{[]string{"/ov"}, []string{"/a"}, 1},
		{[]string{"/ov", "/b"}, []string{"/a", "/b"}, 1},
		{[]string{"/ov"}, []string{"/a", "/b"}, 0}, // malformed: ignored
	}
	for _, tt := range tests {
		got := switchedLayers(&runState{Images: tt.images, Mounted: tt.mounted})
		if len(got) != tt.want {
			t.Errorf("switchedLayers(%q, %q) = %q, want %d", tt.images, tt.mounted, got, tt.want)
		}
	}
}

// TestSnapshotExternalOffline: on an image nobody has open, the command
// creates the overlay with the image's settings and the image's mode, and
// never overwrites a file.
func TestSnapshotExternalOffline(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "vm.qcow2")
	if err := qcow2.Create(base, qcow2.CreateOptions{Size: 8 << 20, ClusterSize: 16384}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o640); err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(dir, "ov.qcow2")
	if err := snapshotExternal(ov, base, time.Second, true); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(ov, qcow2.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	in := img.Info()
	img.Close()
	if in.VirtualSize != 8<<20 || in.ClusterSize != 16384 || in.BackingFile != "vm.qcow2" || in.BackingFormat != "qcow2" {
		t.Fatalf("overlay: size %d cluster %d backing %q format %q", in.VirtualSize, in.ClusterSize, in.BackingFile, in.BackingFormat)
	}
	if st, err := os.Stat(ov); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("overlay mode: %v %v, want the image's 0640", st.Mode(), err)
	}
	if err := snapshotExternal(ov, base, time.Second, true); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("onto an existing overlay: %v, want refused", err)
	}
	if err := snapshotExternal(base, base, time.Second, true); err == nil || !strings.Contains(err.Error(), "image itself") {
		t.Fatalf("onto the image itself: %v, want refused", err)
	}
	if err := snapshotExternal(filepath.Join(dir, "nodir", "ov.qcow2"), base, time.Second, true); err == nil {
		t.Fatal("into a missing directory: no error")
	}
}

func TestUnderMount(t *testing.T) {
	tests := []struct {
		path, mnt string
		want      bool
	}{
		{"/mnt/vm/x.qcow2", "/mnt/vm", true},
		{"/mnt/vm", "/mnt/vm", true},
		{"/mnt/vm/../x.qcow2", "/mnt/vm", false},
		{"/mnt/vm2/x.qcow2", "/mnt/vm", false},
		{"/mnt/..x/y", "/mnt", true},
		{"/images/x.qcow2", "/mnt/vm", false},
	}
	for _, tt := range tests {
		if got := underMount(tt.path, tt.mnt); got != tt.want {
			t.Errorf("underMount(%q, %q) = %v, want %v", tt.path, tt.mnt, got, tt.want)
		}
	}
}
