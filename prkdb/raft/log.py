"""`RaftLog`: the log as the core sees it: durable `Storage` + `Unstable` tail.

Theory of operation
-------------------
Positions:  first_index .. [stable in storage] .. unstable.offset .. last_index
            applied <= committed <= last_index (applied trails what the driver
            has confirmed through `RawNode.advance`).

- `maybe_append` is the follower side of AppendEntries (§5.3): it checks the
  log-matching property at (index, log_term), finds the first conflicting
  entry, truncates from there and appends the rest.
- `find_conflict_by_term` produces the rejection hint that lets a leader skip
  a whole term of mismatching entries per round trip (thesis §5.3 "fast log
  backtracking", etcd's `findConflictByTerm`).
- `maybe_commit` only commits an index whose entry has the leader's current
  term (§5.4.2, Figure 8): older entries commit indirectly.
"""

from __future__ import annotations

from prkdb.raft.errors import Compacted, EntriesUnavailable, RaftInvariantError
from prkdb.raft.log_unstable import Unstable
from prkdb.raft.storage import Storage, limit_size
from prkdb.raft.types import Entry, Snapshot


class RaftLog:
    def __init__(self, storage: Storage, max_committed_size: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Highest index known to be stored on a quorum. Invariant: <= last_index.
        self.committed = first - 1
        # Highest index the driver has confirmed applied. Invariant: <= committed.
        self.applied = first - 1
        # Highest index handed out for applying (in a Ready not yet advanced).
        self.applying = first - 1
        self.max_committed_size = max_committed_size

    # -- positions ---------------------------------------------------------
    # These three run hundreds of thousands of times per second: they read the
    # unstable layer's fields directly instead of going through its maybe_*
    # helpers (same answers; tests/raft/test_fast_paths.py checks them).
    def first_index(self) -> int:
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry `i`; 0 if `i` is out of range (compacted or beyond the end)."""
        u = self.unstable
        snap = u.snapshot
        if snap is not None:
            if i < snap.meta.index:
                return 0
        elif i < self.storage.first_index() - 1:
            return 0
        off = u.offset
        if i >= off:
            # An unstable entry, past the last one, past a pending snapshot
            # (offset == its index + 1), or without either layer in storage.
            k = i - off
            ents = u.entries
            if k < len(ents):
                return ents[k].term
            if ents or snap is not None or i > self.storage.last_index():
                return 0
        elif snap is not None:
            if i == snap.meta.index:
                return snap.meta.term
            if not u.entries:
                return 0  # past the snapshot, which is the end of the log
        elif not u.entries and i > self.storage.last_index():
            return 0
        try:
            return self.storage.term(i)
        except (Compacted, EntriesUnavailable):
            return 0

    def term_or_raise(self, i: int) -> int:
        """Like `term`, but raises `Compacted` for indexes below the snapshot."""
        dummy = self.first_index() - 1
        if i < dummy:
            raise Compacted(f"index {i} is compacted")
        return self.term(i)

    def match_term(self, i: int, t: int) -> bool:
        return self.term(i) == t and (t != 0 or i == 0 or i == self.first_index() - 1)

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """§5.4.1: is a candidate's log at least as up to date as ours?"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- follower side of AppendEntries -----------------------------------
    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """Append `ents` after (index, log_term) if it matches; return the last new index."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci != 0:
            if ci <= self.committed:
                raise RaftInvariantError(
                    f"entry {ci} conflicts with committed entry (committed={self.committed})"
                )
            self.append(list(ents[ci - index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """First index whose term differs from ours, or that we lack; 0 if none."""
        last = self.last_index()
        for e in ents:
            # Past our last index nothing matches (term() is 0 there and the
            # index is neither 0 nor the dummy), so skip the term lookup.
            if e.index > last or not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term.

        Entries between that i and index cannot match the leader's log (they
        have a larger term than the leader has at `index`), so the leader may
        skip straight past them.
        """
        first = self.first_index()
        while index >= first - 1:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        return index, 0

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftInvariantError(
                f"append after {after} is below committed {self.committed}"
            )
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- commit / apply ----------------------------------------------------
    def commit_to(self, to_commit: int) -> None:
        if to_commit > self.committed:
            if to_commit > self.last_index():
                raise RaftInvariantError(
                    f"commit {to_commit} is past the last index {self.last_index()}"
                )
            self.committed = to_commit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit `max_index` if a quorum has it and it is from `term` (the leader's)."""
        if max_index > self.committed and self.term(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise RaftInvariantError(
                f"applied {i} out of range [applied {self.applied}, committed {self.committed}]"
            )
        self.applied = i
        self.applying = max(self.applying, i)

    def has_next_committed_ents(self) -> bool:
        lo = max(self.applying, self.first_index() - 1) + 1
        return self.committed >= lo

    def next_committed_ents(self) -> list[Entry]:
        lo = max(self.applying, self.first_index() - 1) + 1
        hi = self.committed + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, self.max_committed_size)

    # -- stability ---------------------------------------------------------
    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.meta.index
        self.unstable.restore(snap)

    # -- reading -----------------------------------------------------------
    def entries_from(self, i: int, max_size: int) -> list[Entry]:
        """Entries from `i` to the end, within `max_size` (raises Compacted)."""
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries in [lo, hi) up to max_size bytes (at least one); raises Compacted."""
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted (first is {self.first_index()})")
        if hi > self.last_index() + 1:
            raise RaftInvariantError(f"slice [{lo},{hi}) past last {self.last_index()}")
        if lo == hi:
            return []
        u = self.unstable
        off = u.offset
        if lo >= off:
            # All unstable (a leader sending what it just appended): one list slice.
            if hi > off + len(u.entries):
                u.slice(lo, hi)  # raises the invariant error
            return limit_size(u.entries[lo - off : hi - off], max_size)
        ents: list[Entry] = []
        if lo < off:
            ents = self.storage.entries(lo, min(hi, off), max_size)
            if len(ents) < min(hi, off) - lo:
                return ents  # size limit hit inside storage
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_size)
