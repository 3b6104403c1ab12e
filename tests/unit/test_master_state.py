"""The master's tables: automatic out and in, flags, removal — across restarts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from store.errors import RemoteError
from store.master.state import MasterState
from store.placement import ClusterMap


def boot(state: MasterState, n: int) -> None:
    for i in range(n):
        state.osd_boot(
            osd_uuid=f"u{i}",
            osd_id=None,
            host=f"h{i}",
            addr=f"127.0.0.1:{7000 + i}",
            peer_addr=f"127.0.0.1:{7000 + i}",
            cert_name="osd",
        )


def test_down_daemons_go_out_after_the_interval_and_in_when_they_boot(tmp_path: Path) -> None:
    state = MasterState(tmp_path)
    boot(state, 3)
    state.osds_set_up([2], False)
    assert state.down_too_long(now=1e12, interval=600) == [2]
    assert state.down_too_long(now=time.time(), interval=600) == []
    assert state.osds_auto_out([2])
    assert not state.map.osds[2].in_
    assert state.down_too_long(now=1e12, interval=600) == []  # out already
    # A restarted master remembers that the master, not an operator, took it out.
    state.close()
    state = MasterState(tmp_path)
    epoch = state.map.epoch
    boot(state, 3)
    assert state.map.osds[2].in_ and state.map.osds[2].up
    assert state.map.epoch == epoch + 1


def test_an_operators_out_stays_out_across_boots(tmp_path: Path) -> None:
    state = MasterState(tmp_path)
    boot(state, 3)
    state.osds_set_up([1], False)
    state.osds_auto_out([1])
    state.osd_set(1, in_=False)  # the operator says so too: theirs now
    boot(state, 3)
    assert not state.map.osds[1].in_


def test_noout_suspends_the_automatic_out(tmp_path: Path) -> None:
    state = MasterState(tmp_path)
    boot(state, 3)
    state.osds_set_up([0], False)
    assert state.set_flag("noout", True)
    assert not state.set_flag("noout", True)  # no change, no epoch
    assert state.map.flags == {"noout"}
    assert state.down_too_long(now=1e12, interval=600) == []
    assert ClusterMap.from_wire(state.map.to_wire()).flags == {"noout"}
    state.close()
    state = MasterState(tmp_path)
    assert state.map.flags == {"noout"}
    assert state.set_flag("noout", False)
    assert state.down_too_long(now=1e12, interval=600) == [0]
    with pytest.raises(RemoteError, match="unknown flag 'nodown'"):
        state.set_flag("nodown", True)


def test_remove_needs_the_daemon_down(tmp_path: Path) -> None:
    state = MasterState(tmp_path)
    boot(state, 3)
    with pytest.raises(RemoteError, match="is up"):
        state.osd_rm(1)
    state.osds_set_up([1], False)
    state.osd_rm(1)
    assert 1 not in state.map.osds
    with pytest.raises(RemoteError, match=r"no osd\.1"):
        state.osd_rm(1)


def test_a_data_directory_from_before_the_new_columns_is_migrated(tmp_path: Path) -> None:
    state = MasterState(tmp_path)
    boot(state, 2)
    state.close()
    db = sqlite3.connect(tmp_path / "master.db")
    db.execute("ALTER TABLE osds DROP COLUMN down_since")
    db.execute("ALTER TABLE osds DROP COLUMN auto_out")
    db.commit()
    db.close()
    state = MasterState(tmp_path)
    state.osds_set_up([0], False)
    assert state.down_too_long(now=1e12, interval=1) == [0]
