"""`store bench`: a pool's throughput and latency, like `rados bench`.

Theory of operation
-------------------
`write` runs T workers for N seconds. Each takes the next object number n and writes
`bench_<run>_<n>` whole. Contents cost nothing to make and nothing to remember: the run id
(eight hex digits) is also the seed of a random 1 MiB buffer, and object n is that buffer,
repeated, starting at an offset that depends on n. A reader that knows the run id and n
rebuilds the expected bytes with one slice and compares them with what it read (a memcmp,
stricter than a checksum and as cheap), so `seq` and `rand`, run later by another process,
verify every read and count mismatches.

`bench_last`, a small JSON object in the pool, names the last write run: its id, the object
size, how many object numbers were handed out and which of those writes failed. `seq` reads
that run's objects in order, `rand` picks them at random. Objects stay after a write (seq and
rand need them) unless `--cleanup`; `store bench cleanup` removes every bench object.

Workers start no operation after the deadline but finish those in flight, so every object
numbered below the count is whole unless its write failed. Per operation the Python work is
a slice, the await, two clock reads and an append; statistics are computed at the end.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import trio
import xxhash

from store.client.api import Client
from store.client.cli import client_options, emit
from store.client.config import ClientConfig
from store.errors import Code, RemoteError, StoreError

PREFIX = "bench_"
LAST = "bench_last"
PATTERN = 1 << 20
# Odd, so n -> n * STRIDE mod 2**20 is a bijection: the first million objects of a run all
# start at different offsets of the buffer, and a read of the wrong object is a mismatch.
STRIDE = 104729
RUN_OBJECT = re.compile(r"bench_[0-9a-f]{8}_[0-9]+")
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from `65536`, `64K`, `4M`, `1G` (also `4MiB`, `4MB`: binary multiples)."""
    found = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if found is None:
        raise ValueError(f"not a size: {text!r} (use bytes or a K, M or G suffix, e.g. 64K)")
    return int(found[1]) * UNITS[found[2]]


