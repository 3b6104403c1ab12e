"""The storage map, and where every placement group lives.

Theory of operation
-------------------

The master builds a `ClusterMap` (daemons, pools, an epoch) and ships it to everyone; the
rest of the cluster only reads it. From the map alone, every process computes the same
answer to "which daemons hold PG p of pool P" — no process state, no dict order, no
Python hash randomisation enters the computation.

Objects to PGs: ``pg = stable_mod(xxh3_64(name, seed=pool.seed), pg_num)``, Ceph's
``stable_mod``: doubling ``pg_num`` splits PG p into p and p + old_pg_num and moves nothing
else.

PGs to daemons, for all PGs of a pool at once (then cached on the map instance):

1. Ranking (straw2 / weighted rendezvous). Each eligible daemon d (``in`` and weight > 0;
   a daemon that is merely down stays, so its PGs are degraded rather than remapped) draws
   ``ln(u) / weight`` for each PG, ``u`` from xxh3 of (pool seed, pool id, PG) keyed by a
   hash of the daemon id. Sorting the draws ranks the daemons for that PG. Adding or
   removing a daemon only inserts or deletes it in each ranking, so taking the top of the
   rankings moves the ideal amount of data — but each daemon's load is then binomial:
   at ~100 replicas per daemon the fullest one carries 1.25-1.35x the mean.

2. Capped matching. Every daemon gets a capacity ``ceil(expected * (1 + HEADROOM))``,
   where ``expected`` is its weight share of the pool's replicas, water-filled so that no
   host is asked for more than the host-spreading rule can give it. All (PG, daemon)
   pairs are then taken in descending order of draw (a heap over each PG's ranking): a
   pair is accepted while the PG still needs replicas, the daemon is below capacity and
   the daemon's host is not yet in the PG. The result is the stable matching in which
   PGs prefer their better-ranked daemons and full daemons keep the PGs that rank them
   highest; it depends only on the draws, never on an iteration order. A PG that finds
   every remaining candidate full (rare) completes from its ranking without caps.

   Guarantee: no daemon holds more than its capacity (barring that rare completion), so
   max/mean <= 1 + HEADROOM + 1/mean. Movement is not a theorem: a change of map moves
   the replicas the ranking moves, plus short chains at daemons whose cap binds (a full
   daemon that loses a PG takes back the best PG it had turned away). Measured at
   ~100-150 replicas per daemon: adding a daemon moves 1.00-1.05x the ideal on average,
   <= 1.2x in every seed tried; marking one out 1.01-1.05x. The chains grow with the
   fraction of daemons at cap, which is why HEADROOM is not smaller.

3. Host spreading. Replicas of a PG go to distinct hosts while at least ``size`` hosts
   have eligible daemons. With fewer, a first round takes one daemon on every host and a
   second fills up the rest with at most ``t`` per host, the least ``t`` that can fit.

4. Primaries. The first daemon of a placement is the PG's primary (the first *up* one
   serves). A second capped matching over each PG's own members picks it, so the read
   load is spread too; the rest follow in ranking order. Reordering moves no data.

Draws are IEEE doubles from ``math.log``: identical across processes on one platform;
a last-bit difference between libms could only matter for two draws within one ulp.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import xxhash

from store.errors import ProtocolError, StoreError

# Capacity headroom over each daemon's expected replica count; see the theory above.
HEADROOM = 0.13
# Headroom for primaries, which move no data, so they can be held tighter.
PRIMARY_HEADROOM = 0.10
MAX_PG_NUM = 1 << 16
MAX_POOL_SIZE = 32
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_DAEMON_SALT = 0x6F73642D6B6579  # keys a daemon's draws by its id alone
_LN_2_53 = 53 * math.log(2)


class MapError(ProtocolError):
    """A storage map from the network that does not parse or does not make sense."""


class UnknownPool(StoreError):
    """No pool of that name or id in the current map."""


@dataclass(frozen=True, slots=True)
class OsdInfo:
    id: int
    uuid: str
    host: str  # failure domain
    addr: str  # "HOST:PORT" UDP address clients are told (advertised, may differ from bind)
    peer_addr: str  # "HOST:PORT" TCP peer address (replication)
    cert_name: str  # CN of the daemon's certificate; peers check it
    weight: float  # >= 0; 0 takes no PGs
    up: bool
    in_: bool  # wire key "in"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    id: int
    name: str
    size: int  # replicas
    min_size: int  # writes need at least this many up
    pg_num: int  # power of two
    seed: int  # u32, random, chosen at creation; seeds object hashing
    encrypt: bool = True  # datagram bodies encrypted for this pool


@dataclass(frozen=True)
class ClusterMap:
    epoch: int
    fsid: str
    created: float
    osds: Mapping[int, OsdInfo] = field(hash=False)
    pools: Mapping[int, PoolSpec] = field(hash=False)
    _placements: dict[int, _PoolPlacement] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # Read-only views over private copies: a map is shared by everyone who got it.
        for name, members in (("osds", self.osds), ("pools", self.pools)):
            frozen = {k: members[k] for k in sorted(members)}
            for key, member in frozen.items():
                if key != member.id:
                    raise ValueError(f"{name}[{key}] holds id {member.id}")
            object.__setattr__(self, name, MappingProxyType(frozen))

    def pool(self, pool_id: int) -> PoolSpec:
        spec = self.pools.get(pool_id)
        if spec is None:
            raise UnknownPool(f"no pool with id {pool_id} in map epoch {self.epoch}{self._known()}")
        return spec

    def pool_by_name(self, name: str) -> PoolSpec:
        for spec in self.pools.values():
            if spec.name == name:
                return spec
        raise UnknownPool(f"no pool named {name!r} in map epoch {self.epoch}{self._known()}")

    def _known(self) -> str:
        names = sorted(p.name for p in self.pools.values())
        return f"; pools are: {', '.join(names)}" if names else "; there are no pools yet"

    def to_wire(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "fsid": self.fsid,
            "created": self.created,
            "osds": [
                {
                    "id": o.id,
                    "uuid": o.uuid,
                    "host": o.host,
                    "addr": o.addr,
                    "peer_addr": o.peer_addr,
                    "cert_name": o.cert_name,
                    "weight": o.weight,
                    "up": o.up,
                    "in": o.in_,
                }
                for o in self.osds.values()
            ],
            "pools": [
                {
                    "id": p.id,
                    "name": p.name,
                    "size": p.size,
                    "min_size": p.min_size,
                    "pg_num": p.pg_num,
                    "seed": p.seed,
                    "encrypt": p.encrypt,
                }
                for p in self.pools.values()
            ],
        }

    @classmethod
    def from_wire(cls, d: object) -> ClusterMap:
        """Parse a map received from the network; raises only `MapError`.

        Unknown keys are ignored, so an older reader accepts a newer master's maps.
        """
        top = _record_untrusted(d, "map")
        osds: dict[int, OsdInfo] = {}
        for item in _list_untrusted(top, "osds", "map"):
            osd = _osd_untrusted(item)
            if osd.id in osds:
                raise MapError(f"osd.{osd.id} appears twice in the map")
            osds[osd.id] = osd
        pools: dict[int, PoolSpec] = {}
        for item in _list_untrusted(top, "pools", "map"):
            spec = _pool_untrusted(item)
            if spec.id in pools or any(p.name == spec.name for p in pools.values()):
                raise MapError(f"pool {spec.id} ({spec.name!r}) appears twice in the map")
            pools[spec.id] = spec
        created = _get(top, "created", (float, int), "map")
        if not math.isfinite(created):
            raise MapError(f"map creation time {created!r} is not a number")
        return cls(
            epoch=_int_untrusted(top, "epoch", "map", 0, _U64),
            fsid=_get(top, "fsid", str, "map"),
            created=float(created),
            osds=osds,
            pools=pools,
        )


def _record_untrusted(d: object, what: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise MapError(f"{what} is a {type(d).__name__}, not a map")
    return d


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise MapError(f"{what} has no {key!r}")
    value = d[key]
    # bool is an int to Python but never a valid number here, nor a number a valid bool.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MapError(f"{what}: {key!r} is a {type(value).__name__}")
    return value


def _int_untrusted(d: Mapping[str, Any], key: str, what: str, lo: int, hi: int) -> int:
    value: int = _get(d, key, int, what)
    if not lo <= value <= hi:
        raise MapError(f"{what}: {key} {value} is outside {lo}..{hi}")
    return value


def _list_untrusted(d: Mapping[str, Any], key: str, what: str) -> Sequence[object]:
    result: Sequence[object] = _get(d, key, (list, tuple), what)
    return result


def _hostport_untrusted(d: Mapping[str, Any], key: str, what: str) -> str:
    text: str = _get(d, key, str, what)
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdecimal() or not port.isascii() or int(port) > 65535:
        raise MapError(f"{what}: {key} {text!r} is not HOST:PORT")
    return text


def _osd_untrusted(item: object) -> OsdInfo:
    d = _record_untrusted(item, "an osd entry")
    osd_id = _int_untrusted(d, "id", "an osd entry", 0, _U32)
    what = f"osd.{osd_id}"
    weight = float(_get(d, "weight", (float, int), what))
    if not (math.isfinite(weight) and weight >= 0):
        raise MapError(f"{what}: weight {weight!r} is not a finite number >= 0")
    return OsdInfo(
        id=osd_id,
        uuid=_get(d, "uuid", str, what),
        host=_get(d, "host", str, what),
        addr=_hostport_untrusted(d, "addr", what),
        peer_addr=_hostport_untrusted(d, "peer_addr", what),
        cert_name=_get(d, "cert_name", str, what),
        weight=weight,
        up=_get(d, "up", bool, what),
        in_=_get(d, "in", bool, what),
    )


def _pool_untrusted(item: object) -> PoolSpec:
    d = _record_untrusted(item, "a pool entry")
    pool_id = _int_untrusted(d, "id", "a pool entry", 0, _U32)
    what = f"pool {pool_id}"
    name: str = _get(d, "name", str, what)
    if not name:
        raise MapError(f"{what} has an empty name")
    size = _int_untrusted(d, "size", what, 1, MAX_POOL_SIZE)
    pg_num = _int_untrusted(d, "pg_num", what, 1, MAX_PG_NUM)
    if pg_num & (pg_num - 1):
        raise MapError(f"{what}: pg_num {pg_num} is not a power of two")
    return PoolSpec(
        id=pool_id,
        name=name,
        size=size,
        min_size=_int_untrusted(d, "min_size", what, 1, size),
        pg_num=pg_num,
        seed=_int_untrusted(d, "seed", what, 0, _U32),
        encrypt=_get(d, "encrypt", bool, what),
    )


# --- objects to placement groups ------------------------------------------------------


def object_hash(name: str | bytes, seed: int) -> int:
    data = name.encode() if isinstance(name, str) else name
    return xxhash.xxh3_64_intdigest(data, seed)


def pg_mask(pg_num: int) -> int:
    """The smallest all-ones mask covering every PG number below `pg_num`."""
    return (1 << (pg_num - 1).bit_length()) - 1


def stable_mod(x: int, b: int, bmask: int) -> int:
    """Ceph's stable_mod: x mod b such that growing b moves values out of one bucket only."""
    return x & bmask if (x & bmask) < b else x & (bmask >> 1)


