"""`Unstable`: entries and a snapshot not yet handed to the driver for persisting.

Invariant: `entries[i].index == offset + i`. If `snapshot` is set, it precedes
every entry: `offset == snapshot.meta.index + 1` at the time it was installed.
"""

from __future__ import annotations

from prkdb.raft.errors import RaftInvariantError
from prkdb.raft.types import Entry, Snapshot


class Unstable:
    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == i:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` (of `term`) are durable now; forget them."""
        k = index - self.offset
        if k < 0 or k >= len(self.entries) or self.entries[k].term != term:
            return  # superseded since it was handed out
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.meta.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replace everything unstable; storage will truncate from `first` on.
            self.offset = first
            self.entries = list(ents)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        if lo < self.offset or hi > self.offset + len(self.entries):
            raise RaftInvariantError(
                f"unstable slice [{lo},{hi}) out of [{self.offset},"
                f"{self.offset + len(self.entries)})"
            )
        return self.entries[lo - self.offset : hi - self.offset]
