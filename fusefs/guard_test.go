// Tests that a panic in a handler answers EIO, is logged, and puts only that
// image's files out of service.

package fusefs

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/qcow2fs/qcow2fs/qcow2"
)

// A panic in a handler answers EIO, is logged with the file, offset and
// stack, and puts every file of that image (snapshot views included) out
// of service, while the other images' files keep working.
func TestGuardPutsImageOutOfService(t *testing.T) {
	dir := t.TempDir()
	path := makeImage(t, dir)
	other := filepath.Join(dir, "other.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", other, "1M")
	var imgs []*qcow2.Image
	for _, p := range []string{path, other} {
		img, err := qcow2.Open(p, qcow2.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		imgs = append(imgs, img)
	}
	var logBuf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logBuf)
	root, views, err := buildTree(imgs, Options{Log: log, InfoText: func(*qcow2.Image) []byte { return []byte("info") }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, v := range views {
			v.Close()
		}
	}()
	byName := map[string]*imageFile{}
	for _, f := range root.files {
		byName[f.name] = f
	}
	img, snap, oth := byName["img.raw"], byName["img@s1.raw"], byName["other.raw"]
	if img == nil || snap == nil || oth == nil {
		t.Fatalf("files: %v", byName)
	}

	errno := func() (errno syscall.Errno) {
		defer img.guard("read", 4096, &errno)
		panic("boom")
	}()
	if errno != syscall.EIO {
		t.Fatalf("a panic answered %v, want EIO", errno)
	}
	if msg := logBuf.String(); !strings.Contains(msg, "panic in read of img.raw at offset 4096: boom") || !strings.Contains(msg, "goroutine") {
		t.Errorf("the panic is not logged with its file, offset and stack:\n%s", msg)
	}
	if !root.health.failed(imgs[0]) || root.health.failed(imgs[1]) {
		t.Errorf("failed: img %v, other %v; want true, false", root.health.failed(imgs[0]), root.health.failed(imgs[1]))
	}
	buf := make([]byte, 512)
	ctx := context.Background()
	for _, f := range []*imageFile{img, snap} {
		if _, e := f.Read(ctx, nil, buf, 0); e != syscall.EIO {
			t.Errorf("read of %s after the panic: %v, want EIO", f.name, e)
		}
		if _, e := f.Lseek(ctx, nil, 0, seekData); e != syscall.EIO {
			t.Errorf("lseek of %s after the panic: %v, want EIO", f.name, e)
		}
	}
	for _, inf := range root.infos {
		want := syscall.Errno(0)
		if inf.img == imgs[0] {
			want = syscall.EIO
		}
		if _, _, e := inf.Open(ctx, syscall.O_RDONLY); e != want {
			t.Errorf("open of %s after the panic: %v, want %v", inf.name, e, want)
		}
	}
	if _, e := oth.Read(ctx, nil, buf, 0); e != 0 {
		t.Errorf("read of the other image after the panic: %v", e)
	}
}