def pg_of(pool: PoolSpec, name: str | bytes) -> int:
    return stable_mod(object_hash(name, pool.seed), pool.pg_num, pg_mask(pool.pg_num))


# --- placement groups to daemons --------------------------------------------------------


def placement(m: ClusterMap, pool_id: int, pg: int) -> tuple[int, ...]:
    """The daemons chosen for the PG, primary first; down daemons included (degraded PG)."""
    return _pool_placement(m, pool_id, pg).sets[pg]


def acting_set(m: ClusterMap, pool_id: int, pg: int) -> tuple[int, ...]:
    """The placement's daemons that are up, in placement order."""
    return tuple(i for i in placement(m, pool_id, pg) if m.osds[i].up)


def primary(m: ClusterMap, pool_id: int, pg: int) -> int | None:
    for osd_id in placement(m, pool_id, pg):
        if m.osds[osd_id].up:
            return osd_id
    return None


def pgs_of_osd(m: ClusterMap, pool_id: int, osd_id: int) -> list[int]:
    """PGs of the pool whose placement contains the daemon, ascending."""
    return list(_pool_placement(m, pool_id).by_osd().get(osd_id, ()))


class _PoolPlacement:
    """The placements of every PG of one pool under one map."""

    __slots__ = ("_by_osd", "sets")

    def __init__(self, sets: tuple[tuple[int, ...], ...]) -> None:
        self.sets = sets
        self._by_osd: dict[int, tuple[int, ...]] | None = None

    def by_osd(self) -> dict[int, tuple[int, ...]]:
        if self._by_osd is None:
            index: dict[int, list[int]] = {}
            for pg, members in enumerate(self.sets):
                for osd_id in members:
                    index.setdefault(osd_id, []).append(pg)
            self._by_osd = {k: tuple(v) for k, v in index.items()}
        return self._by_osd


