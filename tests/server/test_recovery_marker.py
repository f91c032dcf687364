"""A snapshot file saved without its WAL marker (a crash in between) is finished at start.

The install of a leader's snapshot saves the file, then writes the marker;
a crash between left the WAL believing the log ends where its entries end,
and the node's first append after the snapshot was refused (InvalidAppendError):
the node fail-stopped at its first write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prkdb.config import NodeConfig
from prkdb.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from prkdb.server.recovery import new_state_machine, recover_partition
from prkdb.state import PutCommand, encode_command
from prkdb.storage import SnapshotStore, WriteAheadLog

P = 0


def machine_at(index: int) -> bytes:
    """A snapshot's data: the machine after `index` puts."""
    sm = new_state_machine(NodeConfig.default(), P)
    for i in range(1, index + 1):
        sm.apply(i, encode_command(PutCommand(b"k%d" % i, b"v")))
    return sm.snapshot()


def reopen(tmp_path: Path, snap: Snapshot, wal_entries: list[Entry], commit: int,
           ) -> tuple[WriteAheadLog, int]:
    wal = WriteAheadLog.open(tmp_path / "wal")
    wal.append_entries(P, wal_entries)
    wal.append_hard_state(P, HardState(wal_entries[-1].term, 1, commit))
    wal.sync()
    snapshots = SnapshotStore(tmp_path / "snaps")
    snapshots.save(P, snap)  # ... and the node crashed before the marker
    wal.close()
    wal = WriteAheadLog.open(tmp_path / "wal")
    cfg = NodeConfig.default()
    r = recover_partition(P, cfg.voter_ids, wal, snapshots, new_state_machine(cfg, P))
    return wal, r.storage.last_index()


@pytest.mark.parametrize("wal_last,wal_term", [(8, 1), (30, 1)])
def test_a_leaders_snapshot_beyond_or_against_the_log_restarts_it(
        tmp_path: Path, wal_last: int, wal_term: int) -> None:
    entries = [Entry(wal_term, i) for i in range(1, wal_last + 1)]
    snap = Snapshot(SnapshotMeta(20, 2, ConfState((1,))), machine_at(20))
    wal, last = reopen(tmp_path, snap, entries, commit=5)
    assert last == 20  # the old entries after 20 (term 1) are not the snapshot's log
    wal.append_entries(P, [Entry(2, 21)])  # the first write after it is accepted
    wal.sync()
    wal.close()
    again = WriteAheadLog.open(tmp_path / "wal").recovered()[P]
    assert again.snapshot_index == 20 and [e.index for e in again.entries] == [21]


def test_a_local_snapshot_keeps_the_entries_after_it(tmp_path: Path) -> None:
    entries = [Entry(1, i) for i in range(1, 31)]
    snap = Snapshot(SnapshotMeta(20, 1, ConfState((1,))), machine_at(20))
    wal, last = reopen(tmp_path, snap, entries, commit=30)
    assert last == 30
    wal.append_entries(P, [Entry(1, 31)])
    wal.close()
