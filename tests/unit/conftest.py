from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store.osd.objectstore import ObjectStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    """A real object store on a SQLite file in a temporary directory."""
    opened = ObjectStore(str(tmp_path))
    yield opened
    opened.close()
