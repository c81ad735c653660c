// Tests of Read on tables written by hand into an in-memory disk (MBR, EBR
// chains, GPT, damaged and looping ones), and FuzzRead.

package parttable

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"strings"
	"testing"
	"unicode/utf16"
)

const sec = 512

// disk is an in-memory disk image the tests write tables into.
type disk []byte

func newDisk(sectors int) disk { return make(disk, sectors*sec) }

func (d disk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(d)) {
		return 0, errors.New("EOF")
	}
	n := copy(p, d[off:])
	if n < len(p) {
		return n, errors.New("short")
	}
	return n, nil
}

// ent is an MBR entry for the tests: boot flag, type, LBA start, sectors.
type ent struct {
	boot        bool
	typ         byte
	start, size uint32
}

// putMBR writes an MBR (or EBR) with up to four entries at sector lba.
func (d disk) putMBR(lba int, sig uint32, ents ...ent) {
	b := d[lba*sec : (lba+1)*sec]
	binary.LittleEndian.PutUint32(b[440:], sig)
	for i, e := range ents {
		p := b[446+16*i:]
		if e.boot {
			p[0] = 0x80
		}
		p[4] = e.typ
		binary.LittleEndian.PutUint32(p[8:], e.start)
		binary.LittleEndian.PutUint32(p[12:], e.size)
	}
	b[510], b[511] = 0x55, 0xaa
}

// gpart is a GPT entry for the tests.
type gpart struct {
	slot        int // entry index
	typ, uuid   [16]byte
	first, last uint64
	name        string
}

func guid(s string) [16]byte {
	// Inverse of formatGUID, enough for the tests.
	var g [16]byte
	h := strings.ReplaceAll(s, "-", "")
	raw := make([]byte, 16)
	for i := range raw {
		var v byte
		for _, c := range h[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'A') + 10
			}
		}
		raw[i] = v
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g
}

// putGPT writes a protective MBR, a primary header at LBA 1 with its entry
// array at LBA 2, and the backup header at the last LBA with its array
// just before it; ss is the sector size.
func (d disk) putGPT(ss int, parts ...gpart) {
	sectors := uint64(len(d) / ss)
	d.putMBR(0, 0, ent{typ: 0xee, start: 1, size: uint32(min(sectors-1, 0xffffffff))})
	const n, esz = 128, 128
	arr := make([]byte, n*esz)
	for _, p := range parts {
		e := arr[p.slot*esz:]
		copy(e[0:], p.typ[:])
		copy(e[16:], p.uuid[:])
		binary.LittleEndian.PutUint64(e[32:], p.first)
		binary.LittleEndian.PutUint64(e[40:], p.last)
		for i, c := range utf16.Encode([]rune(p.name)) {
			binary.LittleEndian.PutUint16(e[56+2*i:], c)
		}
	}
	arrSectors := uint64(n * esz / ss)
	header := func(my, alt, entryLBA uint64) []byte {
		h := make([]byte, 92)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], my)
		binary.LittleEndian.PutUint64(h[32:], alt)
		binary.LittleEndian.PutUint64(h[40:], 2+arrSectors)
		binary.LittleEndian.PutUint64(h[48:], sectors-2-arrSectors)
		g := guid("01234567-89AB-CDEF-0123-456789ABCDEF")
		copy(h[56:], g[:])
		binary.LittleEndian.PutUint64(h[72:], entryLBA)
		binary.LittleEndian.PutUint32(h[80:], n)
		binary.LittleEndian.PutUint32(h[84:], esz)
		binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(arr))
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		return h
	}
	copy(d[ss:], header(1, sectors-1, 2))
	copy(d[2*ss:], arr)
	backupArr := sectors - 1 - arrSectors
	copy(d[int(backupArr)*ss:], arr)
	copy(d[int(sectors-1)*ss:], header(sectors-1, 1, backupArr))
}

