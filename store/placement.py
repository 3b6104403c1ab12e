"""The storage map, and where every placement group lives.

Theory of operation
-------------------

The master builds a `ClusterMap` (daemons, pools, an epoch) and ships it to everyone; the
rest of the cluster only reads it. Every process derives the same placement from the map
alone: no process state, dict order or Python hash randomisation enters the computation.

Objects to PGs: ``pg = stable_mod(xxh3_64(name, seed=pool.seed), pg_num)`` (Ceph's
stable_mod: doubling ``pg_num`` splits PG p into p and p + old_pg_num, nothing else moves).

PGs to daemons is computed for all PGs of a pool at once, then cached on the map:

1. Draws (straw2 / weighted rendezvous). Each eligible daemon — ``in`` with weight > 0;
   a daemon that is only down stays, so its PGs are degraded, not remapped — draws
   ``ln(u) / weight`` for each PG; sorting the draws ranks the daemons for the PG. Adding
   or removing a daemon only inserts or deletes it in every ranking, so the top of the
   rankings moves the ideal amount of data. With independent ``u`` a daemon's load is
   binomial (max/mean 1.15-1.25 at 77-128 replicas per daemon), so ``u`` is *stratified*:
   one daemon's ``u`` over PGs 0..2^k-1 puts exactly one value in each 1/2^k of [0, 1),
   for every k (`_stratified_draws`), while different daemons' ``u`` for one PG stay
   independent. Loads then spread half as wide (max/mean 1.07-1.14 before any cap), and
   since the ``u`` of PG p does not depend on pg_num, growing pg_num leaves old PGs be.

2. Capped matching. Each daemon may hold ``ceil(expected * (1 + HEADROOM))`` replicas,
   ``expected`` being its weight share of the pool's replicas, water-filled so that no
   host is asked for more than host spreading lets it take. All (PG, daemon) pairs are
   taken best draw first (a heap over each PG's ranking); a pair is accepted while the PG
   needs replicas, the daemon is below its cap and its host is not yet in the PG. This is
   the stable matching in which PGs prefer better-ranked daemons and a full daemon keeps
   the PGs that drew it highest — a function of the draws, not of an iteration order. A
   PG left with only full candidates (rare) completes from its ranking over the caps.

   Guarantee: every daemon stays within its cap (barring that rare completion), so
   max/mean <= 1 + HEADROOM + 1/mean. Movement is measured, not proven: a change of map
   moves what the rankings move, plus short chains at daemons whose cap binds (a full
   daemon that loses a PG takes back the best one it had turned away); stratification
   keeps such daemons few. Over 10-40 seeds each of 12-100 daemons, one or several per
   host, 77-154 replicas per daemon: max/mean <= 1.11; adding a daemon moves 0.97-1.03x
   the ideal (total / (n + 1)) on average, 1.16x at worst; marking one out moves
   1.00-1.03x the replicas it held, 1.08x at worst. Unequal weights (1-3): the same.

3. Hosts. A PG's replicas are on distinct hosts while ``size`` hosts have eligible
   daemons. With fewer, a first round takes one daemon on every host and a second fills
   up with at most ``t`` per host, the least ``t`` that fits.

4. Primaries. A placement lists its primary first (the first *up* daemon serves). A
   second capped matching over each PG's members picks it, spreading the read load
   (max/mean 1.10-1.17 at 26-43 primaries per daemon); the rest follow in ranking order.
   Reordering moves no data.

With equal weights the draws are compared as integers; with unequal weights as ln(u) /
weight in fixed point from ``math.log``, the same wherever libm rounds log alike.
"""

from __future__ import annotations

