// Unit tests of parsing /proc/self/mountinfo lines and unescaping their
// fields.

package mounts

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMountinfo(t *testing.T) {
	const in = `22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
95 22 0:45 / /mnt/my\040disk ro,nosuid,nodev,noexec,relatime shared:50 master:3 - fuse.qcow2fs /srv/vm\040images/a.qcow2 ro,user_id=0,group_id=0
96 22 0:46 / /mnt/x rw,relatime - fuse.qcow2fs /srv/a.qcow2,/srv/b.qcow2 rw,user_id=0
`
	got, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d entries, want 3", len(got))
	}
	want := Entry{ID: 95, Dev: unix.Mkdev(0, 45), Point: "/mnt/my disk", Options: "ro,nosuid,nodev,noexec,relatime", FSType: "fuse.qcow2fs", Source: "/srv/vm images/a.qcow2", SuperOptions: "ro,user_id=0,group_id=0"}
	if got[1] != want {
		t.Errorf("got %+v, want %+v", got[1], want)
	}
	if e, ok := Last(got, "/mnt/x"); !ok || e.Source != "/srv/a.qcow2,/srv/b.qcow2" {
		t.Errorf("Last: %+v %v", e, ok)
	}
	if _, err := Parse("garbage line\n"); err == nil {
		t.Error("malformed line accepted")
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`plain`: "plain", `a\040b`: "a b", `tab\011`: "tab\t", `back\134slash`: `back\slash`, `bad\9x`: `bad\9x`, `end\04`: `end\04`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
