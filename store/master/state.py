"""The master's state, kept in SQLite in its data directory.

Theory of operation
-------------------
The tables (daemons, pools, clients, service keys) are the truth; a *map* is a snapshot of
the daemon and pool tables stamped with an epoch. Every change that other processes must see
(a daemon up or down, a pool created or resized) goes through ``_new_epoch`` in the same
SQLite transaction as the change itself, so a master killed at any moment restarts with
tables and map history that agree, and epochs never go backwards. Every map ever made is
kept (they are a few KiB), which is what lets daemons later ask "what did the cluster look
like at epoch N" when they peer.

This module does no networking; ``store.master.server`` drives it.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

from store.auth import Caps, ServiceKeys, is_valid_client_name, new_secret
from store.errors import Code, RemoteError
from store.placement import ClusterMap, OsdInfo, PoolSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS osds (
    id INTEGER PRIMARY KEY, uuid TEXT UNIQUE NOT NULL, host TEXT NOT NULL,
    addr TEXT NOT NULL, peer_addr TEXT NOT NULL, cert_name TEXT NOT NULL,
    weight REAL NOT NULL, up INTEGER NOT NULL, in_ INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pools (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
    min_size INTEGER NOT NULL, pg_num INTEGER NOT NULL, seed INTEGER NOT NULL,
    encrypt INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS maps (epoch INTEGER PRIMARY KEY, data BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY, secret BLOB NOT NULL, caps BLOB NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS service_keys (data BLOB NOT NULL);
"""

# Flags an operator sets on the whole cluster, and what each does.
MAP_FLAGS = {
    "noout": "daemons that go down are not marked out automatically (maintenance)",
}

POOL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class ClientRecord:
    name: str
    secret: bytes
    caps: Caps
    created: float


def _invalid(message: str) -> RemoteError:
    return RemoteError(Code.EINVAL, message)


