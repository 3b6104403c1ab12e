#!/usr/bin/env bash
# fio through the NBD gateway, with fio's libnbd engine (`--ioengine=nbd --uri=...`):
# 4 KiB random writes and reads, 4 MiB sequential writes and reads, 16 requests in flight.
#
#   benchmarks/nbd_bench.sh [SECONDS]          (default 20 s per run)
#
# Without STORE_CONF in the environment it starts a fresh `store cluster up` (a master and
# three daemons on loopback, pool `default` of size 3) and stops it at the end; with
# STORE_CONF it uses that cluster and the pool named by POOL (default `default`), which
# should be of size 3. It serves a 1 GiB image with `store nbd serve` on a Unix socket,
# fills the 256 MiB the tests touch (so that reads hit written objects, not holes), runs
# fio, prints a markdown table, and removes the image.
#
# `store nbd serve` runs nbdkit in its parallel thread model behind a relay (docs/nbd.md),
# so the 16 requests in flight on one connection are served together; the last two rows
# spread the same 16 over four connections (fio numjobs=4, iodepth=4).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
store=$PWD/.venv/bin/store
pool=${POOL:-default}
work=$(mktemp -d /tmp/store-nbd-bench.XXXXXX)
image="$pool/nbd-bench-$$"
started_cluster=
nbdkit_pid=

for tool in fio nbdkit nbdcopy; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done

cleanup() {
    if [ -n "$nbdkit_pid" ]; then
        kill "$nbdkit_pid" 2>/dev/null || true
        wait "$nbdkit_pid" 2>/dev/null || true
    fi
    $store image rm "$image" >/dev/null 2>&1 || true
    if [ -n "$started_cluster" ]; then
        $store cluster down --dir "$work/cluster" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${STORE_CONF:-}" ]; then
    $store cluster up --dir "$work/cluster" >/dev/null
    started_cluster=1
    export STORE_CONF=$work/cluster/store.conf
fi

$store image create "$image" --size 1G >/dev/null
$store nbd serve "$image" --unix "$work/nbd.sock" >"$work/nbdkit.log" 2>&1 &
nbdkit_pid=$!
for _ in $(seq 100); do [ -S "$work/nbd.sock" ] && break; sleep 0.1; done
[ -S "$work/nbd.sock" ] || { cat "$work/nbdkit.log" >&2; exit 1; }
uri="nbd+unix:///?socket=$work/nbd.sock"

run_fio() {  # label rw bs numjobs iodepth [time_based]
    local label=$1 rw=$2 bs=$3 jobs=$4 depth=$5 timed=${6:-yes}
    local timing=(--time_based "--runtime=$secs")
    [ "$timed" = yes ] || timing=()
    fio --name=nbd --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --numjobs="$jobs" \
        --iodepth="$depth" --size=256M "${timing[@]}" --group_reporting \
        --output-format=json >"$work/fio.json"
    python3 - "$work/fio.json" "$label" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]  # after fio's "connected to" line
side = job["write"] if job["write"]["io_bytes"] else job["read"]
clat = side["clat_ns"]
p99 = clat.get("percentile", {}).get("99.000000", 0) / 1e6
print(f"| {sys.argv[2]} | {side['iops']:.0f} | {side['bw_bytes'] / 1e6:.1f} "
      f"| {clat['mean'] / 1e6:.1f} | {p99:.1f} | {job['error']} |")
PY
}

echo "fio $(fio --version), nbdkit $(nbdkit --version | cut -d' ' -f2), $secs s per run, image $image"
echo
echo "| test | IOPS | MB/s | mean ms | p99 ms | errors |"
echo "|---|---|---|---|---|---|"
run_fio "fill 256 MiB, 4 MiB writes (not timed)" write 4M 1 16 no
run_fio "4 MiB writes, iodepth 16" write 4M 1 16
run_fio "4 MiB reads, iodepth 16" read 4M 1 16
run_fio "4 KiB random writes, iodepth 16" randwrite 4k 1 16
run_fio "4 KiB random reads, iodepth 16" randread 4k 1 16
run_fio "4 KiB random writes, 4 connections x iodepth 4" randwrite 4k 4 4
run_fio "4 KiB random reads, 4 connections x iodepth 4" randread 4k 4 4
