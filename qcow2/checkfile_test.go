// Tests of OpenOptions.CheckFile: every file of the chain is seen once, in
// order and with its role, and a refusal fails the open leaving nothing open.

package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCheckFileSeesEveryFile: OpenOptions.CheckFile sees each file of the
// chain once, in opening order, with its role, write mode and the images
// that lead to it; a refusal fails the open with that error wrapped in the
// chain's context, and nothing stays open.
func TestCheckFileSeesEveryFile(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mid := filepath.Join(dir, "mid.qcow2")
	if err := Create(mid, CreateOptions{Size: 1 << 20, DataFile: "mid.data"}); err != nil {
		t.Fatal(err)
	}
	// Create cannot give an image a data file and a backing file at once;
	// the top image has the middle one as its backing file.
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{BackingFile: "mid.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	// The middle image's own backing file: rebase it onto base.raw (its
	// data file stays).
	if err := Rebase(mid, "base.raw", "raw", true, MaintenanceOptions{}); err != nil {
		t.Fatal(err)
	}

	type seen struct {
		role, path string
		write      bool
		namedBy    []string
	}
	want := []seen{
		{RoleImage, top, true, nil},
		{RoleBacking, mid, false, []string{top}},
		{RoleDataFile, filepath.Join(dir, "mid.data"), false, []string{top, mid}},
		{RoleBacking, base, false, []string{top, mid}},
	}
	for _, ro := range []bool{false, true} {
		var got []seen
		img, err := Open(top, OpenOptions{ReadOnly: ro, CheckFile: func(f OpenedFile) error {
			s := seen{role: f.Role, path: f.Path, write: f.Write}
			for _, n := range f.NamedBy {
				s.namedBy = append(s.namedBy, n.Path)
				if n.Stat == nil || n.Stat.Mode()&os.ModeType != 0 {
					t.Errorf("%s: namer %s has no fstat", f.Path, n.Path)
				}
			}
			if st, err := f.File.Stat(); err != nil || !st.Mode().IsRegular() {
				t.Errorf("%s: descriptor not usable: %v", f.Path, err)
			}
			got = append(got, s)
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		img.Close()
		w := slices.Clone(want)
		w[0].write = !ro
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("read-only %v: CheckFile saw\n%v\nwant\n%v", ro, got, w)
		}
	}

	// Refusing any one file fails the open with that error, and every
	// descriptor opened so far is closed again.
	errNo := errors.New("refused by the test")
	for _, victim := range want {
		before := openFDs(t)
		_, err := Open(top, OpenOptions{ReadOnly: true, CheckFile: func(f OpenedFile) error {
			if f.Path == victim.path {
				return errNo
			}
			return nil
		}})
		if !errors.Is(err, errNo) {
			t.Errorf("refusing %s: open returned %v", victim.path, err)
			continue
		}
		if victim.role != RoleImage && !errContains(err, top+": backing") {
			t.Errorf("refusing %s: %v does not say which image led to it", victim.path, err)
		}
		if victim.role == RoleDataFile && !errContains(err, mid+": external data file") {
			t.Errorf("refusing %s: %v does not say it is mid's data file", victim.path, err)
		}
		if after := openFDs(t); after != before {
			t.Errorf("refusing %s: %d descriptors open before, %d after", victim.path, before, after)
		}
	}
}

func errContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