class ByteSize(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size < 1:
            self.fail("the object size must be at least one byte", param, ctx)
        return size


class Contents:
    """The bytes of every object of one run, from the run id alone."""

    def __init__(self, run: str, size: int) -> None:
        base = random.Random(int(run, 16)).randbytes(PATTERN)
        self.pattern = base * -(-(size + PATTERN) // PATTERN)
        self.size = size

    def of(self, n: int) -> bytes:
        offset = (n * STRIDE) % PATTERN
        return self.pattern[offset : offset + self.size]

    def matches(self, n: int, data: bytes) -> bool:
        """Whether `data` is object n's content, by 128-bit xxh3 digests: hashing a view of
        the pattern copies nothing, where slicing out the expected bytes to compare cost
        the reader a fresh 4 MiB allocation (page faults) per read."""
        if len(data) != self.size:
            return False
        offset = (n * STRIDE) % PATTERN
        with memoryview(self.pattern) as whole:
            expected = xxhash.xxh3_128_intdigest(whole[offset : offset + self.size])
        return xxhash.xxh3_128_intdigest(data) == expected


def object_name(run: str, n: int) -> str:
    return f"{PREFIX}{run}_{n}"


# --- measuring -------------------------------------------------------------------------


@dataclass
class Tally:
    """What the workers did. Only appends and increments while the clock runs."""

    latencies: list[float] = field(default_factory=list)
    started: int = 0
    errors: int = 0
    mismatches: int = 0
    failed: list[int] = field(default_factory=list)
    first_error: str | None = None
    elapsed: float = 0.0


async def drive(
    one: Callable[[int], Awaitable[bool]],
    picks: Iterator[int],
    *,
    seconds: float,
    concurrency: int,
    tally: Tally,
) -> None:
    """Run `one(n)` for each n of `picks`, `concurrency` at a time, until `seconds` pass.

    `one` returns False when the bytes it read are not the expected ones."""
    deadline = trio.current_time() + seconds
    clock = time.perf_counter

    async def worker() -> None:
        latencies = tally.latencies
        for n in picks:
            tally.started += 1
            t0 = clock()
            try:
                good = await one(n)
            except StoreError as exc:
                tally.errors += 1
                tally.failed.append(n)
                if tally.first_error is None:
                    tally.first_error = f"{n}: {exc}"
            else:
                latencies.append(clock() - t0)
                if not good:
                    tally.mismatches += 1
            if trio.current_time() >= deadline:
                return

    start = clock()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    tally.elapsed = clock() - start


async def report_progress(tally: Tally, size: int, echo: Callable[[str], None]) -> None:
    """Once a second, like rados bench: ops in flight, finished, bandwidth, latency."""
    echo(
        f"{'sec':>5} {'cur ops':>8} {'started':>9} {'finished':>9} {'avg MB/s':>9} "
        f"{'cur MB/s':>9} {'last lat(ms)':>13} {'avg lat(ms)':>12}"
    )
    start = trio.current_time()
    previous = 0
    second = 0
    while True:
        second += 1
        await trio.sleep_until(start + second)
        lats = tally.latencies
        done = len(lats)
        avg_lat = sum(lats) / done * 1e3 if done else 0.0
        last_lat = lats[-1] * 1e3 if done else 0.0
        echo(
            f"{second:>5} {tally.started - done - tally.errors:>8} {tally.started:>9} {done:>9} "
            f"{done * size / second / 1e6:>9.2f} {(done - previous) * size / 1e6:>9.2f} "
            f"{last_lat:>13.2f} {avg_lat:>12.2f}"
        )
        previous = done


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize(
    mode: str, pool: str, run: str, size: int, concurrency: int, tally: Tally
) -> dict[str, Any]:
    ordered = sorted(tally.latencies)
    ops = len(ordered)
    total = ops * size
    elapsed = tally.elapsed or 1e-9
    return {
        "mode": mode,
        "pool": pool,
        "run": run,
        "object_size": size,
        "concurrency": concurrency,
        "seconds": tally.elapsed,
        "ops": ops,
        "bytes": total,
        "mb_per_s": total / elapsed / 1e6,
        "mib_per_s": total / elapsed / (1 << 20),
        "ops_per_s": ops / elapsed,
        "latency_ms": {
            "mean": sum(ordered) / ops * 1e3 if ops else 0.0,
            "min": ordered[0] * 1e3 if ops else 0.0,
            "p50": percentile(ordered, 50) * 1e3,
            "p99": percentile(ordered, 99) * 1e3,
            "max": ordered[-1] * 1e3 if ops else 0.0,
        },
        "errors": tally.errors,
        "mismatches": tally.mismatches,
        "first_error": tally.first_error,
    }


def render(s: dict[str, Any]) -> str:
    verb = "writes" if s["mode"] == "write" else "reads"
    lat = s["latency_ms"]
    rows = [
        ("Total time run", f"{s['seconds']:.3f}"),
        (f"Total {verb} made", s["ops"]),
        (f"{verb[:-1].capitalize()} size", s["object_size"]),
        ("Object size", s["object_size"]),
        ("Concurrency", s["concurrency"]),
        ("Bandwidth (MB/sec)", f"{s['mb_per_s']:.3f}"),
        ("Bandwidth (MiB/sec)", f"{s['mib_per_s']:.3f}"),
        ("Average IOPS", f"{s['ops_per_s']:.1f}"),
        ("Average latency (ms)", f"{lat['mean']:.2f}"),
        ("p50 latency (ms)", f"{lat['p50']:.2f}"),
        ("p99 latency (ms)", f"{lat['p99']:.2f}"),
        ("Max latency (ms)", f"{lat['max']:.2f}"),
        ("Min latency (ms)", f"{lat['min']:.2f}"),
        ("Retransmissions", s.get("retransmits", 0)),
        ("Mismatches", s["mismatches"]),
        ("Errors", s["errors"]),
    ]
    if s["first_error"]:
        rows.append(("First error", f"object {s['first_error']}"))
    return "\n".join(f"{label + ':':<24}{value}" for label, value in rows)


# --- the modes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    pool: str
    size: int
    concurrency: int
    seconds: float
    limit: int | None
    cleanup: bool
    echo: Callable[[str], None] | None  # progress lines; None with --json


class NoBenchRun(StoreError):
    pass


async def _measure(
    client: Client,
    opts: Options,
    mode: str,
    run: str,
    size: int,
    one: Callable[[int], Awaitable[bool]],
    picks: Iterator[int],
) -> tuple[dict[str, Any], Tally]:
    client.pool(opts.pool)  # an unknown pool fails here, with the pools there are
    tally = Tally()
    stats = client.transport.stats
    before = (stats.retransmits, stats.timeouts)
    async with trio.open_nursery() as nursery:
        if opts.echo is not None:
            nursery.start_soon(report_progress, tally, size, opts.echo)
        await drive(one, picks, seconds=opts.seconds, concurrency=opts.concurrency, tally=tally)
        nursery.cancel_scope.cancel()
    summary = summarize(mode, opts.pool, run, size, opts.concurrency, tally)
    summary["retransmits"] = stats.retransmits - before[0]
    summary["timeouts"] = stats.timeouts - before[1]
    return summary, tally


async def bench_write(client: Client, opts: Options) -> dict[str, Any]:
    run = secrets.token_hex(4)
    contents = Contents(run, opts.size)
    numbers = iter(range(opts.limit) if opts.limit is not None else _count())
    handed_out = 0

    def picks() -> Iterator[int]:
        nonlocal handed_out
        for n in numbers:
            handed_out = n + 1
            yield n

    async def one(n: int) -> bool:
        await client.write_full(opts.pool, object_name(run, n), contents.of(n))
        return True

    summary, tally = await _measure(client, opts, "write", run, opts.size, one, picks())
    if opts.cleanup:
        await _delete(client, opts, [object_name(run, n) for n in range(handed_out)])
    else:
        last = {
            "run": run,
            "object_size": opts.size,
            "objects": handed_out,
            "failed": sorted(tally.failed),
        }
        await client.write_full(opts.pool, LAST, json.dumps(last).encode())
    return summary


async def bench_read(client: Client, opts: Options, mode: str) -> dict[str, Any]:
    try:
        last = json.loads(await client.read(opts.pool, LAST))
    except RemoteError as exc:
        if exc.code != Code.ENOENT:
            raise
        raise NoBenchRun(
            f"no bench objects in pool {opts.pool!r}: run `store bench --pool {opts.pool} write` first"
        ) from None
    run, size = str(last["run"]), int(last["object_size"])
    failed = set(last["failed"])
    written = [n for n in range(int(last["objects"])) if n not in failed]
    if not written:
        raise NoBenchRun(f"the last bench run in pool {opts.pool!r} wrote no objects")
    contents = Contents(run, size)

    async def one(n: int) -> bool:
        data = await client.read(opts.pool, object_name(run, n), 0, size)
        return contents.matches(n, data)

    if mode == "seq":
        picks: Iterator[int] = iter(written[: opts.limit])
    else:
        rng = random.Random()
        picks = (rng.choice(written) for _ in _count(opts.limit))
    summary, _ = await _measure(client, opts, mode, run, size, one, picks)
    return summary


async def bench_cleanup(client: Client, opts: Options) -> dict[str, Any]:
    names = [n for n, _ in await client.ls(opts.pool, PREFIX) if RUN_OBJECT.fullmatch(n)]
    await _delete(client, opts, [*names, LAST])
    return {"pool": opts.pool, "removed": len(names)}


async def _delete(client: Client, opts: Options, names: list[str]) -> None:
    todo = iter(names)

    async def deleter() -> None:
        for name in todo:
            try:
                await client.delete(opts.pool, name)
            except RemoteError as exc:
                if exc.code != Code.ENOENT:
                    raise

    async with trio.open_nursery() as nursery:
        for _ in range(opts.concurrency):
            nursery.start_soon(deleter)


def _count(limit: int | None = None) -> Iterator[int]:
    n = 0
    while limit is None or n < limit:
        yield n
        n += 1


def _run_client(
    config: ClientConfig, fn: Callable[[Client], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with Client.connect(config) as client:
            return await fn(client)

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        # Nurseries wrap errors in groups; a lone StoreError becomes a one-line message.
        lone = _lone_error(group)
        if isinstance(lone, StoreError):
            raise lone from None
        raise


def _lone_error(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


# --- the command -----------------------------------------------------------------------


@click.command("bench")
@click.argument("mode", type=click.Choice(["write", "seq", "rand", "cleanup"]))
@click.option("--pool", required=True)
@click.option(
    "-b",
    "--block-size",
    "size",
    type=ByteSize(),
    default="4M",
    show_default=True,
    help="Object size for write (K, M, G: binary multiples). seq and rand use the written size.",
)
@click.option(
    "-t",
    "--concurrent-ios",
    "concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Operations in flight.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Start no operation after this many seconds.",
)
@click.option(
    "--objects",
    "limit",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many operations (objects written, or reads).",
)
@click.option(
    "--cleanup/--no-cleanup",
    default=False,
    show_default=True,
    help="After write, remove the objects written (seq and rand then have nothing to read).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@client_options
def bench_command(
    config: ClientConfig,
    mode: str,
    pool: str,
    size: int,
    concurrency: int,
    seconds: float,
    limit: int | None,
    cleanup: bool,
    as_json: bool,
) -> None:
    """Measure a pool: write objects, read them back in order (seq) or at random (rand).

    Reads are checked (128-bit xxh3 digests) against what write stored; the command fails if any
    operation failed or read wrong data. `cleanup` removes every bench object of the pool.
    """
    echo = None if as_json or mode == "cleanup" else click.echo
    opts = Options(pool, size, concurrency, seconds, limit, cleanup, echo)
    if mode == "cleanup":
        result = _run_client(config, lambda c: bench_cleanup(c, opts))
        emit(
            result, as_json, lambda r: f"removed {r['removed']} bench objects from pool {r['pool']}"
        )
        return
    if mode == "write":
        summary = _run_client(config, lambda c: bench_write(c, opts))
    else:
        summary = _run_client(config, lambda c: bench_read(c, opts, mode))
    emit(summary, as_json, render)
    if summary["mismatches"] or summary["errors"]:
        click.echo(
            f"bench {mode}: {summary['mismatches']} reads returned wrong data, "
            f"{summary['errors']} operations failed",
            err=True,
        )
        sys.exit(1)
