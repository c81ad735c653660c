#!/usr/bin/env bash
# make bench: on a Debian machine, as root, install what the benchmark
# needs, build qcow2fs, the go-fuse passthrough server and the bench
# driver, then run the driver (tools/qcow2fs-bench/), which prints the table and writes
# docs/PERFORMANCE.md.
#
# Knobs (environment): BENCH_RUNTIME (seconds per timed fio job, default
# 10), BENCH_RAMP, BENCH_ONLY (main,qd32,ext4,rss,mounttime,compressed,convert),
# BENCH_URING (auto: also qcow2fs -o uring=on where the kernel has it; off),
# BENCH_QCOW2FS_OPTS (e.g. "-o direct_io"), BENCH_PASSTHROUGH_OPTS
# (e.g. --direct-io), BENCH_COMPRESSED_MIB, BENCH_OUT (report file; empty
# for none), BENCH_JSON_DIR (keep fio's JSON), BENCH_DIR (where the
# scratch directory goes, default /var/tmp: /tmp may be a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "bench: run as root (FUSE mounts, loop devices): sudo make bench" >&2
	exit 1
fi

# fio; qemu-utils: qemu-img; qemu-system-common: qemu-storage-daemon;
# fuse3: fusermount3; e2fsprogs: mkfs.ext4, fsck.ext4; mount: losetup;
# procps: pgrep (for the clean-up below).
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need fio fio
need qemu-img qemu-utils
need qemu-storage-daemon qemu-system-common
need fusermount3 fuse3
need mkfs.ext4 e2fsprogs
need fsck.ext4 e2fsprogs
need losetup mount
need pgrep procps
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "bench: Go is not installed: put a Go toolchain (the version go.mod names) in /usr/local/go" >&2
	exit 1
fi

echo "== building bin/qcow2fs, bin/fuse-passthrough, bin/qcow2fs-bench"
CGO_ENABLED=0 go build -o bin/qcow2fs ./cmd/qcow2fs # as make build
CGO_ENABLED=0 go build -o bin/fuse-passthrough ./tools/fuse-passthrough
go build -o bin/qcow2fs-bench ./tools/qcow2fs-bench

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/qcow2fs-bench.XXXXXX")
work=$(realpath "$work")

# The driver undoes everything it sets up; this is the safety net for when
# it could not (killed with SIGKILL, crashed): whatever is still mounted,
# attached or running under the scratch directory goes, then the directory.
cleanup() {
	local status=$? m dev pid
	trap - EXIT INT TERM
	# Other mounts (ext4 on a loop device) before the FUSE mounts under them.
	for m in $(awk -v w="$work/" 'index($5, w) == 1 { for (i = 7; i < NF; i++) if ($i == "-") break; if ($(i+1) !~ /^fuse/) print $5 }' /proc/self/mountinfo | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done
	for dev in $(losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null | awk -v w="$work/" 'index($2, w) == 1 {print $1}'); do
		losetup --detach "$dev" || true
	done
	# fio jobs and FUSE servers the driver started name the scratch directory.
	for pid in $(pgrep -f -- "$work/" || true); do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for m in $(awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
		bin/qcow2fs unmount "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" || true
	done
	if awk -v w="$work/" 'index($5, w) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
		echo "bench: WARNING: still mounted under $work:" >&2
		awk -v w="$work/" 'index($5, w) == 1 {print "  " $5}' /proc/self/mountinfo >&2
		status=1
	else
		rm -rf "$work"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin/qcow2fs-bench --work "$work" --repo . "$@"
