"""Rebuild one partition from its newest valid snapshot file and the shared WAL.

The result is the partition's durable mirror (`MemoryStorage`: snapshot,
entries after it, hard state) and its state machine restored from the
snapshot; the Raft core then re-applies the committed entries after it.
A snapshot and a WAL that do not fit together stop the node with a message
naming what is missing (never silent loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prkdb.config import NodeConfig
from prkdb.raft import MemoryStorage
from prkdb.raft.types import Entry, HardState, SnapshotMeta
from prkdb.state import KVStateMachine
from prkdb.storage import PartitionLog, SnapshotStore, WriteAheadLog


class RecoveryError(Exception):
    """The partition's snapshot and WAL do not fit together; names what is missing."""


@dataclass
class RecoveredPartition:
    storage: MemoryStorage
    sm: KVStateMachine
    snapshot_index: int


def new_state_machine(cfg: NodeConfig, partition: int) -> KVStateMachine:
    """An empty state machine for `partition` under `cfg`'s limits.

    Every replica of a partition must use the same limits (they decide
    results; the size of the event history is each replica's own), and the
    partition number is part of its lease ids, so a snapshot of partition p
    decodes only in a machine of partition p.
    """
    lim = cfg.limits
    return KVStateMachine(partition=partition, max_key_size=lim.max_key_size,
                          max_value_size=lim.max_value_size, max_batch_ops=lim.max_batch_ops,
                          max_leases=lim.max_leases, history_events=lim.history_events,
                          history_bytes=lim.history_bytes)


def recover_partition(
    p: int,
    voters: Sequence[int],
    wal: WriteAheadLog,
    snapshots: SnapshotStore,
    sm: KVStateMachine,
) -> RecoveredPartition:
    """Partition `p` as it was durably stored; `sm` is an empty machine to fill."""
    plog: PartitionLog = wal.recovered().get(p) or PartitionLog()
    snap = snapshots.load_latest(p)
    storage = MemoryStorage(voters)
    snap_index = 0
    if snap is not None:
        entries = plog.entries_after(snap.meta.index)
        if entries is None:
            raise RecoveryError(
                f"partition {p}: the WAL no longer holds the entries after snapshot "
                f"{snap.meta.index} (newest marker {plog.snapshot_index}); "
                f"snapshot files in {snapshots.directory}"
            )
        if snap.meta.index > plog.snapshot_index:
            entries = _finish_marker(p, wal, plog, snap.meta, entries)
        storage.apply_snapshot(snap)
        sm.restore(snap.data)
        snap_index = snap.meta.index
    else:
        entries = plog.entries_after(0)
        if entries is None:
            raise RecoveryError(
                f"partition {p}: the WAL has a snapshot marker at {plog.snapshot_index} "
                f"but no valid snapshot file exists in {snapshots.directory}"
            )
    if entries and entries[0].index != snap_index + 1:
        raise RecoveryError(
            f"partition {p}: WAL entries start at {entries[0].index}, expected {snap_index + 1}"
        )
    storage.append(entries)
    hs = plog.hard_state
    # The commit index is persisted lazily: it may trail the snapshot. It
    # never runs ahead of the log: entries are written before the hard state
    # that commits them, and replay stops at the first bad record, so a hard
    # state that says more is committed than the log holds means entries
    # vanished without a trace in the WAL's checks: never start on that.
    if hs.commit > storage.last_index():
        raise RecoveryError(
            f"partition {p}: the hard state says entries up to {hs.commit} are committed, "
            f"but the log ends at {storage.last_index()} (snapshot {snap_index}): "
            f"committed entries are missing from {wal.directory}"
        )
    commit = max(hs.commit, snap_index)
    if not hs.is_empty() or snap_index:
        storage.set_hard_state(HardState(hs.term, hs.vote, commit))
    return RecoveredPartition(storage, sm, snap_index)


def _finish_marker(p: int, wal: WriteAheadLog, plog: PartitionLog, meta: SnapshotMeta,
                   after: list[Entry]) -> list[Entry]:
    """The snapshot file at `meta` was saved but its WAL marker was not (a crash between).

    Write the marker now, as the crashed step would have: the WAL must know
    the log restarts there, or it refuses the first append after it (and a
    snapshot installed from the leader is usually beyond every entry the WAL
    holds). Entries the WAL holds after it stay only if its entry at
    ``meta.index`` has the snapshot's term; otherwise they are of a log the
    snapshot replaced, and go, as `append_snapshot_marker` drops them too.
    """
    term = next((e.term for e in plog.entries if e.index == meta.index), None)
    wal.append_snapshot_marker(p, meta)
    return after if term == meta.term else []
