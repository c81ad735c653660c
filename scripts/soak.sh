#!/usr/bin/env bash
# make soak: a long mixed fio workload with verification, through a loop
# device on a qcow2fs mount, sampling the daemon's RSS once a minute. Not in
# CI. SOAK_MINUTES (default 10), SOAK_DIR (default a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${SOAK_MINUTES:-10}
work=${SOAK_DIR:-$(mktemp -d /tmp/qcow2fs-soak.XXXXXX)}
bin=$PWD/bin/qcow2fs
mnt=$work/mnt
img=$work/soak.qcow2
loop=""
cleanup() {
	set +e
	[ -n "$loop" ] && losetup -d "$loop"
	"$bin" unmount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
}
trap cleanup EXIT
command -v fio >/dev/null || apt-get install -y fio
mkdir -p "$mnt"
qemu-img create -q -f qcow2 "$img" 2G
"$bin" mount --log "$work/daemon.log" "$img" "$mnt"
# The daemon records its pid in a run-state file named after the mount.
pid=$(grep -l "\"mountpoint\": *\"$mnt\"" /run/qcow2fs/*.json | xargs cat | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' | head -1)
[ -n "$pid" ] || { echo "soak: cannot find the daemon's pid" >&2; exit 1; }
loop=$(losetup --find --show --direct-io=on "$mnt/soak.raw")
echo "soak: $minutes min on $loop (daemon pid $pid); RSS samples (KiB):"
fio --name=soak --filename="$loop" --ioengine=psync --direct=1 --rw=randrw --rwmixread=50 \
	--bsrange=4k-256k --numjobs=4 --size=1500M --time_based --runtime=$((minutes * 60)) \
	--verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --group_reporting --output="$work/fio.txt" &
fio_pid=$!
while kill -0 "$fio_pid" 2>/dev/null; do
	echo "$(date +%T) $(awk '/VmRSS/ {print $2}' /proc/"$pid"/status) $(awk '/VmHWM/ {print $2}' /proc/"$pid"/status)"
	sleep 60
done
wait "$fio_pid"
grep -E "err=|READ:|WRITE:" "$work/fio.txt"
losetup -d "$loop"; loop=""
"$bin" unmount "$mnt"
qemu-img check "$img"
echo "soak: OK (fio verify passed, image checks clean); logs in $work"
