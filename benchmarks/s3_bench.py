"""S3 gateway throughput, measured like warp/s3bench: boto3 clients in 16 threads.

Four phases, each for a fixed time: PUT of 4 MiB objects, GET of them, PUT of 4 KiB
objects, GET of them. Reports MB/s and objects/s per phase (and latency percentiles).

    store s3 user create bench --json > bench.json
    .venv/bin/python benchmarks/s3_bench.py --endpoint http://127.0.0.1:7480 \\
        --credentials bench.json --seconds 20

``--credentials`` is the JSON that `store s3 user create --json` prints (or pass
``--access-key``/``--secret-key``). A fresh bucket is made and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

MIB = 1024 * 1024


@dataclass
class Phase:
    name: str
    size: int
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [0.0]
        return {
            "phase": self.name,
            "object_size": self.size,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": round(self.elapsed, 2),
            "MB_per_s": round(self.ops * self.size / self.elapsed / 1e6, 1) if self.elapsed else 0,
            "obj_per_s": round(self.ops / self.elapsed, 1) if self.elapsed else 0,
            "latency_ms_p50": round(statistics.median(lat) * 1000, 1),
            "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
        }


def make_client(args: argparse.Namespace) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name=args.region,
        verify=args.ca or None,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=args.threads * 2,
            retries={"max_attempts": 3, "mode": "standard"},
            # warp signs without hashing bodies over TLS too; over plain HTTP boto3 must hash.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def run_phase(
    phase: Phase, threads: int, seconds: float, operation: Callable[[int, int], None]
) -> None:
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(thread: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                operation(thread, n)
            except Exception as exc:
                with lock:
                    phase.errors += 1
                if phase.errors <= 3:
                    print(f"{phase.name}: {exc}", file=sys.stderr)
                continue
            took = time.monotonic() - start
            with lock:
                phase.ops += 1
                phase.latencies.append(took)
            n += 1

    began = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    phase.elapsed = time.monotonic() - began


def benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    clients = [make_client(args) for _ in range(args.threads)]
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    clients[0].create_bucket(Bucket=bucket)
    results = []
    written: dict[int, list[str]] = {}
    try:
        for size, label in ((4 * MIB, "4MiB"), (4 * 1024, "4KiB")):
            payload = os.urandom(size)
            keys: list[list[str]] = [[] for _ in range(args.threads)]

            def put(
                thread: int,
                n: int,
                size: int = size,
                payload: bytes = payload,
                keys: list[list[str]] = keys,
            ) -> None:
                key = f"{size}/{thread}/{n}"
                clients[thread].put_object(Bucket=bucket, Key=key, Body=payload)
                keys[thread].append(key)

            phase = Phase(f"PUT {label}", size)
            run_phase(phase, args.threads, args.seconds, put)
            results.append(phase.report())
            written[size] = [k for ks in keys for k in ks]
            pool = written[size]

            def get(thread: int, n: int, pool: list[str] = pool) -> None:
                key = random.choice(pool)
                body = clients[thread].get_object(Bucket=bucket, Key=key)["Body"]
                while body.read(MIB):
                    pass

            phase = Phase(f"GET {label}", size)
            run_phase(phase, args.threads, args.seconds, get)
            results.append(phase.report())
    finally:
        everything = [k for ks in written.values() for k in ks]
        for i in range(0, len(everything), 1000):
            batch = everything[i : i + 1000]
            clients[0].delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        clients[0].delete_bucket(Bucket=bucket)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:7480")
    parser.add_argument("--credentials", help="JSON from `store s3 user create --json`")
    parser.add_argument("--access-key")
    parser.add_argument("--secret-key")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--ca", help="CA certificate for an https endpoint")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="Print JSON only.")
    args = parser.parse_args()
    if args.credentials:
        with open(args.credentials) as file:
            record = json.load(file)
        args.access_key = args.access_key or record["access_key"]
        args.secret_key = args.secret_key or record["secret_key"]
    if not args.access_key or not args.secret_key:
        parser.error("give --credentials or --access-key and --secret-key")
    results = benchmark(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'phase':10} {'MB/s':>8} {'obj/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(
            f"{r['phase']:10} {r['MB_per_s']:>8} {r['obj_per_s']:>8} "
            f"{r['latency_ms_p50']:>8} {r['latency_ms_p99']:>8} {r['errors']:>7}"
        )


if __name__ == "__main__":
    main()