import functools
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
HEADROOM = 0.10
# Headroom for primaries, which move no data, so they can be held tighter.
PRIMARY_HEADROOM = 0.10
MAX_PG_NUM = 1 << 16
MAX_POOL_SIZE = 32
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_2_M53 = 2.0**-53
_DAEMON_SALT = 0x6F73642D6B6579  # keys a daemon's draws by its id alone
_LEVEL_TAG = 1 << 32  # above any PG number: per-level hashes never collide with a PG's
_SCORE_SCALE = 2.0**40  # fixed point for weighted draws ln(u)/w, which lie in [-37/w, 0]


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
    flags: frozenset[str] = frozenset()  # cluster flags an operator set (noout)
    _placements: dict[int, _PoolPlacement] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    # (pool, pg) -> acting set: asked for every request a daemon serves.
    _acting: dict[tuple[int, int], tuple[int, ...]] = field(
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
                {"in" if f == "in_" else f: getattr(o, f) for f in OsdInfo.__slots__}
                for o in self.osds.values()
            ],
            "pools": [{f: getattr(p, f) for f in PoolSpec.__slots__} for p in self.pools.values()],
            "flags": sorted(self.flags),
        }

    @classmethod
    def from_wire(cls, d: object) -> ClusterMap:
        """Parse a map received from the network; raises only `MapError`.

        Unknown keys are ignored, so an older reader accepts a newer master's maps.
        """
        top = _record_untrusted(d, "map")
        osds: dict[int, OsdInfo] = {}
        for item in _get(top, "osds", (list, tuple), "map"):
            osd = _osd_untrusted(item)
            if osd.id in osds:
                raise MapError(f"osd.{osd.id} appears twice in the map")
            osds[osd.id] = osd
        pools: dict[int, PoolSpec] = {}
        for item in _get(top, "pools", (list, tuple), "map"):
            spec = _pool_untrusted(item)
            if spec.id in pools or any(p.name == spec.name for p in pools.values()):
                raise MapError(f"pool {spec.id} ({spec.name!r}) appears twice in the map")
            pools[spec.id] = spec
        flags = top.get("flags", [])
        if not isinstance(flags, list | tuple) or not all(
            isinstance(f, str) and 0 < len(f) <= 32 for f in flags
        ):
            raise MapError("map: 'flags' is not a list of short strings")
        return cls(
            epoch=_int_untrusted(top, "epoch", "map", 0, _U64),
            fsid=_get(top, "fsid", str, "map"),
            created=_number_untrusted(top, "created", "map", -math.inf),
            osds=osds,
            pools=pools,
            flags=frozenset(flags),
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


def _number_untrusted(d: Mapping[str, Any], key: str, what: str, lo: float) -> float:
    value = _get(d, key, (float, int), what)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and number >= lo):
        raise MapError(f"{what}: {key} is not a finite number >= {lo}")
    return number


def _hostport_untrusted(d: Mapping[str, Any], key: str, what: str) -> str:
    text: str = _get(d, key, str, what)
    _, sep, port = text.rpartition(":")
    if not (sep and port.isascii() and port.isdecimal() and len(port) <= 5 and int(port) < 65536):
        raise MapError(f"{what}: {key} {text!r} is not HOST:PORT")
    return text


