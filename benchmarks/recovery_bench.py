"""Recovery rate, and client throughput while recovery runs.

On a fresh four-daemon `store cluster up` (pool `default`: size 3, 64 PGs):

1. fill the pool with `store bench write` (4 MiB objects, `--fill` MiB in all);
2. measure client throughput with no recovery (`store bench write` and `rand`,
   `--seconds` each);
3. `store osd out 3`: its PGs' data is copied to the other three. The recovery rate is the
   object data the daemons pushed and pulled for recovery (their `store_osd_peer_bytes`
   counters) over the time until every PG is active+clean again;
4. `store osd in 3`: the data moves back, and the same client benchmarks run meanwhile;
   their throughput over the baseline is the fraction client I/O keeps during recovery.

    .venv/bin/python benchmarks/recovery_bench.py [--fill 1024] [--seconds 10]

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STORE = [sys.executable, "-m", "store"]
RECOVERY_BYTES = re.compile(
    r'^store_osd_peer_bytes_total\{direction="(pushed|pulled)",kind="recovery"\} (\S+)$', re.M
)


def store(*args: str, conf: Path) -> str:
    env = {**os.environ, "STORE_CONF": str(conf)}
    result = subprocess.run(
        [*STORE, *args], env=env, capture_output=True, text=True, check=False, cwd=ROOT
    )
    if result.returncode != 0:
        raise SystemExit(f"store {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def recovery_bytes(metrics_base: int, osds: int) -> float:
    total = 0.0
    for i in range(osds):
        url = f"http://127.0.0.1:{metrics_base + 1 + i}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        total += sum(float(v) for _, v in RECOVERY_BYTES.findall(text))
    return total


def all_clean(conf: Path) -> bool:
    rows = json.loads(store("pg", "ls", "--json", conf=conf))
    return all(r["state"] == "active+clean" for r in rows)


def bench(mode: str, seconds: float, conf: Path) -> dict[str, Any]:
    out = store(
        "bench", "--pool", "default", "-b", "4M", "-t", "16", "--seconds", str(seconds),
        "--json", mode, conf=conf,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result


def move(action: str, conf: Path, metrics: int, during: float | None) -> dict[str, Any]:
    """Mark osd.3 out or in, optionally benchmark meanwhile, and time the recovery."""
    before = recovery_bytes(metrics, 4)
    start = time.monotonic()
    store("osd", action, "3", conf=conf)
    time.sleep(1)  # the new map reaches the daemons; recovery starts
    figures: dict[str, Any] = {}
    if during is not None:
        figures["write"] = bench("write", during, conf)
        figures["rand"] = bench("rand", during, conf)
        figures["bench_ended"] = time.monotonic() - start
    while not all_clean(conf):
        time.sleep(0.5)
    figures["seconds"] = time.monotonic() - start
    figures["bytes"] = recovery_bytes(metrics, 4) - before
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=1024, help="MiB to store first")
    parser.add_argument("--seconds", type=float, default=10.0, help="per client benchmark")
    parser.add_argument("--metrics", type=int, default=19400, help="base metrics port")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-recovery-") as tmp:
        directory = Path(tmp)
        conf = directory / "store.conf"
        up = [*STORE, "cluster", "up", "--dir", str(directory), "--osds", "4"]
        subprocess.run([*up, "--metrics", str(args.metrics)], check=True, cwd=ROOT)
        try:
            objects = max(1, args.fill // 4)
            store("bench", "--pool", "default", "-b", "4M", "--objects", str(objects),
                  "--seconds", "3600", "write", conf=conf)  # fmt: skip
            baseline = {mode: bench(mode, args.seconds, conf) for mode in ("write", "rand")}
            out = move("out", conf, args.metrics, None)
            back = move("in", conf, args.metrics, args.seconds)
        finally:
            subprocess.run([*STORE, "cluster", "down", "--dir", str(directory)], cwd=ROOT)
    mb = 1e6
    print(f"pool filled with {args.fill} MiB (4 MiB objects, size 3, 4 daemons)\n")
    print("| measure | figure |")
    print("|---|---|")
    print(
        f"| recovery after `osd out` (no client I/O) | {out['bytes'] / mb:.0f} MB in "
        f"{out['seconds']:.1f} s = {out['bytes'] / mb / out['seconds']:.1f} MB/s |"
    )
    print(
        f"| recovery after `osd in` (with client I/O) | {back['bytes'] / mb:.0f} MB in "
        f"{back['seconds']:.1f} s = {back['bytes'] / mb / back['seconds']:.1f} MB/s |"
    )
    for mode in ("write", "rand"):
        base, during = baseline[mode]["mb_per_s"], back[mode]["mb_per_s"]
        print(
            f"| client {mode} 4M, 16 in flight: without / during recovery | {base:.1f} / "
            f"{during:.1f} MB/s = {during / base:.0%} |"
        )
    print(f"\nclient benchmarks ended {back['bench_ended']:.1f} s after `osd in`; "
          f"recovery ended at {back['seconds']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