class MasterState:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.data_dir / "master.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._migrate()
        if self._meta("fsid") is None:
            self._initialise()
        self._map = self._load_latest_map()

    # --- set-up ------------------------------------------------------------------

    def _migrate(self) -> None:
        """Columns added since the first schema (a data directory of an older master)."""
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(osds)")}
        if "down_since" not in columns:
            # When the daemon was last marked down (unix time), for the automatic out.
            self.db.execute("ALTER TABLE osds ADD COLUMN down_since REAL")
        if "auto_out" not in columns:
            # Marked out by the master, not an operator: marked in again when it boots.
            self.db.execute("ALTER TABLE osds ADD COLUMN auto_out INTEGER NOT NULL DEFAULT 0")

    def _initialise(self) -> None:
        with self._txn():
            self._set_meta("fsid", str(uuid.uuid4()))
            self._set_meta("created", time.time())
            self._write_map(epoch=1)

    def ensure_admin(self) -> bytes | None:
        """Create the `admin` client on a new cluster; returns its secret, once."""
        if self.client("admin") is not None:
            return None
        return self.client_add("admin", Caps(admin=True))

    # --- maps ----------------------------------------------------------------------

    @property
    def map(self) -> ClusterMap:
        return self._map

    def map_at(self, epoch: int) -> ClusterMap | None:
        row = self.db.execute("SELECT data FROM maps WHERE epoch = ?", (epoch,)).fetchone()
        return (
            ClusterMap.from_wire(msgpack.unpackb(row[0], raw=False, strict_map_key=False))
            if row
            else None
        )

    def _load_latest_map(self) -> ClusterMap:
        row = self.db.execute("SELECT data FROM maps ORDER BY epoch DESC LIMIT 1").fetchone()
        return ClusterMap.from_wire(msgpack.unpackb(row[0], raw=False, strict_map_key=False))

    def _build_map(self, epoch: int) -> ClusterMap:
        osds = {
            r[0]: OsdInfo(
                id=r[0],
                uuid=r[1],
                host=r[2],
                addr=r[3],
                peer_addr=r[4],
                cert_name=r[5],
                weight=r[6],
                up=bool(r[7]),
                in_=bool(r[8]),
            )
            for r in self.db.execute(
                "SELECT id, uuid, host, addr, peer_addr, cert_name, weight, up, in_ FROM osds"
            )
        }
        pools = {
            r[0]: PoolSpec(
                id=r[0],
                name=r[1],
                size=r[2],
                min_size=r[3],
                pg_num=r[4],
                seed=r[5],
                encrypt=bool(r[6]),
            )
            for r in self.db.execute(
                "SELECT id, name, size, min_size, pg_num, seed, encrypt FROM pools"
            )
        }
        return ClusterMap(
            epoch=epoch,
            fsid=str(self._meta("fsid")),
            created=float(self._meta("created") or 0),
            osds=osds,
            pools=pools,
            flags=frozenset(str(self._meta("flags") or "").split()),
        )

    def _write_map(self, epoch: int) -> ClusterMap:
        new = self._build_map(epoch)
        self.db.execute(
            "INSERT INTO maps (epoch, data, created) VALUES (?, ?, ?)",
            (epoch, msgpack.packb(new.to_wire(), use_bin_type=True), time.time()),
        )
        return new

    def _new_epoch(self) -> None:
        # Called inside a transaction, after the table change it publishes.
        self._map = self._write_map(self._map.epoch + 1)

    # --- daemons -------------------------------------------------------------------

    def osd_boot(
        self,
        *,
        osd_uuid: str,
        osd_id: int | None,
        host: str,
        addr: str,
        peer_addr: str,
        cert_name: str,
        weight: float = 1.0,
    ) -> int:
        """A daemon (re)starting: register it or update its addresses; marks it up and in."""
        with self._txn():
            row = self.db.execute("SELECT id, in_ FROM osds WHERE uuid = ?", (osd_uuid,)).fetchone()
            if row is None:
                if osd_id is not None:
                    taken = self.db.execute(
                        "SELECT uuid FROM osds WHERE id = ?", (osd_id,)
                    ).fetchone()
                    if taken is not None:
                        raise _invalid(
                            f"osd.{osd_id} is registered to another disk (uuid {taken[0]})"
                        )
                else:
                    osd_id = self._next_osd_id()
                self.db.execute(
                    "INSERT INTO osds (id, uuid, host, addr, peer_addr, cert_name, weight, up, in_)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1)",
                    (osd_id, osd_uuid, host, addr, peer_addr, cert_name, weight),
                )
                self._new_epoch()
                return osd_id
            if osd_id is not None and osd_id != row[0]:
                raise _invalid(f"this disk is osd.{row[0]} at the master, not osd.{osd_id}")
            osd_id = int(row[0])
            changed = False
            if self.db.execute("SELECT auto_out FROM osds WHERE id=?", (osd_id,)).fetchone()[0]:
                # Out only because it stayed down: back in now that it is back (as Ceph does).
                self.db.execute("UPDATE osds SET in_=1, auto_out=0 WHERE id=?", (osd_id,))
                changed = True
            current = self._map.osds.get(osd_id)
            wanted = (host, addr, peer_addr, cert_name, True)
            if (
                current is None
                or (current.host, current.addr, current.peer_addr, current.cert_name, current.up)
                != wanted
            ):
                self.db.execute(
                    "UPDATE osds SET host=?, addr=?, peer_addr=?, cert_name=?, up=1,"
                    " down_since=NULL WHERE id=?",
                    (host, addr, peer_addr, cert_name, osd_id),
                )
                changed = True
            if changed:
                self._new_epoch()
            return osd_id

    def _next_osd_id(self) -> int:
        ids = {r[0] for r in self.db.execute("SELECT id FROM osds")}
        return next(i for i in range(len(ids) + 1) if i not in ids)

    def osds_set_up(self, ids: list[int], up: bool) -> bool:
        changed = [i for i in ids if i in self._map.osds and self._map.osds[i].up != up]
        if not changed:
            return False
        down_since = None if up else time.time()
        with self._txn():
            self.db.executemany(
                "UPDATE osds SET up=?, down_since=? WHERE id=?",
                [(int(up), down_since, i) for i in changed],
            )
            self._new_epoch()
        return True

    def down_too_long(self, now: float, interval: float) -> list[int]:
        """Daemons down and in for `interval` seconds or more: due to be marked out
        (none while the noout flag is set)."""
        if "noout" in self._map.flags:
            return []
        rows = self.db.execute(
            "SELECT id FROM osds WHERE up=0 AND in_=1 AND down_since IS NOT NULL"
            " AND down_since <= ?",
            (now - interval,),
        )
        return sorted(int(r[0]) for r in rows)

    def osds_auto_out(self, ids: list[int]) -> bool:
        """Mark out daemons that stayed down (they come back in when they boot)."""
        changed = [i for i in ids if i in self._map.osds and self._map.osds[i].in_]
        if not changed:
            return False
        with self._txn():
            self.db.executemany(
                "UPDATE osds SET in_=0, auto_out=1 WHERE id=?", [(i,) for i in changed]
            )
            self._new_epoch()
        return True

    def osd_rm(self, osd_id: int) -> None:
        """Forget a daemon (the caller checked that nothing depends on it)."""
        info = self._map.osds.get(osd_id)
        if info is None:
            raise RemoteError(Code.ENOENT, f"no osd.{osd_id}")
        if info.up:
            raise RemoteError(
                Code.EAGAIN, f"osd.{osd_id} is up: stop its daemon before removing it"
            )
        with self._txn():
            self.db.execute("DELETE FROM osds WHERE id=?", (osd_id,))
            self._new_epoch()

    def set_flag(self, flag: str, on: bool) -> bool:
        if flag not in MAP_FLAGS:
            known = ", ".join(sorted(MAP_FLAGS))
            raise _invalid(f"unknown flag {flag!r}: known flags are {known}")
        flags = set(self._map.flags)
        if (flag in flags) == on:
            return False
        flags.symmetric_difference_update({flag})
        with self._txn():
            self._set_meta("flags", " ".join(sorted(flags)))
            self._new_epoch()
        return True

    def osd_set(self, osd_id: int, *, in_: bool | None = None, weight: float | None = None) -> bool:
        info = self._map.osds.get(osd_id)
        if info is None:
            raise RemoteError(Code.ENOENT, f"no osd.{osd_id}")
        new = replace(
            info,
            in_=info.in_ if in_ is None else in_,
            weight=info.weight if weight is None else weight,
        )
        if new == info:
            if in_ is not None:  # the operator confirms the state: theirs from now on
                with self._txn():
                    self.db.execute("UPDATE osds SET auto_out=0 WHERE id=?", (osd_id,))
            return False
        if new.weight < 0:
            raise _invalid("weight must be >= 0")
        with self._txn():
            # An operator's in or out is theirs: no automatic in at the next boot.
            self.db.execute(
                "UPDATE osds SET in_=?, weight=?, auto_out=0 WHERE id=?",
                (int(new.in_), new.weight, osd_id),
            )
            self._new_epoch()
        return True

    # --- pools ---------------------------------------------------------------------

    def pool_create(
        self,
        name: str,
        *,
        size: int = 3,
        min_size: int | None = None,
        pg_num: int = 64,
        encrypt: bool = True,
    ) -> PoolSpec:
        if not name or len(name) > 64 or not set(name) <= POOL_NAME_CHARS:
            raise _invalid(f"bad pool name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if any(p.name == name for p in self._map.pools.values()):
            raise RemoteError(Code.EEXIST, f"pool {name!r} exists")
        min_size = min_size if min_size is not None else max(1, size - size // 2)
        self._check_pool_numbers(size, min_size, pg_num)
        with self._txn():
            pool_id = 1 + max(self._map.pools, default=0)
            self.db.execute(
                "INSERT INTO pools (id, name, size, min_size, pg_num, seed, encrypt)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pool_id, name, size, min_size, pg_num, secrets.randbits(32), int(encrypt)),
            )
            self._new_epoch()
        return self._map.pools[pool_id]

    @staticmethod
    def _check_pool_numbers(size: int, min_size: int, pg_num: int) -> None:
        if not 1 <= size <= 10:
            raise _invalid("size must be between 1 and 10")
        if not 1 <= min_size <= size:
            raise _invalid(f"min_size must be between 1 and size ({size})")
        if pg_num < 1 or pg_num & (pg_num - 1) or pg_num > 65536:
            raise _invalid("pg_num must be a power of two between 1 and 65536")

    def pool_set(self, name: str, key: str, value: Any) -> PoolSpec:
        pool = self._pool_named(name)
        fields = {"size": pool.size, "min_size": pool.min_size, "pg_num": pool.pg_num}
        if key == "encrypt":
            words = {
                "1": True,
                "true": True,
                "yes": True,
                "on": True,
                "0": False,
                "false": False,
                "no": False,
                "off": False,
            }
            new_encrypt = value if isinstance(value, bool) else words.get(str(value).lower())
            if new_encrypt is None:
                raise _invalid(f"encrypt must be true or false, not {value!r}")
            updates: dict[str, Any] = {"encrypt": int(new_encrypt)}
        elif key in fields:
            try:
                fields[key] = int(value)
            except (TypeError, ValueError):
                raise _invalid(f"{key} must be an integer") from None
            if key == "size" and fields["min_size"] > fields["size"]:
                fields["min_size"] = fields["size"]
            self._check_pool_numbers(fields["size"], fields["min_size"], fields["pg_num"])
            if key == "pg_num" and fields["pg_num"] < pool.pg_num:
                raise _invalid("pg_num can only grow (merging placement groups is not supported)")
            updates = fields
        else:
            raise _invalid(f"unknown pool setting {key!r}: size, min_size, pg_num or encrypt")
        with self._txn():
            sets = ", ".join(f"{k}=?" for k in updates)
            self.db.execute(f"UPDATE pools SET {sets} WHERE id=?", (*updates.values(), pool.id))
            self._new_epoch()
        return self._map.pools[pool.id]

    def pool_rm(self, name: str) -> None:
        pool = self._pool_named(name)
        with self._txn():
            self.db.execute("DELETE FROM pools WHERE id=?", (pool.id,))
            self._new_epoch()

    def _pool_named(self, name: str) -> PoolSpec:
        for pool in self._map.pools.values():
            if pool.name == name:
                return pool
        raise RemoteError(Code.ENOENT, f"no pool named {name!r}")

    # --- clients and keys --------------------------------------------------------

    def client_add(self, name: str, caps: Caps) -> bytes:
        if not is_valid_client_name(name):
            raise _invalid(f"bad client name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        if self.client(name) is not None:
            raise RemoteError(Code.EEXIST, f"client {name!r} exists")
        secret = new_secret()
        with self._txn():
            self.db.execute(
                "INSERT INTO clients (name, secret, caps, created) VALUES (?, ?, ?, ?)",
                (name, secret, msgpack.packb(caps.to_wire()), time.time()),
            )
        return secret

    def client(self, name: str) -> ClientRecord | None:
        row = self.db.execute(
            "SELECT name, secret, caps, created FROM clients WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return ClientRecord(
            row[0], row[1], Caps.from_wire(msgpack.unpackb(row[2], raw=False)), row[3]
        )

    def clients(self) -> list[ClientRecord]:
        names = [r[0] for r in self.db.execute("SELECT name FROM clients ORDER BY name")]
        return [c for n in names if (c := self.client(n)) is not None]

    def client_rm(self, name: str) -> None:
        with self._txn():
            if self.db.execute("DELETE FROM clients WHERE name = ?", (name,)).rowcount == 0:
                raise RemoteError(Code.ENOENT, f"no client named {name!r}")

    def service_keys(self) -> ServiceKeys:
        row = self.db.execute("SELECT data FROM service_keys").fetchone()
        if row is None:
            return ServiceKeys.from_wire([])
        return ServiceKeys.from_wire(msgpack.unpackb(row[0], raw=False))

    def rotate_service_keys(self, now: float, rotation_interval: float, ticket_ttl: float) -> bool:
        keys = self.service_keys()
        if not keys.rotate(now, rotation_interval, ticket_ttl):
            return False
        with self._txn():
            self.db.execute("DELETE FROM service_keys")
            self.db.execute(
                "INSERT INTO service_keys (data) VALUES (?)",
                (msgpack.packb(keys.to_wire(), use_bin_type=True),),
            )
        return True

    # --- plumbing --------------------------------------------------------------------

    def _meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @contextmanager
    def _txn(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        saved_map = self._map if hasattr(self, "_map") else None
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            if saved_map is not None:
                self._map = saved_map
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
