"""`Ready`: the core's whole output, handed to the driver in one value.

The driver must act on a Ready in this order (etcd's RawNode contract; the
leader-side concurrency is Raft thesis §10.2.1):

1. `messages` may be sent at once, even before persisting (a leader sends its
   new entries to followers while its own fsync runs).
2. Persist `snapshot` (if any), then `entries` (an entry at index i replaces
   the stored entries from i on), then `hard_state` — all durable (fsync when
   `must_sync`) before step 3.
3. Only then send `messages_after_persist`: vote grants and append acks promise
   durable state and must never leave before it is.
4. Install `snapshot` into the state machine, then apply `committed_entries`
   in order; serve `read_states` once applied >= their index.
5. Call `RawNode.advance(ready)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from prkdb.raft.types import Entry, HardState, Message, ReadState, Snapshot, SoftState


@final
@dataclass(frozen=True, slots=True)
class Ready:
    # Increasing per RawNode; `advance` must get the Ready most recently returned.
    number: int
    # New leader/role if it changed since the previous Ready; for logs and routing.
    soft_state: SoftState | None
    # Term/vote/commit to persist if changed since the previous Ready.
    hard_state: HardState | None
    # Entries to append durably; the first one's index is the truncation point.
    entries: tuple[Entry, ...]
    # A snapshot received from the leader, to persist and install.
    snapshot: Snapshot | None
    # Entries committed by a quorum, to apply in order (after `snapshot`).
    committed_entries: tuple[Entry, ...]
    # Messages that may leave now.
    messages: tuple[Message, ...]
    # Messages that may leave only after entries/hard state are durable.
    messages_after_persist: tuple[Message, ...]
    # Reads confirmed by ReadIndex: serve each once applied >= its index.
    read_states: tuple[ReadState, ...]
    # True if entries, term or vote changed: an fsync is required.
    must_sync: bool

    # Hand-written for speed (one Ready per partition per loop pass); see the
    # note on fast constructors in prkdb/raft/types.py.
    def __init__(
        self,
        number: int,
        soft_state: SoftState | None,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        snapshot: Snapshot | None,
        committed_entries: tuple[Entry, ...],
        messages: tuple[Message, ...],
        messages_after_persist: tuple[Message, ...],
        read_states: tuple[ReadState, ...],
        must_sync: bool,
    ) -> None:
        _number(self, number)
        _soft_state(self, soft_state)
        _hard_state(self, hard_state)
        _entries(self, entries)
        _snapshot(self, snapshot)
        _committed_entries(self, committed_entries)
        _messages(self, messages)
        _messages_after_persist(self, messages_after_persist)
        _read_states(self, read_states)
        _must_sync(self, must_sync)


_number: Callable[[Ready, int], None] = Ready.__dict__["number"].__set__
_soft_state: Callable[[Ready, SoftState | None], None] = Ready.__dict__["soft_state"].__set__
_hard_state: Callable[[Ready, HardState | None], None] = Ready.__dict__["hard_state"].__set__
_entries: Callable[[Ready, tuple[Entry, ...]], None] = Ready.__dict__["entries"].__set__
_snapshot: Callable[[Ready, Snapshot | None], None] = Ready.__dict__["snapshot"].__set__
_committed_entries: Callable[[Ready, tuple[Entry, ...]], None] = (
    Ready.__dict__["committed_entries"].__set__
)
_messages: Callable[[Ready, tuple[Message, ...]], None] = Ready.__dict__["messages"].__set__
_messages_after_persist: Callable[[Ready, tuple[Message, ...]], None] = (
    Ready.__dict__["messages_after_persist"].__set__
)
_read_states: Callable[[Ready, tuple[ReadState, ...]], None] = Ready.__dict__["read_states"].__set__
_must_sync: Callable[[Ready, bool], None] = Ready.__dict__["must_sync"].__set__
