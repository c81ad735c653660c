// The house rules of the tree, checked on every go test: a file's first
// line is its comment, and a long file explains itself in that comment.

package layout

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// longFile is the line count above which a file must say why it is long.
const longFile = 500

func TestEveryFileSaysWhatItHolds(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from %s: %v", root, err)
	}
	n := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		n++
		rel, _ := filepath.Rel(root, path)
		header, lines, err := readHeader(path)
		if err != nil {
			return err
		}
		if header == "" {
			t.Errorf("%s: the first line is not a comment saying what the file holds", rel)
			return nil
		}
		if lines > longFile && !strings.Contains(header, "long because") {
			t.Errorf("%s: %d lines, and its top comment does not say why it is long (\"... long because ...\")", rel, lines)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Fatalf("only %d Go files found under %s: wrong root?", n, root)
	}
	t.Logf("%d Go files checked", n)
}

// readHeader returns the comment block that opens the file (build
// constraints included) and the file's line count.
func readHeader(path string) (header string, lines int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var b strings.Builder
	inHeader := true
	for sc.Scan() {
		lines++
		if inHeader {
			line := sc.Text()
			if strings.HasPrefix(line, "//") {
				b.WriteString(line)
				b.WriteByte('\n')
			} else if line != "" || b.Len() == 0 {
				inHeader = false
			}
		}
	}
	return b.String(), lines, sc.Err()
}