var (
	linuxFS = guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
	efiSys  = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	uuidA   = guid("11111111-2222-3333-4444-555555555555")
)

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		disk  func() disk
		want  []Partition // Number, Start, Size, Type, Extended, Truncated, Name
		err   string      // substring; "" = success
		warns int
	}{
		{
			name: "blank disk",
			disk: func() disk { return newDisk(64) },
			err:  "no partition table",
		},
		{
			name: "signature but no entries",
			disk: func() disk { d := newDisk(64); d.putMBR(0, 1); return d },
			err:  "no partition table",
		},
		{
			name: "boot code where entries would be",
			disk: func() disk {
				d := newDisk(64)
				d.putMBR(0, 1, ent{typ: 0x83, start: 1, size: 8})
				d[446] = 0x33 // not a boot indicator
				return d
			},
			err: "no partition table",
		},
		{
			name: "primaries with a gap",
			disk: func() disk {
				d := newDisk(4096)
				d.putMBR(0, 0xdeadbeef, ent{boot: true, typ: 0x83, start: 2048, size: 1024}, ent{}, ent{typ: 0x82, start: 3072, size: 1024})
				return d
			},
			want: []Partition{
				{Number: 1, Start: 2048 * sec, Size: 1024 * sec, Type: "0x83", TypeName: "Linux", Bootable: true},
				{Number: 3, Start: 3072 * sec, Size: 1024 * sec, Type: "0x82", TypeName: "Linux swap"},
			},
		},
		{
			name: "partition past the end is truncated or dropped",
			disk: func() disk {
				d := newDisk(100)
				d.putMBR(0, 0, ent{typ: 0x83, start: 50, size: 100}, ent{typ: 0x83, start: 200, size: 10})
				return d
			},
			want:  []Partition{{Number: 1, Start: 50 * sec, Size: 50 * sec, Type: "0x83", TypeName: "Linux", Truncated: true}},
			warns: 1,
		},
		{
			name: "extended with three logicals",
			disk: func() disk {
				d := newDisk(8192)
				d.putMBR(0, 0, ent{typ: 0x83, start: 2048, size: 1024}, ent{typ: 0x05, start: 4096, size: 4096})
				// EBRs at 4096, 5120, 6144; each logical starts 2 sectors after its EBR.
				d.putMBR(4096, 0, ent{typ: 0x83, start: 2, size: 500}, ent{typ: 0x05, start: 1024, size: 1024})
				d.putMBR(5120, 0, ent{typ: 0x07, start: 2, size: 600}, ent{typ: 0x05, start: 2048, size: 1024})
				d.putMBR(6144, 0, ent{typ: 0x8e, start: 2, size: 700})
				return d
			},
			want: []Partition{
				{Number: 1, Start: 2048 * sec, Size: 1024 * sec, Type: "0x83", TypeName: "Linux"},
				{Number: 2, Start: 4096 * sec, Size: 4096 * sec, Type: "0x05", TypeName: "Extended", Extended: true},
				{Number: 5, Start: 4098 * sec, Size: 500 * sec, Type: "0x83", TypeName: "Linux"},
				{Number: 6, Start: 5122 * sec, Size: 600 * sec, Type: "0x07", TypeName: "HPFS/NTFS/exFAT"},
				{Number: 7, Start: 6146 * sec, Size: 700 * sec, Type: "0x8e", TypeName: "Linux LVM"},
			},
		},
		{
			name: "EBR chain that loops",
			disk: func() disk {
				d := newDisk(8192)
				d.putMBR(0, 0, ent{typ: 0x0f, start: 4096, size: 4096})
				d.putMBR(4096, 0, ent{typ: 0x83, start: 2, size: 10}, ent{typ: 0x05, start: 0, size: 1024})
				return d
			},
			want: []Partition{
				{Number: 1, Start: 4096 * sec, Size: 4096 * sec, Type: "0x0f", TypeName: "W95 Extended (LBA)", Extended: true},
				{Number: 5, Start: 4098 * sec, Size: 10 * sec, Type: "0x83", TypeName: "Linux"},
			},
			warns: 1,
		},
		{
			name: "GPT",
			disk: func() disk {
				d := newDisk(8192)
				d.putGPT(512,
					gpart{slot: 0, typ: efiSys, uuid: uuidA, first: 2048, last: 4095, name: "EFI"},
					gpart{slot: 2, typ: linuxFS, uuid: uuidA, first: 4096, last: 8000, name: "röot"},
				)
				return d
			},
			want: []Partition{
				{Number: 1, Start: 2048 * sec, Size: 2048 * sec, Type: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", TypeName: "EFI System", Name: "EFI", UUID: "11111111-2222-3333-4444-555555555555"},
				{Number: 3, Start: 4096 * sec, Size: 3905 * sec, Type: "0FC63DAF-8483-4772-8E79-3D69D8477DE4", TypeName: "Linux filesystem", Name: "röot", UUID: "11111111-2222-3333-4444-555555555555"},
			},
		},
		{
			name: "GPT with a damaged primary header uses the backup",
			disk: func() disk {
				d := newDisk(8192)
				d.putGPT(512, gpart{slot: 0, typ: linuxFS, uuid: uuidA, first: 2048, last: 4095})
				d[512+40] ^= 0xff // first usable LBA: the header CRC no longer matches
				return d
			},
			want:  []Partition{{Number: 1, Start: 2048 * sec, Size: 2048 * sec, Type: "0FC63DAF-8483-4772-8E79-3D69D8477DE4", TypeName: "Linux filesystem", UUID: "11111111-2222-3333-4444-555555555555"}},
			warns: 1,
		},
		{
			name: "GPT with 4 KiB sectors",
			disk: func() disk {
				d := make(disk, 2048*4096)
				d.putGPT(4096, gpart{slot: 0, typ: linuxFS, uuid: uuidA, first: 256, last: 1023})
				return d
			},
			want: []Partition{{Number: 1, Start: 256 * 4096, Size: 768 * 4096, Type: "0FC63DAF-8483-4772-8E79-3D69D8477DE4", TypeName: "Linux filesystem", UUID: "11111111-2222-3333-4444-555555555555"}},
		},
		{
			name: "GPT with a bad entry array CRC",
			disk: func() disk {
				d := newDisk(8192)
				d.putGPT(512, gpart{slot: 0, typ: linuxFS, first: 2048, last: 4095})
				d[2*512+50] ^= 1
				return d
			},
			err: "entry array CRC mismatch",
		},
		{
			name: "protective MBR without any GPT",
			disk: func() disk {
				d := newDisk(8192)
				d.putMBR(0, 0, ent{typ: 0xee, start: 1, size: 8191})
				return d
			},
			err: "protective MBR but no valid GPT",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.disk()
			tab, err := Read(d, int64(len(d)))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tab.Partitions, tc.want) {
				t.Errorf("partitions\n got %+v\nwant %+v", tab.Partitions, tc.want)
			}
			if len(tab.Warnings) != tc.warns {
				t.Errorf("warnings %q, want %d", tab.Warnings, tc.warns)
			}
		})
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	for _, s := range []string{"C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "00000000-0000-0000-0000-000000000001"} {
		g := guid(s)
		if got := formatGUID(g[:]); got != s {
			t.Errorf("formatGUID(guid(%s)) = %s", s, got)
		}
	}
}

