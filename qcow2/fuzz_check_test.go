// FuzzCheck, fuzzing the read-only check on whole images, its seed corpus of
// QEMU-made and hostile images, and TestFuzzCheckSeeds, which compares each
// seed's verdict with qemu-img check's.

package qcow2

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// FuzzCheck runs the read-only check on whole images: it must never panic,
// allocate more than allocLimit (like FuzzOpen), change the file, or give
// a verdict outside qemu-img check's exit codes. Errors must name the file.
// The seed corpus (testdata/fuzz/FuzzCheck) holds small QEMU-made images
// and the hostile ones that used to crash check; TestFuzzCheckSeeds
// compares every seed's verdict with qemu-img check and rebuilds the
// corpus with QCOW2_WRITE_FUZZ_SEEDS=1.
//
//	go test -run=NONE -fuzz=FuzzCheck -fuzztime=20s -fuzzminimizetime=5s ./qcow2
func FuzzCheck(f *testing.F) {
	p := filepath.Join(f.TempDir(), "fuzz.qcow2")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		res, err := Check(p, CheckOptions{noExternalFiles: true})
		runtime.ReadMemStats(&ms)
		if n := ms.TotalAlloc - before; n > allocLimit {
			t.Fatalf("check allocated %d MiB for a %d-byte image", n>>20, len(data))
		}
		if after, rerr := os.ReadFile(p); rerr != nil || !bytes.Equal(after, data) {
			t.Fatalf("read-only check changed the file (%v)", rerr)
		}
		if err != nil {
			if res != nil {
				t.Fatalf("Check returned a result and an error: %v", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("Check error does not name the file: %v", err)
			}
			return
		}
		switch {
		case res.Corruptions < 0 || res.Leaks < 0 || res.CheckErrors < 0:
			t.Fatalf("negative counts: %+v", res)
		case res.CorruptionsFixed != 0 || res.LeaksFixed != 0:
			t.Fatalf("a read-only check fixed something: %+v", res)
		case len(res.Messages) > maxCheckMessages+1:
			t.Fatalf("%d messages", len(res.Messages))
		case res.ImageEndOffset < 0 || res.AllocatedClusters < 0:
			t.Fatalf("result %+v", res)
		}
		clean := res.Corruptions+res.Leaks+res.CheckErrors == 0
		if code := res.ExitCode(); clean != (code == 0) {
			t.Fatalf("exit code %d for %+v", code, res)
		}
	})
}

// fuzzCheckHostileSeeds names the hostile cases in the FuzzCheck corpus.
var fuzzCheckHostileSeeds = map[string]bool{
	"refblock-unsigned-overflow": true, "refblock-bit63-only": true, "refblock0-bit63": true,
	"bitmap-dir-size-max": true, "bitmap-count-max": true, "bitmap-granularity-63": true,
	"bitmap-table-near-2^63-huge": true, "bitmap-table-near-2^63": true,
	"bitmap-in-use-table-near-2^63": true, "bitmap-data-past-eof": true,
}

