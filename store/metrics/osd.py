"""What a storage daemon counts, and the families it exposes.

The UDP front counts into a :class:`FrontStats`; the replication and recovery code counts
into the process's :data:`PEER_TRAFFIC` (one daemon per process), which also logs the
start and end of every recovery. ``osd_collector(daemon)`` reads all of it at scrape time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from store.metrics.client import result_name
from store.metrics.families import ScrapeCollector, counter, counter_by, gauge, gauge_by, histogram
from store.metrics.stats import LatencyHistogram

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon

log = logging.getLogger("store.osd")

OP_KINDS = ("read", "write", "stage", "list", "invalid")


class FrontStats:
    """The UDP front's counters: datagrams, requests by kind and result, latency, data."""

    __slots__ = (
        "data_bytes",
        "fragmented",
        "latency",
        "ops",
        "received",
        "received_bytes",
        "repeats",
        "sent",
        "sent_bytes",
        "sessions_opened",
    )

    def __init__(self) -> None:
        self.received = 0
        self.received_bytes = 0
        self.sent = 0
        self.sent_bytes = 0
        self.sessions_opened = 0
        self.fragmented = 0  # replies sent in several datagrams
        self.ops: Counter[tuple[str, int]] = Counter()  # (kind, result code) -> requests
        self.data_bytes: Counter[str] = Counter()  # "read" / "written" -> object bytes
        # Writes sent again after they were done, answered from the reply cache.
        self.repeats: Counter[str] = Counter()
        self.latency = {kind: LatencyHistogram() for kind in OP_KINDS}

    def answered(self, kind: str, code: int, seconds: float) -> None:
        self.ops[(kind, code)] += 1
        self.latency[kind].observe(seconds)


def data_bytes_of(ops: Iterable[Any]) -> int:
    """Object data carried by write operations (``write``, ``write_full``)."""
    total = 0
    for op in ops:
        data = getattr(op, "data", None)
        if type(data) is bytes or type(data) is memoryview:
            total += len(data)
    return total


def data_bytes_of_results(results: Iterable[Any]) -> int:
    """Object data in a read's results."""
    total = 0
    for r in results:  # a loop, not sum() over a generator: this runs for every read
        if type(r) is bytes:
            total += len(r)
    return total


