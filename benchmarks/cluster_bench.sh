#!/usr/bin/env bash
# The benchmark behind docs/benchmarks.md: `store bench` on a fresh 3-daemon
# `store cluster up`, pool `default` (size 3, 64 PGs), like `rados bench` against Ceph.
#   benchmarks/cluster_bench.sh [SECONDS]      (default 20 s per run)
# Prints a markdown table; also reports the idle daemons' resident memory.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
store=.venv/bin/store
dir=$(mktemp -d /tmp/store-bench.XXXXXX)
trap '$store cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
$store cluster up --dir "$dir" >/dev/null
export STORE_CONF=$dir/store.conf
sleep 5
echo "idle resident memory (KiB): $(for n in master osd.0 osd.1 osd.2; do printf '%s=%s ' $n "$(ps -o rss= -p "$(cat "$dir/$n.pid")" | tr -d ' ')"; done)"
echo
echo "| test | MB/s | ops/s | mean ms | p99 ms | errors |"
echo "|---|---|---|---|---|---|"
for size in 4M 4K; do
    for mode in write seq rand; do
        out=$($store bench --pool default -b "$size" -t 16 --seconds "$secs" --json "$mode")
        python3 - "$out" "$mode" "$size" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
lat = r["latency_ms"]
bad = r["errors"] + r["mismatches"]
print(f"| {sys.argv[2]} {sys.argv[3]}, 16 in flight | {r['mb_per_s']:.1f} | {r['ops_per_s']:.0f} "
      f"| {lat['mean']:.1f} | {lat['p99']:.1f} | {bad} |")
PY
    done
    $store bench --pool default cleanup >/dev/null
done