// fuzzCheckSeeds builds the seed images: name -> image bytes.
func fuzzCheckSeeds(t *testing.T) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	seeds := map[string][]byte{}
	base := func(name, opts string, setup func(path string)) string {
		path := filepath.Join(dir, name+".qcow2")
		mtQemuCreate(t, path, 1<<20, opts)
		setup(path)
		return path
	}
	plain := base("plain", "cluster_size=512", func(p string) {
		mtIO(t, p, "write -P 1 0 512", "write -z 8k 4k", "write -P 2 512k 512")
	})
	bitmap := base("bitmap", "cluster_size=512", func(p string) {
		runCombined(t, dir, "qemu-img", "bitmap", "--add", "-g", "512", p, "b0")
		mtIO(t, p, "write -P 1 0 512", "write -P 2 512k 512")
	})
	base("snapshots", "cluster_size=512", func(p string) {
		mtIO(t, p, "write -P 1 0 1k")
		runCombined(t, dir, "qemu-img", "snapshot", "-c", "s1", p)
		mtIO(t, p, "write -P 2 0 512", "write -c -P 3 64k 512")
	})
	base("lazy-dirty", "cluster_size=512,lazy_refcounts=on", func(p string) {
		mtIO(t, p, "write -P 1 0 512")
		// qemu-io's abort leaves the image dirty.
		_ = mtTryIO(p, "write -P 2 256k 1k", "abort")
	})
	for _, name := range []string{"plain", "bitmap", "snapshots", "lazy-dirty"} {
		seeds[name] = mtReadFile(t, filepath.Join(dir, name+".qcow2"))
	}
	// The hostile cases of TestCheckHostileVsQEMU that crashed check,
	// allocated without bound or checked clean, on these small images.
	for _, c := range hostileCases() {
		if !fuzzCheckHostileSeeds[c.name] {
			continue
		}
		src := plain
		if c.image == "bitmap" {
			src = bitmap
		}
		p := mtCopy(t, src, filepath.Join(dir, "hostile.qcow2"))
		c.patch(newHostile(t, p))
		seeds["hostile-"+c.name] = mtReadFile(t, p)
	}
	return seeds
}

func mtReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mtTryIO runs qemu-io commands that may fail (abort).
func mtTryIO(path string, cmds ...string) error {
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	_, err := tryCmd(filepath.Dir(path), "qemu-io", append(args, path)...)
	return err
}

// decodeByteSeed reads a one-argument []byte corpus file.
func decodeByteSeed(b []byte) ([]byte, error) {
	line, ok := strings.CutPrefix(string(b), "go test fuzz v1\n")
	if !ok {
		return nil, fmt.Errorf("not a corpus file")
	}
	q, ok := strings.CutPrefix(strings.TrimSpace(line), "[]byte(")
	q, ok2 := strings.CutSuffix(q, ")")
	if !ok || !ok2 {
		return nil, fmt.Errorf("not a []byte corpus entry")
	}
	s, err := strconv.Unquote(q)
	return []byte(s), err
}

// TestFuzzCheckSeeds: the FuzzCheck corpus holds the crashing cases, and
// every seed gets qemu-img check's verdict (exit code) from Check. With
// QCOW2_WRITE_FUZZ_SEEDS=1 the corpus is rebuilt first.
func TestFuzzCheckSeeds(t *testing.T) {
	needQEMU(t)
	if os.Getenv("QCOW2_WRITE_FUZZ_SEEDS") == "1" {
		set := seedSet{}
		for name, b := range fuzzCheckSeeds(t) {
			set[name] = []any{b}
		}
		writeSeeds(t, map[string]seedSet{"FuzzCheck": set})
	}
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzCheck", "*"))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, p := range files {
		have[filepath.Base(p)] = true
	}
	want := []string{"plain", "bitmap", "snapshots", "lazy-dirty"}
	for name := range fuzzCheckHostileSeeds {
		want = append(want, "hostile-"+name)
	}
	for _, name := range want {
		if !have[name] {
			t.Errorf("FuzzCheck seed %q missing; regenerate with QCOW2_WRITE_FUZZ_SEEDS=1", name)
		}
	}
	sort.Strings(files)
	dir := t.TempDir()
	for _, p := range files {
		name := filepath.Base(p)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			img, err := decodeByteSeed(b)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			path := filepath.Join(dir, "seed.qcow2")
			if err := os.WriteFile(path, img, 0o644); err != nil {
				t.Fatal(err)
			}
			qcode, qout := qemuCheckVerdict(t, path)
			code, out, _ := ourCheckVerdict(t, path, CheckOptions{noExternalFiles: true})
			if code != qcode {
				t.Errorf("exit code %d, qemu-img check %d\nours: %.2000s\nqemu: %.2000s", code, qcode, out, qout)
			}
		})
	}
}
