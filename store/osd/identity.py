"""The identity of a daemon's disk: which daemon it is, of which cluster.

Written on the first start into ``DIR/identity.json``; a directory that is not empty and
has no identity is refused, so that a typo in ``--dir`` cannot turn someone's home
directory into a storage disk.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from store.errors import ConfigError

IDENTITY_FILE = "identity.json"


@dataclass
class Identity:
    uuid: str
    osd_id: int | None = None
    fsid: str | None = None


def load_or_init(directory: Path) -> Identity:
    path = directory / IDENTITY_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            return Identity(uuid=str(raw["uuid"]), osd_id=raw.get("osd_id"), fsid=raw.get("fsid"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is damaged ({exc}); restore it or use a fresh directory"
            ) from None
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory")
        if any(directory.iterdir()):
            raise ConfigError(
                f"{directory} is not empty and holds no {IDENTITY_FILE}: it is not a store "
                "daemon directory. Give each daemon an empty directory of its own."
            )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = Identity(uuid=str(uuid.uuid4()))
    save(directory, identity)
    return identity


def save(directory: Path, identity: Identity) -> None:
    path = directory / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(identity), f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
