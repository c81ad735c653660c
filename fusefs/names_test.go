package fusefs

import "testing"

func TestRawName(t *testing.T) {
	for _, tc := range []struct{ path, raw, snap string }{
		{"/a/vm.qcow2", "vm.raw", "vm@s1.raw"},
		{"vm.qcow", "vm.raw", "vm@s1.raw"},
		{"/a/VM.QCOW2", "VM.raw", "VM@s1.raw"},
		{"/a/disk.img", "disk.img.raw", "disk.img@s1.raw"},
		{"/a/.qcow2", ".qcow2.raw", ".qcow2@s1.raw"},
		{"/a/b.c.qcow2", "b.c.raw", "b.c@s1.raw"},
	} {
		if got := rawName(tc.path); got != tc.raw {
			t.Errorf("rawName(%q) = %q, want %q", tc.path, got, tc.raw)
		}
		if got := snapshotName(tc.path, "s1"); got != tc.snap {
			t.Errorf("snapshotName(%q) = %q, want %q", tc.path, got, tc.snap)
		}
	}
}

func TestCheckSnapshotName(t *testing.T) {
	for name, ok := range map[string]bool{"s1": true, "with space": true, "": false, "a/b": false, "a\x00": false} {
		if err := checkSnapshotName(name); (err == nil) != ok {
			t.Errorf("checkSnapshotName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
