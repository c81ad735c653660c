// Unit tests of which mount uses an image (imageSet.usedBy) and of names
// made safe for one terminal line.

package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

func TestImageSetUsedBy(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("QFI\xfb"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	comma := mk("a,b.qcow2") // one image with a comma in its name
	a := mk("a")             // another image, named like the comma's left side
	other := mk("other.qcow2")
	link := filepath.Join(dir, "hard.qcow2")
	if err := os.Link(other, link); err != nil {
		t.Fatal(err)
	}
	mount := func(src string, rs *runState) mountHealth {
		return mountHealth{Entry: mounts.Entry{Point: "/mnt/x", FSType: fsType, Source: src}, RS: rs, State: stateServing}
	}
	for _, tc := range []struct {
		name   string
		images []string
		h      mountHealth
		want   string
	}{
		{"comma path mounted, same image again", []string{comma}, mount(comma, nil), comma},
		{"comma path mounted, its left side is another image", []string{a}, mount(comma, nil), ""},
		{"two images joined", []string{other}, mount(a+","+other, nil), other},
		{"two images joined, neither", []string{comma}, mount(a+","+other, nil), ""},
		{"directory source", []string{other}, mount(dir, nil), other},
		{"run state lists it", []string{comma}, mount("whatever", &runState{Images: []string{comma}}), comma},
		{"run state, another name of the same file", []string{link}, mount("whatever", &runState{Images: []string{other}}), link},
		{"run state lists others", []string{a}, mount(comma, &runState{Images: []string{comma}}), ""},
		{"overlay file", []string{other}, mount("x", &runState{Images: []string{a}, Overlay: other}), other},
	} {
		if got := newImageSet(tc.images).usedBy(tc.h, "/new/source"); got != tc.want {
			t.Errorf("%s: usedBy = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestDisplayName(t *testing.T) {
	for in, want := range map[string]string{
		"/mnt/vm":          "/mnt/vm",
		"/mnt/my disk":     "/mnt/my disk",
		"/mnt/ünïcode":     "/mnt/ünïcode",
		"/mnt/new\nline":   `"/mnt/new\nline"`,
		"/mnt/tab\there":   `"/mnt/tab\there"`,
		"/mnt/\x1b[31mred": `"/mnt/\x1b[31mred"`,
		"/mnt/bad\xffutf8": `"/mnt/bad\xffutf8"`,
		`"quoted`:          `"\"quoted"`,
	} {
		if got := displayName(in); got != want {
			t.Errorf("displayName(%q) = %s, want %s", in, got, want)
		}
	}
}
