// Package integration holds qcow2fs's end-to-end tests: they build the
// qcow2fs binary, mount QEMU-made images for real through FUSE, and use
// QEMU's own tools (qemu-img, qemu-io) as the oracle for every byte.
//
// The tests need root, /dev/fuse and qemu-img; where one of those is truly
// missing they skip, saying so loudly. Run them with `make test` or
// `go test ./integration` as root. Set QCOW2FS_BIN to test a prebuilt binary
// instead of building one, and QCOW2FS_SEED to replay a random workload.
package integration
