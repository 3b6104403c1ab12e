"""`store bench` against a real three-daemon cluster: write, seq, rand, cleanup."""

from __future__ import annotations

import json
from typing import Any

import pytest

from store.bench import Contents, parse_size, percentile
from tests.cluster.harness import Cluster

QUICK = ["--seconds", "2", "-b", "64K", "-t", "4", "--json"]


def bench(cluster: Cluster, *args: str, check: bool = True) -> tuple[int, dict[str, Any]]:
    result = cluster.cli("bench", "--pool", "default", *args, check=check)
    return result.returncode, json.loads(result.stdout)


def bench_objects(cluster: Cluster) -> set[str]:
    listed = json.loads(
        cluster.cli("ls", "--pool", "default", "--prefix", "bench_", "--json").stdout
    )
    return {o["name"] for o in listed}


def assert_sound(summary: dict[str, Any], mode: str) -> None:
    assert summary["mode"] == mode
    assert summary["ops"] > 0
    assert summary["mismatches"] == 0
    assert summary["errors"] == 0
    assert summary["bytes"] == summary["ops"] * 65536
    assert summary["object_size"] == 65536
    lat = summary["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert summary["mib_per_s"] < summary["mb_per_s"]
    # Counted during the run only.
    assert isinstance(summary["retransmits"], int) and summary["retransmits"] >= 0
    assert summary["timeouts"] == 0


def test_write_seq_rand_verify_and_cleanup(cluster: Cluster) -> None:
    _, written = bench(cluster, *QUICK, "write")
    assert_sound(written, "write")
    run, ops = written["run"], written["ops"]
    names = {f"bench_{run}_{n}" for n in range(ops)}
    assert bench_objects(cluster) == {*names, "bench_last"}
    # What write stored is what the run id says, so another process can verify it.
    obj = f"bench_{run}_{ops - 1}"
    stored = cluster.cli("read", "--pool", "default", obj).stdout
    assert stored == Contents(run, 65536).of(ops - 1)

    _, seq = bench(cluster, *QUICK, "seq")
    assert_sound(seq, "seq")
    assert seq["run"] == run
    assert seq["ops"] <= ops

    _, rand = bench(cluster, *QUICK, "rand")
    assert_sound(rand, "rand")
    assert rand["run"] == run

    # Reads are verified: an object overwritten behind bench's back is a mismatch.
    cluster.cli("write", "--pool", "default", f"bench_{run}_0", "-", input=b"x" * 65536)
    code, tampered = bench(cluster, *QUICK, "--objects", "4", "seq", check=False)
    assert tampered["ops"] == 4
    assert tampered["mismatches"] == 1
    assert code != 0
    restored = Contents(run, 65536).of(0)
    cluster.cli("write", "--pool", "default", f"bench_{run}_0", "-", input=restored)

    # A text-mode write with --cleanup leaves neither its objects nor a new bench_last.
    text = cluster.cli(
        "bench", "--pool", "default", "--seconds", "1", "-b", "4K", "-t", "2", "--cleanup", "write"
    ).stdout.decode()
    assert "Bandwidth (MiB/sec):" in text and "p99 latency (ms):" in text
    assert bench_objects(cluster) == {*names, "bench_last"}
    _, again = bench(cluster, *QUICK, "--objects", "2", "seq")
    assert again["run"] == run
    assert again["mismatches"] == 0

    _, removed = bench(cluster, "--json", "cleanup")
    assert removed["removed"] == ops
    assert bench_objects(cluster) == set()
    missing = cluster.cli("bench", "--pool", "default", "seq", check=False)
    assert missing.returncode != 0
    assert b"no bench objects" in missing.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("64K", 65536),
        ("64k", 65536),
        ("4M", 4 << 20),
        ("4MiB", 4 << 20),
        ("1G", 1 << 30),
    ],
)
def test_sizes_take_binary_suffixes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size("4X")


def test_objects_of_a_run_differ_and_repeat() -> None:
    contents = Contents("0badcafe", 3 << 20)
    first = contents.of(0)
    assert len(first) == 3 << 20
    assert contents.of(1) != first
    assert Contents("0badcafe", 3 << 20).of(0) == first
    assert Contents("0badcaff", 3 << 20).of(0) != first


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