class PeerTraffic:
    """Replication and recovery between daemons; recoveries are also logged here."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.recoveries: Counter[str] = Counter()

    def forwarded(self, copies: int, ops: Iterable[Any]) -> None:
        self.ops["replication_sent"] += copies
        self.bytes["replication_sent"] += copies * data_bytes_of(ops)

    def repop_received(self, ops: Iterable[Any]) -> None:
        self.ops["replication_received"] += 1
        self.bytes["replication_received"] += data_bytes_of(ops)

    def pushed(self, state: Any) -> None:
        self.ops["recovery_pushed"] += 1
        self.bytes["recovery_pushed"] += len(getattr(state, "data", b""))

    def pulled(self, state: Any) -> None:
        self.ops["recovery_pulled"] += 1
        self.bytes["recovery_pulled"] += len(getattr(state, "data", b""))

    def push_received(self, raw: object) -> None:
        # Counted before the state is checked: only the size of what arrived.
        data = raw.get("data") if isinstance(raw, dict) else None
        self.ops["recovery_received"] += 1
        self.bytes["recovery_received"] += len(data) if isinstance(data, bytes) else 0

    def recovery_started(self, pg: str, member: int) -> None:
        self.recoveries["started"] += 1
        log.info("pg %s: recovery of osd.%d started", pg, member)

    def recovery_finished(self, pg: str, member: int, caught_up: bool) -> None:
        if caught_up:
            self.recoveries["finished"] += 1
            log.info("pg %s: recovery of osd.%d finished", pg, member)
        else:
            self.recoveries["abandoned"] += 1
            log.info("pg %s: recovery of osd.%d stopped: the PG's acting set changed", pg, member)


PEER_TRAFFIC = PeerTraffic()


def _split(key: str) -> tuple[str, str]:
    kind, direction = key.split("_", 1)
    return kind, direction


def osd_families(daemon: OsdDaemon) -> Iterator[Metric]:
    yield gauge(
        "store_osd_info",
        "This daemon: its id and failure domain.",
        labels=["osd", "host"],
        samples=[((str(daemon.osd_id), daemon.config.host), 1)],
    )
    yield gauge("store_osd_map_epoch", "Epoch of the newest map this daemon has.", daemon.map.epoch)
    front = getattr(daemon, "front", None)
    if front is not None:
        yield from _front_families(front)
    states: Counter[str] = Counter()
    replicas = recovering = 0
    for pg in daemon.pgs.values():
        state = pg.status()
        if state is not None:
            states[state] += 1
        elif pg.state == "replica":
            replicas += 1
        recovering += len(pg.recovery.recovering)
    yield gauge_by("store_osd_pgs", "PGs this daemon is primary of, by state.", "state", states)
    yield gauge("store_osd_pg_replicas", "PGs this daemon holds a replica of.", replicas)
    yield gauge(
        "store_osd_recovering_members",
        "Members of this daemon's PGs it is recovering now.",
        recovering,
    )
    traffic = PEER_TRAFFIC
    yield counter(
        "store_osd_peer_ops",
        "Replication forwards and recovery transfers, by kind and direction.",
        labels=["kind", "direction"],
        samples=[(_split(k), v) for k, v in sorted(traffic.ops.items())],
    )
    yield counter(
        "store_osd_peer_bytes",
        "Object data moved between daemons, by kind and direction.",
        labels=["kind", "direction"],
        samples=[(_split(k), v) for k, v in sorted(traffic.bytes.items())],
    )
    yield counter_by(
        "store_osd_recoveries",
        "Recoveries of PG members, by how they ended (or started).",
        "event",
        {k: traffic.recoveries.get(k, 0) for k in ("started", "finished", "abandoned")},
    )
    disk = daemon.disk
    if disk is not None:
        yield gauge("store_osd_disk_total_bytes", "Size of the daemon's filesystem.", disk.total)
        yield gauge("store_osd_disk_free_bytes", "Bytes free for the daemon.", disk.avail)
        yield gauge(
            "store_osd_disk_used_ratio", "Fraction of the filesystem in use.", disk.used_ratio
        )
    yield gauge(
        "store_osd_full", "1 while writes are refused: disk above full_ratio.", int(daemon.full)
    )
    yield gauge(
        "store_osd_nearfull", "1 while the disk is above nearfull_ratio.", int(daemon.nearfull)
    )
    yield gauge(
        "store_osd_full_ratio", "Disk use above which writes are refused.", daemon.config.full_ratio
    )
    usage = daemon.usage
    if usage:
        yield gauge(
            "store_osd_objects", "Objects stored (refreshed every 30 s).", usage.get("objects", 0)
        )
        yield gauge(
            "store_osd_stored_bytes",
            "Logical bytes of objects stored (refreshed every 30 s).",
            usage.get("bytes", 0),
        )
    yield counter(
        "store_osd_checksum_errors",
        "Blocks whose checksum did not match when read.",
        daemon.store.checksum_errors,
    )
    yield counter(
        "store_osd_write_batches", "Disk transactions (group commits).", daemon.writes.batches
    )
    yield counter("store_osd_write_txns", "Operations applied to disk.", daemon.writes.applied)
    peers = getattr(daemon, "peers", None)
    if peers is not None:
        open_links = sum(1 for c in peers.links.values() if not c.closed.is_set())
        yield gauge("store_osd_peer_links", "Open connections to peer daemons.", open_links)


def _front_families(front: Any) -> Iterator[Metric]:
    stats: FrontStats = front.stats
    yield counter_by(
        "store_osd_datagrams",
        "Datagrams received and sent on the client port.",
        "direction",
        {"received": stats.received, "sent": stats.sent},
    )
    yield counter_by(
        "store_osd_datagram_bytes",
        "Bytes of datagrams received and sent on the client port.",
        "direction",
        {"received": stats.received_bytes, "sent": stats.sent_bytes},
    )
    yield counter_by(
        "store_osd_datagrams_dropped",
        "Datagrams not served, by reason (malformed, bad_mac, replay, stale_epoch, ...).",
        "reason",
        dict(front.dropped),
    )
    ops: Counter[tuple[str, str]] = Counter()
    for (kind, code), n in stats.ops.items():
        ops[(kind, result_name(code))] += n
    yield counter(
        "store_osd_ops",
        "Client requests answered, by kind and result.",
        labels=["op", "result"],
        samples=sorted(ops.items()),
    )
    yield counter_by(
        "store_osd_op_data_bytes",
        "Object data read, written and staged by client requests.",
        "direction",
        {d: stats.data_bytes[d] for d in ("read", "written", "staged")},
    )
    yield counter_by(
        "store_osd_repeated_writes",
        "Writes a client sent again after they were done, answered from the reply cache.",
        "how",
        {"answered_again": stats.repeats.get("answered_again", 0)},
    )
    yield histogram(
        "store_osd_op_latency_seconds",
        "Time from a request's arrival to its answer, by kind.",
        labels=["op"],
        samples=[((kind,), h) for kind, h in stats.latency.items() if h.count],
    )
    sessions = front.sessions
    yield gauge(
        "store_osd_sessions", "Open client sessions.", len(sessions.sessions) if sessions else 0
    )
    yield counter("store_osd_sessions_opened", "Client sessions opened.", stats.sessions_opened)
    yield counter(
        "store_osd_fragmented_replies",
        "Read replies sent in several datagrams (fragments).",
        stats.fragmented,
    )
    yield gauge(
        "store_osd_staged_bytes",
        "Bytes of large writes staged, not yet committed.",
        front.stages.area.held,
    )


def osd_collector(daemon: OsdDaemon) -> ScrapeCollector:
    return ScrapeCollector(lambda: osd_families(daemon), "osd")