def _osd_untrusted(item: object) -> OsdInfo:
    d = _record_untrusted(item, "an osd entry")
    osd_id = _int_untrusted(d, "id", "an osd entry", 0, _U32)
    what = f"osd.{osd_id}"
    return OsdInfo(
        id=osd_id,
        uuid=_get(d, "uuid", str, what),
        host=_get(d, "host", str, what),
        addr=_hostport_untrusted(d, "addr", what),
        peer_addr=_hostport_untrusted(d, "peer_addr", what),
        cert_name=_get(d, "cert_name", str, what),
        weight=_number_untrusted(d, "weight", what, 0.0),
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
    acting = m._acting.get((pool_id, pg))
    if acting is None:
        acting = tuple(i for i in placement(m, pool_id, pg) if m.osds[i].up)
        m._acting[(pool_id, pg)] = acting
    return acting


def primary(m: ClusterMap, pool_id: int, pg: int) -> int | None:
    acting = acting_set(m, pool_id, pg)
    return acting[0] if acting else None


def pgs_of_osd(m: ClusterMap, pool_id: int, osd_id: int) -> list[int]:
    """PGs of the pool whose placement contains the daemon, ascending."""
    return list(_pool_placement(m, pool_id).by_osd.get(osd_id, ()))


class _PoolPlacement:
    """The placements of every PG of one pool under one map, and their inverse."""

    __slots__ = ("by_osd", "sets")

    def __init__(self, sets: tuple[tuple[int, ...], ...]) -> None:
        self.sets = sets
        self.by_osd: dict[int, list[int]] = {}
        for pg, members in enumerate(sets):
            for osd_id in members:
                self.by_osd.setdefault(osd_id, []).append(pg)


def _pool_placement(m: ClusterMap, pool_id: int, pg: int = 0) -> _PoolPlacement:
    spec = m.pool(pool_id)
    if not 0 <= pg < spec.pg_num:
        raise ValueError(f"pool {spec.name!r} has PGs 0..{spec.pg_num - 1}, not {pg}")
    cached = m._placements.get(pool_id)
    if cached is None:
        eligible = tuple(
            (o.id, o.host, o.weight) for o in m.osds.values() if o.in_ and 0 < o.weight < math.inf
        )
        cached = m._placements[pool_id] = _place_pool(spec, eligible)
    return cached


# Most new maps only mark daemons up or down, which moves nothing: keep recent answers.
@functools.lru_cache(maxsize=8)
def _place_pool(pool: PoolSpec, eligible: tuple[tuple[int, str, float], ...]) -> _PoolPlacement:
    return _PoolPlacement(_Placer(pool, eligible).place())


class _Placer:
    """Computes the placement of every PG of one pool; see the theory of operation."""

    def __init__(self, pool: PoolSpec, eligible: Sequence[tuple[int, str, float]]) -> None:
        """`eligible` daemons as (id, host, weight), each with weight > 0."""
        osds = sorted(eligible)
        host_index = {h: i for i, h in enumerate(sorted({host for _, host, _ in osds}))}
        self.pool = pool
        self.ids = [osd_id for osd_id, _, _ in osds]
        self.host = [host_index[host] for _, host, _ in osds]
        heaviest = max((weight for _, _, weight in osds), default=1.0)
        # Only ratios matter; a floor keeps the fixed-point draws of tiny weights finite.
        self.weight = [max(weight / heaviest, 1e-9) for _, _, weight in osds]
        self.hosts: list[list[int]] = [[] for _ in host_index]
        for i, h in enumerate(self.host):
            self.hosts[h].append(i)
        self.width = min(pool.size, len(osds))
        # The fewest replicas per host that still fits `width` replicas on these hosts.
        self.per_host = 1
        while sum(min(self.per_host, len(h)) for h in self.hosts) < self.width:
            self.per_host += 1
        # Draws carry the daemon's index in their low bits: sorting plain ints ranks daemons.
        self.index_bits = max(1, (len(osds) - 1).bit_length())
        self.index_mask = (1 << self.index_bits) - 1
        self.columns: list[list[int]] = []
        self.ranks: list[list[int]] = []

    def place(self) -> tuple[tuple[int, ...], ...]:
        n_pg = self.pool.pg_num
        if self.width == 0:
            return ((),) * n_pg
        expected = self.expected()
        cap = [math.ceil(e * (1 + HEADROOM) - 1e-9) for e in expected]
        self.columns = self.draws()
        # Most PGs settle within their first few candidates; one that runs past its
        # shortlist has its whole ranking sorted.
        shortlist = 2 * self.width + 4
        self.ranks = [
            sorted(row, reverse=True)[:shortlist] for row in zip(*self.columns, strict=True)
        ]
        members: list[list[int]] = [[] for _ in range(n_pg)]
        load = [0] * len(self.ids)
        rounds = [(min(len(self.hosts), self.width), 1)]
        if len(self.hosts) < self.width:
            rounds.append((self.width, self.per_host))
        for want, limit in rounds:
            self.match(members, load, cap, want, limit)
            for pg in range(n_pg):
                if len(members[pg]) < want:
                    self.complete(pg, members[pg], load, want, limit)
        return self.order(members, expected)

    def draws(self) -> list[list[int]]:
        """Each daemon's draw for every PG, best highest, its index in the low bits."""
        seed, pool_id = self.pool.seed & _U64, self.pool.id & _U64
        where = [struct.pack("<QQQ", seed, pool_id, pg) for pg in range(self.pool.pg_num)]
        level_tag = [
            struct.pack("<QQQ", seed, pool_id, _LEVEL_TAG + level)
            for level in range(1, self.pool.pg_num.bit_length())
        ]
        uniform = len(set(self.weight)) == 1
        shift, columns = self.index_bits, []
        for i, osd_id in enumerate(self.ids):
            key = xxhash.xxh3_64_intdigest(struct.pack("<Q", osd_id), _DAEMON_SALT)
            if uniform:
                # ln(u)/w orders daemons as u does; integers keep every platform in step.
                columns.append(_stratified_draws(where, level_tag, key, i, shift))
            else:
                u = _stratified_draws(where, level_tag, key, 0, 0)
                scale, log = _SCORE_SCALE / self.weight[i], math.log
                columns.append([(int(log((x + 1) * _2_M53) * scale) << shift) | i for x in u])
        return columns

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

    def full_ranking(self, pg: int) -> list[int]:
        return sorted((column[pg] for column in self.columns), reverse=True)

    def fits(self, chosen: list[int], draw: int, limit: int) -> bool:
        """Whether the daemon of `draw` may join a PG already holding `chosen` draws."""
        mask, host = self.index_mask, self.host
        i = draw & mask
        return draw not in chosen and sum(host[c & mask] == host[i] for c in chosen) < limit

    def match(
        self, members: list[list[int]], load: list[int], cap: list[int], want: int, limit: int
    ) -> None:
        """Capped matching: take (PG, daemon) pairs best draw first until PGs have `want`."""
        mask, n = self.index_mask, len(self.ids)
        position = [0] * len(members)
        heap = [(-self.ranks[pg][0], pg) for pg in range(len(members)) if len(members[pg]) < want]
        heapq.heapify(heap)
        while heap:
            negative_draw, pg = heapq.heappop(heap)
            draw, chosen = -negative_draw, members[pg]
            i = draw & mask
            if load[i] < cap[i] and self.fits(chosen, draw, limit):
                chosen.append(draw)
                load[i] += 1
                if len(chosen) == want:
                    continue
            rank, following = self.ranks[pg], position[pg] + 1
            if following == len(rank) and len(rank) < n:
                rank = self.ranks[pg] = self.full_ranking(pg)
            if following < len(rank):
                position[pg] = following
                heapq.heappush(heap, (-rank[following], pg))

    def complete(self, pg: int, chosen: list[int], load: list[int], want: int, limit: int) -> None:
        """Fill a PG that found every candidate full, from its ranking, over capacity."""
        for draw in self.full_ranking(pg):
            if len(chosen) == want:
                return
            if self.fits(chosen, draw, limit):
                chosen.append(draw)
                load[draw & self.index_mask] += 1

    def order(self, members: list[list[int]], expected: list[float]) -> tuple[tuple[int, ...], ...]:
        """Pick each PG's primary by a capped matching over its members; rank the rest."""
        mask = self.index_mask
        cap = [math.ceil(e / self.width * (1 + PRIMARY_HEADROOM) - 1e-9) for e in expected]
        led = [0] * len(self.ids)
        head = [-1] * len(members)
        for negative_draw, pg in sorted((-d, pg) for pg, ds in enumerate(members) for d in ds):
            i = -negative_draw & mask
            if head[pg] < 0 and led[i] < cap[i]:
                head[pg] = i
                led[i] += 1
        result = []
        for pg, chosen in enumerate(members):
            ranked = [d & mask for d in sorted(chosen, reverse=True)]
            if head[pg] >= 0:
                ranked.remove(head[pg])
                ranked.insert(0, head[pg])
            result.append(tuple(self.ids[i] for i in ranked))
        return tuple(result)


def _stratified_draws(
    where: list[bytes], level_tag: list[bytes], key: int, index: int, shift: int
) -> list[int]:
    """One daemon's 53-bit draws for PGs 0..len(where)-1, shifted over `index` in `shift` bits.

    Every prefix 0..2^k-1 of the draws has exactly one draw in each 1/2^k of the range, as
    in an Owen-scrambled van der Corput sequence: PG p (of bit length b) takes the top b-1
    bits of a partner PG below 2^(b-1), the opposite bit b, and bits of its own hash below.
    The partner is p - 2^(b-1) rotated by an amount drawn per daemon and level, so each
    daemon pairs PGs differently and the rankings of different PGs stay independent.
    """
    digest, top = xxhash.xxh3_64_intdigest, 53 + shift
    u = [(digest(where[0], key) >> 11 << shift) | index]
    level = 1
    while len(u) < len(where):
        half = len(u)
        flip = 1 << (top - level)
        keep = ((1 << top) - 1) ^ (flip - 1)
        turn = digest(level_tag[level - 1], key) % half
        u.extend(
            [
                ((x & keep) ^ flip) | (digest(w, key) >> (11 + level) << shift) | index
                for x, w in zip(u[turn:] + u[:turn], where[half : 2 * half], strict=True)
            ]
        )
        level += 1
    return u


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
