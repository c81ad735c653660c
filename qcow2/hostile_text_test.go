// Text written in images (snapshot names and IDs, backing and data file
// names) reaching errors and messages, and the backing chain depth limit.

package qcow2

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// noControl fails if text holds a raw control character (terminal escapes,
// NUL) or is longer than limit bytes.
func noControl(t *testing.T, what, text string, limit int) {
	t.Helper()
	if len(text) > limit {
		t.Errorf("%s is %d bytes long (limit %d): %.200q…", what, len(text), limit, text)
	}
	for _, r := range text {
		if r < 0x20 && r != '\n' || r == 0x7f {
			t.Errorf("%s holds the raw control character %U: %.300q", what, r, text)
			return
		}
	}
}

// Text from the image (snapshot names and IDs, backing and data file names)
// reaches errors, warnings and check messages bounded and with its control
// characters escaped.
func TestImageTextEscaped(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	p := twoSnapshotImage(t, dir)
	// s1 gets a 65535-byte name with terminal escapes and a NUL, and an
	// unaligned L1 table; its ID gets an escape too.
	evil := "\x1b]0;pwned\x07\x1b[2J" + strings.Repeat("n", 65535)
	evil = evil[:65535-5] + "\x1b[31m"
	qemuImg(t, dir, "snapshot", "-c", evil, "disk.qcow2")
	ents := snapshotEntries(t, p)
	e := ents[2]
	orig, _ := os.ReadFile(p)
	l1 := binary.BigEndian.Uint64(orig[e:])
	testenv.PatchFile(t, p, e+snapL1Offset, be64(l1+512))
	idLen := int64(binary.BigEndian.Uint16(orig[e+snapIDLen:]))
	extraLen := int64(binary.BigEndian.Uint32(orig[e+snapExtraLen:]))
	testenv.PatchFile(t, p, e+snapshotHeaderLen+extraLen+idLen+20, []byte{0})
	testenv.PatchFile(t, p, e+snapshotHeaderLen+extraLen, []byte{0x1b})

	img, err := Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %.500v", err)
	}
	sn := img.Snapshots()[2]
	noControl(t, "Problem", sn.Problem, 512)
	_, err = img.OpenSnapshot(sn.Name)
	if err == nil {
		t.Fatal("OpenSnapshot of the bad entry succeeded")
	}
	noControl(t, "OpenSnapshot error", err.Error(), 1024)
	t.Log(err)
	_, err = img.OpenSnapshot(evil + "x")
	noControl(t, "OpenSnapshot error (no such name)", err.Error(), 1024)
	img.Close()
	res, err := Check(p, CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 2 {
		t.Errorf("Check exit code %d", res.ExitCode())
	}
	for _, m := range res.Messages {
		noControl(t, "check message", m, 1024)
	}
	if err := SnapshotDelete(p, sn.Name); err == nil {
		t.Error("deleting the bad snapshot succeeded")
	} else {
		noControl(t, "SnapshotDelete error", err.Error(), 1024)
	}
	if err := SnapshotCreate(p, "s2"); err == nil {
		t.Error("a second s2 was created")
	} else {
		noControl(t, "SnapshotCreate error", err.Error(), 1024)
	}

	// Backing and data file names.
	for _, c := range []struct{ opts, ext string }{{"", "backing"}, {"data_file=data.raw", "data"}} {
		d := t.TempDir()
		// 900 bytes of directories (a name is at most 255 bytes).
		long := "\x1b[2J" + strings.Repeat("/"+strings.Repeat("b", 220), 4)
		name := long + "/base.qcow2"
		var q string
		if c.ext == "backing" {
			if err := os.MkdirAll(filepath.Join(d, long), 0o755); err != nil {
				t.Fatal(err)
			}
			createImage(t, d, name, 1*mib, "")
			q = createImage(t, d, "top.qcow2", 1*mib, "", "-b", name, "-F", "qcow2")
			os.Remove(filepath.Join(d, name))
		} else {
			q = createImage(t, d, "top.qcow2", 1*mib, c.opts)
			off := findExtension(t, q, ExtDataFile)
			testenv.PatchFile(t, q, off+8, []byte("\x1b[2Jx"))
			os.Remove(filepath.Join(d, "data.raw"))
		}
		var warns []string
		img, err := Open(q, OpenOptions{ReadOnly: true})
		if err == nil {
			img.Close()
			t.Fatalf("%s: Open succeeded", c.ext)
		}
		noControl(t, c.ext+" error", err.Error(), 1024+len(d))
		t.Logf("%s: %s", c.ext, err)
		img, err = Open(q, OpenOptions{ReadOnly: true, NoBacking: true, Warn: func(m string) { warns = append(warns, m) }})
		if c.ext == "backing" {
			if err != nil {
				t.Fatal(err)
			}
			img.Close()
		} else if err != nil {
			warns = append(warns, err.Error())
		}
		for _, w := range warns {
			noControl(t, c.ext+" warning", w, 1024+len(d))
		}
	}
}

// The chain depth limit: 64 images open, 65 are refused with an error that
// names the top and the deepest file only.
func TestChainDepthLimit(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	var names []string
	for i := 0; i <= maxChainDepth; i++ {
		name := filepath.Join(dir, "layer"+strconv.Itoa(i)+".qcow2")
		args := []string{"create", "-q", "-f", "qcow2"}
		if i > 0 {
			args = append(args, "-u", "-b", filepath.Base(names[i-1]), "-F", "qcow2")
		}
		qemuImg(t, dir, append(args, name, "1M")...)
		names = append(names, name)
	}
	// names[64] on top of 64 more: 65 images.
	img, err := Open(names[maxChainDepth-1], OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("a chain of %d images: %v", maxChainDepth, err)
	}
	if n := len(img.Files()); n != maxChainDepth {
		t.Errorf("Files() lists %d files", n)
	}
	img.Close()
	_, err = Open(names[maxChainDepth], OpenOptions{ReadOnly: true})
	if err == nil {
		t.Fatalf("a chain of %d images opened", maxChainDepth+1)
	}
	msg := err.Error()
	t.Log(msg)
	if !strings.Contains(msg, names[maxChainDepth]+":") || !strings.Contains(msg, names[0]) || !strings.Contains(msg, "deeper than 64") {
		t.Errorf("error does not name the top and the deepest file and the limit: %s", msg)
	}
	for _, mid := range names[1:maxChainDepth] {
		if strings.Contains(msg, mid+":") || strings.Contains(msg, mid+" ") || strings.HasSuffix(msg, mid) {
			t.Errorf("error names the middle file %s: %s", mid, msg)
			break
		}
	}
}