def _pool_placement(m: ClusterMap, pool_id: int, pg: int = 0) -> _PoolPlacement:
    spec = m.pool(pool_id)
    if not 0 <= pg < spec.pg_num:
        raise ValueError(f"pool {spec.name!r} has PGs 0..{spec.pg_num - 1}, not {pg}")
    cached = m._placements.get(pool_id)
    if cached is None:
        eligible = [o for o in m.osds.values() if o.in_ and o.weight > 0]
        cached = _PoolPlacement(_Placer(spec, eligible).place())
        m._placements[pool_id] = cached
    return cached


class _Placer:
    """Computes the placement of every PG of one pool; see the theory of operation."""

    def __init__(self, pool: PoolSpec, eligible: Sequence[OsdInfo]) -> None:
        osds = sorted(eligible, key=lambda o: o.id)
        host_index = {h: i for i, h in enumerate(sorted({o.host for o in osds}))}
        self.pool = pool
        self.ids = [o.id for o in osds]
        self.host = [host_index[o.host] for o in osds]
        self.weight = [o.weight for o in osds]
        self.hosts: list[list[int]] = [[] for _ in host_index]
        for i, h in enumerate(self.host):
            self.hosts[h].append(i)
        self.keys = [
            (xxhash.xxh3_64_intdigest(struct.pack("<Q", o.id), _DAEMON_SALT), 1.0 / o.weight)
            for o in osds
        ]
        self.width = min(pool.size, len(osds))
        # The fewest replicas per host that still fits `width` replicas on these hosts.
        self.per_host = 1
        while sum(min(self.per_host, len(h)) for h in self.hosts) < self.width:
            self.per_host += 1
        # Most PGs settle within their first few candidates; a PG that runs past the
        # shortlist has its whole ranking computed.
        self.shortlist = 2 * self.width + 4
        self.ranks: list[list[tuple[float, int]]] = []

    def place(self) -> tuple[tuple[int, ...], ...]:
        n_pg = self.pool.pg_num
        if self.width == 0:
            return ((),) * n_pg
        expected = self.expected()
        cap = [math.ceil(e * (1 + HEADROOM) - 1e-9) for e in expected]
        self.ranks = [self.ranking(pg, self.shortlist) for pg in range(n_pg)]
        members: list[list[int]] = [[] for _ in range(n_pg)]
        scores: list[list[float]] = [[] for _ in range(n_pg)]
        load = [0] * len(self.ids)
        rounds = [(min(len(self.hosts), self.width), 1)]
        if len(self.hosts) < self.width:
            rounds.append((self.width, self.per_host))
        for want, limit in rounds:
            self.match(members, scores, load, cap, want, limit)
            for pg in range(n_pg):
                if len(members[pg]) < want:
                    self.complete(pg, members[pg], scores[pg], load, want, limit)
        return self.order(members, scores, expected)

    def ranking(self, pg: int, length: int) -> list[tuple[float, int]]:
        """The best `length` daemons for the PG as (draw, daemon index), best first."""
        where = struct.pack("<QQQ", self.pool.seed & _U64, self.pool.id & _U64, pg)
        log, digest = math.log, xxhash.xxh3_64_intdigest
        draws = [(log((digest(where, key) >> 11) + 1) - _LN_2_53) * iw for key, iw in self.keys]
        best = sorted(range(len(draws)), key=draws.__getitem__, reverse=True)[:length]
        return [(draws[i], i) for i in best]

    def expected(self) -> list[float]:
        """Each daemon's fair share of the pool's replicas, as far as host rules allow it."""
        n_pg, hosts = self.pool.pg_num, self.hosts
        every_pg_everywhere = len(hosts) <= self.width
        host_share = _water_fill(
            [sum(self.weight[i] for i in h) for h in hosts],
            [n_pg if every_pg_everywhere else 0] * len(hosts),
            [n_pg * min(self.per_host, len(h)) for h in hosts],
            n_pg * self.width,
        )
        share = [0.0] * len(self.ids)
        for h, total in zip(hosts, host_share, strict=True):
            split = _water_fill([self.weight[i] for i in h], [0] * len(h), [n_pg] * len(h), total)
            for i, s in zip(h, split, strict=True):
                share[i] = s
        return share

    def match(
        self,
        members: list[list[int]],
        scores: list[list[float]],
        load: list[int],
        cap: list[int],
        want: int,
        limit: int,
    ) -> None:
        """Capped matching: take (PG, daemon) pairs best draw first until PGs have `want`."""
        host, n = self.host, len(self.ids)
        position = [0] * len(members)
        heap = [
            (-self.ranks[pg][0][0], pg, self.ranks[pg][0][1])
            for pg in range(len(members))
            if len(members[pg]) < want
        ]
        heapq.heapify(heap)
        while heap:
            negative_draw, pg, i = heapq.heappop(heap)
            chosen = members[pg]
            if (
                load[i] < cap[i]
                and i not in chosen
                and sum(1 for j in chosen if host[j] == host[i]) < limit
            ):
                chosen.append(i)
                scores[pg].append(-negative_draw)
                load[i] += 1
                if len(chosen) == want:
                    continue
            rank, following = self.ranks[pg], position[pg] + 1
            if following == len(rank) and len(rank) < n:
                rank = self.ranks[pg] = self.ranking(pg, n)
            if following < len(rank):
                position[pg] = following
                draw, j = rank[following]
                heapq.heappush(heap, (-draw, pg, j))

    def complete(
        self,
        pg: int,
        chosen: list[int],
        scores: list[float],
        load: list[int],
        want: int,
        limit: int,
    ) -> None:
        """Fill a PG that found every candidate full, from its ranking, over capacity."""
        for draw, i in self.ranking(pg, len(self.ids)):
            if len(chosen) == want:
                return
            if i not in chosen and sum(1 for j in chosen if self.host[j] == self.host[i]) < limit:
                chosen.append(i)
                scores.append(draw)
                load[i] += 1

    def order(
        self, members: list[list[int]], scores: list[list[float]], expected: list[float]
    ) -> tuple[tuple[int, ...], ...]:
        """Pick each PG's primary by a capped matching over its members; rank the rest."""
        cap = [math.ceil(e / self.width * (1 + PRIMARY_HEADROOM) - 1e-9) for e in expected]
        led = [0] * len(self.ids)
        head = [-1] * len(members)
        pairs = sorted(
            (-draw, pg, i)
            for pg, (chosen, drawn) in enumerate(zip(members, scores, strict=True))
            for i, draw in zip(chosen, drawn, strict=True)
        )
        for _, pg, i in pairs:
            if head[pg] < 0 and led[i] < cap[i]:
                head[pg] = i
                led[i] += 1
        result = []
        for pg, (chosen, drawn) in enumerate(zip(members, scores, strict=True)):
            ranked = [i for _, i in sorted(zip(drawn, chosen, strict=True), reverse=True)]
            if head[pg] >= 0:
                ranked.remove(head[pg])
                ranked.insert(0, head[pg])
            result.append(tuple(self.ids[i] for i in ranked))
        return tuple(result)


def _water_fill(
    weights: Sequence[float], lo: Sequence[float], hi: Sequence[float], total: float
) -> list[float]:
    """Split `total` in proportion to `weights`, each share held within [lo, hi]."""

    def shares(level: float) -> list[float]:
        return [min(max(level * w, a), b) for w, a, b in zip(weights, lo, hi, strict=True)]

    low, high = 0.0, max(b / w for w, b in zip(weights, hi, strict=True))
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if sum(shares(middle)) < total:
            low = middle
        else:
            high = middle
    return shares(high)
