"""The read-only view of the durable log that the core consults.

Theory of operation
-------------------
The core never writes storage: what must be persisted leaves through `Ready`
and the driver writes it (to the WAL and then to this in-memory mirror, etcd's
MemoryStorage pattern). So everything in a `Storage` is already durable, and
the core reads it to build AppendEntries and to answer term queries.

`MemoryStorage` keeps a dummy entry at position 0 whose index/term are the
snapshot's: `ents[0].index` is the compaction point, so `term(ents[0].index)`
still answers (the log-matching check on the first entry after a snapshot
needs it). Invariant: `ents[i].index == ents[0].index + i`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prkdb.raft.errors import Compacted, EntriesUnavailable, RaftInvariantError
from prkdb.raft.types import (
    EMPTY_HARD_STATE,
    ENTRY_OVERHEAD,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
)


class Storage(Protocol):
    """What the core may read. Reads of compacted indexes raise `Compacted`."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries in [lo, hi), at least one if any, at most `max_size` bytes beyond it."""
        ...
    def term(self, index: int) -> int: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def snapshot(self) -> Snapshot: ...


def limit_size(entries: list[Entry], max_size: int) -> list[Entry]:
    """Cut `entries` to fit `max_size` bytes, but always keep the first one."""
    if len(entries) <= 1:
        return entries
    # Entry.size() inlined (Entry is final): this runs for every message sent,
    # and usually everything fits, which one plain sum shows.
    total = 0
    for e in entries:
        total += len(e.data)
    if total + len(entries) * ENTRY_OVERHEAD <= max_size:
        return entries
    total = len(entries[0].data) + ENTRY_OVERHEAD
    for i in range(1, len(entries)):
        total += len(entries[i].data) + ENTRY_OVERHEAD
        if total > max_size:
            return entries[:i]
    return entries


class MemoryStorage:
    """A `Storage` in memory; the driver mirrors the WAL into it after each persist."""

    def __init__(self, voters: Sequence[int] = ()) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot = Snapshot(SnapshotMeta(0, 0, ConfState(tuple(voters))))
        self.ents: list[Entry] = [Entry(0, 0)]

    # -- Storage -----------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf_state

    def first_index(self) -> int:
        return self.ents[0].index + 1

    def last_index(self) -> int:
        return self.ents[0].index + len(self.ents) - 1

    def term(self, index: int) -> int:
        offset = self.ents[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (first is {offset + 1})")
        if index - offset >= len(self.ents):
            raise EntriesUnavailable(f"index {index} is past the last index {self.last_index()}")
        return self.ents[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        offset = self.ents[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (first is {offset + 1})")
        if hi > self.last_index() + 1:
            raise EntriesUnavailable(f"entries up to {hi} requested, last is {self.last_index()}")
        return limit_size(self.ents[lo - offset : hi - offset], max_size)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes, by the driver after persisting ----------------------------
    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with `snap` (a follower installing a leader's snapshot)."""
        if snap.meta.index < self._snapshot.meta.index:
            raise RaftInvariantError(
                f"snapshot {snap.meta.index} is older than {self._snapshot.meta.index}"
            )
        self._snapshot = snap
        self.ents = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of `index` (<= last index)."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        if index > self.last_index():
            raise EntriesUnavailable(f"snapshot index {index} > last index {self.last_index()}")
        cs = conf_state if conf_state is not None else self._snapshot.meta.conf_state
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), cs), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries before `index` (it stays as the dummy, for its term)."""
        offset = self.ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise EntriesUnavailable(f"compact {index} > last index {self.last_index()}")
        i = index - offset
        self.ents = [Entry(self.ents[i].term, index), *self.ents[i + 1 :]]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append persisted entries; an entry at index i replaces i and everything after."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all already compacted
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self.ents[0].index
        if offset > len(self.ents):
            raise RaftInvariantError(
                f"missing log entries: last {self.last_index()}, appending {entries[0].index}"
            )
        del self.ents[offset:]
        self.ents.extend(entries)