func TestDataSkipsExtended(t *testing.T) {
	tab := &Table{Partitions: []Partition{{Number: 1}, {Number: 2, Extended: true}, {Number: 5}}}
	var nums []int
	for _, p := range tab.Data() {
		nums = append(nums, p.Number)
	}
	if !reflect.DeepEqual(nums, []int{1, 5}) {
		t.Errorf("Data() numbers %v", nums)
	}
}

// FuzzRead: no input may panic or hang the parser, and what it returns
// lies on the disk.
func FuzzRead(f *testing.F) {
	d := newDisk(64)
	d.putMBR(0, 0, ent{typ: 0x83, start: 2, size: 10}, ent{typ: 0x05, start: 20, size: 40})
	d.putMBR(20, 0, ent{typ: 0x83, start: 1, size: 5}, ent{typ: 0x05, start: 10, size: 10})
	f.Add([]byte(d))
	g := newDisk(80)
	g.putGPT(512, gpart{slot: 0, typ: linuxFS, first: 34, last: 40})
	f.Add([]byte(g))
	f.Add(bytes.Repeat([]byte{0x55, 0xaa}, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		tab, err := Read(disk(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, p := range tab.Partitions {
			if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > int64(len(b)) {
				t.Fatalf("partition %+v outside the %d-byte disk", p, len(b))
			}
		}
	})
}
