// This file holds the public surface of the package: the types the FUSE layer
// and the CLI use. The implementation lives in the other files.

package qcow2

import "os"

// OpenOptions controls how an image (and its backing chain) is opened.
type OpenOptions struct {
	// ReadOnly opens every file of the chain O_RDONLY; nothing is ever
	// written to any of them (a dirty image is repaired in memory only).
	ReadOnly bool
	// NoBacking opens no backing file: a read-only open shows the top layer
	// alone (unallocated space reads as zeros); a read-write open of an image
	// that names a backing file is refused. For untrusted images.
	NoBacking bool
	// NoDataFile refuses images that name an external data file.
	NoDataFile bool
	// CacheSize is the byte budget of the L2-table cache; 0 means the default
	// (enough to map a 1 TiB image with 64 KiB clusters).
	CacheSize int64
	// ForceShare takes no image locks (like qemu-img -U): for inspecting an
	// image another process may be writing. Only with ReadOnly.
	ForceShare bool
	// Warn receives non-fatal warnings (corrupt bit on a read-only open, ...).
	// May be nil.
	Warn func(msg string)
	// CheckFile, when set, sees every file the open uses — the image itself,
	// each backing file down the chain, each external data file — right
	// after its descriptor is opened and before anything is read from it
	// or locked. An error refuses the file and fails the open. This is
	// where the caller decides which files an image may name (the package
	// itself has no notion of users).
	CheckFile func(OpenedFile) error
	// repair lets Check --repair open an image marked corrupt read-write.
	repair bool
	// skipBacking opens no backing file even read-write: for operations
	// that change metadata only (rebase -u), never guest data.
	skipBacking bool
	// namedBy is the chain of images above the one being opened (for
	// OpenedFile.NamedBy); empty for the image Open was called on.
	namedBy []Namer
}

// OpenedFile is a file an open is about to use, as OpenOptions.CheckFile
// sees it.
type OpenedFile struct {
	// Role is RoleImage, RoleBacking or RoleDataFile.
	Role string
	// Path is the absolute path it was opened by: a name stored in an image
	// is resolved against that image's directory. It comes from an image:
	// quote it before printing.
	Path string
	// File is the open descriptor (fstat it rather than the path, which
	// may have changed since); the open owns it, never close it.
	File *os.File
	// Write is set when the file is opened for writing.
	Write bool
	// NamedBy lists the images that lead to this file: the image Open was
	// called on first, the image that names this file last. Empty for
	// RoleImage.
	NamedBy []Namer
}

// Roles of an OpenedFile.
const (
	RoleImage    = "image"
	RoleBacking  = "backing file"
	RoleDataFile = "external data file"
)

// Namer is an image that names another file, with the fstat of its own
// descriptor (Sys() is a *syscall.Stat_t).
type Namer struct {
	Path string
	Stat os.FileInfo
}

// ExtentKind says what a run of guest bytes holds.
type ExtentKind int

const (
	// ExtentData: bytes stored in this image or one of its backing files
	// (see Extent.Depth) — reads may return anything.
	ExtentData ExtentKind = iota
	// ExtentZero: the format says these bytes read as zeros (zero flag,
	// zero subclusters, or past the end of a shorter backing file).
	ExtentZero
	// ExtentUnallocated: nothing anywhere in the chain; reads as zeros.
	ExtentUnallocated
)

func (k ExtentKind) String() string {
	switch k {
	case ExtentData:
		return "data"
	case ExtentZero:
		return "zero"
	default:
		return "unallocated"
	}
}

// Extent is one run of the block-status query Image.Map.
type Extent struct {
	Offset int64 // guest offset
	Length int64
	Kind   ExtentKind
	// Depth is the layer of the backing chain that provides the bytes:
	// 0 = this image, 1 = its backing file, ...
	Depth int
	// HostOffset is the offset in the file that holds the data (the image,
	// its external data file, or a backing file), or -1 (zero, unallocated,
	// compressed).
	HostOffset int64
	// Compressed is set for data held in compressed clusters.
	Compressed bool
}

// SnapshotInfo describes one internal snapshot.
type SnapshotInfo struct {
	ID          string
	Name        string
	DiskSize    int64
	DateSec     uint32
	DateNsec    uint32
	VMClockNsec uint64
	VMStateSize uint64
	ICount      uint64 // -1 (all ones) when unknown
	// Problem, when set, says why the snapshot cannot be used (its table
	// entry is damaged, or QEMU could not apply its disk size): it stays
	// in the table, but OpenSnapshot refuses it and mounts hide it. The
	// text quotes nothing from the image.
	Problem string `json:"problem,omitempty"`
}

// Info is what `qcow2fs info` prints about one layer of a chain.
type Info struct {
	Filename        string         `json:"filename"`
	Format          string         `json:"format"` // "qcow2" or "raw"
	Version         uint32         `json:"version,omitempty"`
	VirtualSize     int64          `json:"virtual-size"`
	ActualSize      int64          `json:"actual-size"` // bytes the file occupies on the host
	ClusterSize     int64          `json:"cluster-size,omitempty"`
	RefcountBits    int            `json:"refcount-bits,omitempty"`
	CompressionType string         `json:"compression-type,omitempty"`
	Features        []string       `json:"features,omitempty"` // names of every set feature bit
	LazyRefcounts   bool           `json:"lazy-refcounts"`
	ExtendedL2      bool           `json:"extended-l2"`
	Dirty           bool           `json:"dirty"`
	Corrupt         bool           `json:"corrupt"`
	DataFile        string         `json:"data-file,omitempty"`
	DataFileRaw     bool           `json:"data-file-raw,omitempty"`
	BackingFile     string         `json:"backing-filename,omitempty"`      // as written in the image
	BackingFullPath string         `json:"full-backing-filename,omitempty"` // resolved
	BackingFormat   string         `json:"backing-filename-format,omitempty"`
	Bitmaps         []string       `json:"bitmaps,omitempty"`
	BitmapDetails   []BitmapInfo   `json:"bitmap-details,omitempty"` // as qemu-img info lists them: name, granularity, flags
	Snapshots       []SnapshotInfo `json:"snapshots,omitempty"`
	Backing         *Info          `json:"backing-image,omitempty"`
}
