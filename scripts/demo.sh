#!/usr/bin/env bash
# make demo: on a fresh Debian machine, as root, install what qcow2fs needs,
# build it, make a sample qcow2 image with qemu-img, mount it read-only and
# show that the exposed raw file is exactly what QEMU reads.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (FUSE mounts need it): sudo make demo" >&2
	exit 1
fi

# System packages: FUSE's fusermount3 and QEMU's tools.
missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v qemu-io >/dev/null || missing+=(qemu-utils)
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "demo: Go is not installed: put a Go toolchain (the version go.mod names) in /usr/local/go" >&2
	exit 1
fi

echo "== building bin/qcow2fs"
make --no-print-directory build
bin=$PWD/bin/qcow2fs
"$bin" --version

work=$(mktemp -d /tmp/qcow2fs-demo.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
	if mountpoint -q "$mnt"; then "$bin" unmount "$mnt" || fusermount3 -u -z "$mnt"; fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "== making $work/demo.qcow2 with qemu-img"
img=$work/demo.qcow2
printf 'Hello from qcow2fs! This text sits at offset 0 of a qcow2 image.\n' >"$work/hello.txt"
head -c $((3 << 20)) /dev/urandom >"$work/random.bin"
qemu-img create -q -f qcow2 "$img" 256M
qemu-io -f qcow2 \
	-c "write -s $work/hello.txt 0 $(stat -c %s "$work/hello.txt")" \
	-c "write -s $work/random.bin 64M $((3 << 20))" \
	-c "write -P 0x42 200M 1M" \
	"$img" >/dev/null
qemu-img snapshot -c before-zeroing "$img"
qemu-io -f qcow2 -c "write -z 200M 1M" "$img" >/dev/null
qemu-img info "$img"

echo "== qcow2fs mount --ro $img $mnt"
"$bin" mount --ro "$img" "$mnt"
grep " $mnt " /proc/mounts
ls -l "$mnt"

echo "== the first bytes of $mnt/demo.raw"
od -A x -t x1z -N 96 "$mnt/demo.raw"

echo "== comparing with qemu-img convert -O raw"
qemu-img convert -O raw "$img" "$work/reference.raw"
cmp "$mnt/demo.raw" "$work/reference.raw"
echo "demo.raw is identical to QEMU's raw conversion ($(stat -c %s "$mnt/demo.raw") bytes)"
qemu-img convert -O raw -l snapshot.name=before-zeroing "$img" "$work/snapshot.raw"
cmp "$mnt/demo@before-zeroing.raw" "$work/snapshot.raw"
echo "demo@before-zeroing.raw is identical to QEMU's conversion of that snapshot"

echo "== qcow2fs unmount $mnt"
"$bin" unmount "$mnt"
echo "== demo done"
