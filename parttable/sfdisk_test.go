// Tests of Read against real tables made by util-linux's sfdisk (MBR with
// logical partitions, GPT), compared with sfdisk --json.

package parttable

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qcow2fs/qcow2fs/internal/testenv"
)

// TestAgainstSfdisk lets util-linux's sfdisk write real tables (MBR with
// logical partitions, GPT) into sparse files and checks that Read finds
// what sfdisk --json reports, numbers included.
func TestAgainstSfdisk(t *testing.T) {
	testenv.RequireTools(t, "sfdisk")
	for _, tc := range []struct{ name, script string }{
		{"mbr", "label: dos\n2048,10M,83,*\n,10M,82\n,,5\n,5M,83\n,5M,7\n,,8e\n"},
		{"mbr-gap", "label: dos\nDEV1 : start=2048, size=10M, type=83\nDEV3 : start=61440, size=10M, type=c\n"},
		{"gpt", "label: gpt\nsize=4M, type=U, name=efi\nsize=10M, type=L, name=\"root fs\"\ntype=S\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, 64<<20); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("sfdisk", "-q", path)
			cmd.Stdin = strings.NewReader(strings.ReplaceAll(tc.script, "DEV", path))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v\n%s", err, out)
			}
			out, err := exec.Command("sfdisk", "--json", path).Output()
			if err != nil {
				t.Fatalf("sfdisk --json: %v", err)
			}
			var js struct {
				PT struct {
					Label      string `json:"label"`
					ID         string `json:"id"`
					SectorSize int64  `json:"sectorsize"`
					Partitions []struct {
						Node     string `json:"node"`
						Start    int64  `json:"start"`
						Size     int64  `json:"size"`
						Type     string `json:"type"`
						UUID     string `json:"uuid"`
						Name     string `json:"name"`
						Bootable bool   `json:"bootable"`
					} `json:"partitions"`
				} `json:"partitiontable"`
			}
			if err := json.Unmarshal(out, &js); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var want []Partition
			for _, p := range js.PT.Partitions {
				num, _ := strconv.Atoi(strings.TrimPrefix(p.Node, path))
				typ := p.Type
				if js.PT.Label == "dos" {
					v, _ := strconv.ParseUint(p.Type, 16, 8)
					typ = fmt.Sprintf("0x%02x", v)
				}
				want = append(want, Partition{Number: num, Start: p.Start * js.PT.SectorSize, Size: p.Size * js.PT.SectorSize,
					Type: typ, UUID: p.UUID, Name: p.Name, Bootable: p.Bootable})
			}

			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			tab, err := Read(f, 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			if string(tab.Scheme) != map[string]string{"dos": "mbr", "gpt": "gpt"}[js.PT.Label] || !strings.EqualFold(tab.DiskID, js.PT.ID) {
				t.Errorf("table %s id %s; sfdisk says %s id %s", tab.Scheme, tab.DiskID, js.PT.Label, js.PT.ID)
			}
			var got []Partition
			for _, p := range tab.Partitions {
				got = append(got, Partition{Number: p.Number, Start: p.Start, Size: p.Size, Type: p.Type, UUID: p.UUID, Name: p.Name, Bootable: p.Bootable})
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("partitions\n got %+v\nwant %+v (sfdisk)", got, want)
			}
			if len(tab.Warnings) != 0 {
				t.Errorf("warnings on a table sfdisk wrote: %q", tab.Warnings)
			}
		})
	}
}
