"""Value types of the Raft core: entries, hard state, snapshots and messages.

Theory of operation
-------------------
Everything the core receives or emits is an immutable value defined here, so
a `Ready` can be handed to another thread (the WAL flush) without copies and
a test can compare messages with `==`. The `IntEnum` values are what the wire
codec puts on the wire: never renumber them, only append.

Indexes and terms are plain ints. Index 0 / term 0 mean "nothing": the first
real entry has index 1 and every elected term is >= 1. Node ids are ints > 0;
`NONE` (0) stands for "no node" (no vote, no known leader).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import final

NONE = 0
"""The node id meaning 'nobody' (no vote cast, no leader known)."""

# Fast constructors. The values built per message and per entry (`Entry`,
# `Message`, and `Ready` in ready.py) have a hand-written `__init__`, which
# `dataclass` keeps. It stores each field through its slot descriptor (bound
# once, below the class) instead of the generated
# `object.__setattr__(self, "name", value)`, which looks the slot up by name
# each time: about 40% cheaper. Same parameters, defaults and stored values;
# tests/raft/test_fast_paths.py checks each against the generated `__init__`.
# The descriptors are read from the class `__dict__` (the same objects as
# `Entry.term`, which a type checker reads as an instance-only field) and each
# setter is annotated with its field's type, so the constructors type-check.


class EntryKind(enum.IntEnum):
    """What an entry's data means to the state machine."""

    NORMAL = 0  # opaque client command (an empty one is the leader's no-op)
    CONF_CHANGE = 1  # reserved for membership changes (later issue)


class MsgType(enum.IntEnum):
    """Message kinds. Local kinds never cross the wire (see `is_local_msg`)."""

    HUP = 0  # local: start an election (or pre-election)
    BEAT = 1  # local: leader should broadcast heartbeats
    PROP = 2  # local proposal, or forwarded (dropped, we do not forward)
    APP = 3  # AppendEntries
    APP_RESP = 4
    VOTE = 5  # RequestVote
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    SNAP = 9  # InstallSnapshot
    HEARTBEAT = 10
    HEARTBEAT_RESP = 11
    TRANSFER_LEADER = 12  # local or forwarded to the leader
    TIMEOUT_NOW = 13  # leader -> transfer target: campaign now
    READ_INDEX = 14  # local, or follower -> leader
    READ_INDEX_RESP = 15  # leader -> follower
    CHECK_QUORUM = 16  # local: leader checks it heard from a quorum
    SNAP_STATUS = 17  # local: driver reports a snapshot send result
    UNREACHABLE = 18  # local: driver reports a peer unreachable
    PEER_DOWN = 19  # local: driver saw a peer's process die (its connection closed)


LOCAL_MSGS = frozenset(
    {
        MsgType.HUP,
        MsgType.BEAT,
        MsgType.CHECK_QUORUM,
        MsgType.SNAP_STATUS,
        MsgType.UNREACHABLE,
        MsgType.PEER_DOWN,
    }
)
RESPONSE_MSGS = frozenset(
    {
        MsgType.APP_RESP,
        MsgType.VOTE_RESP,
        MsgType.PRE_VOTE_RESP,
        MsgType.HEARTBEAT_RESP,
        MsgType.READ_INDEX_RESP,
    }
)


ENTRY_OVERHEAD = 16
"""Bytes `Entry.size` adds to the data for the term, index and kind."""


@final
@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. Invariant: index >= 1 and term >= 1 for real entries."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def __init__(
        self, term: int, index: int, kind: EntryKind = EntryKind.NORMAL, data: bytes = b""
    ) -> None:
        _entry_term(self, term)
        _entry_index(self, index)
        _entry_kind(self, kind)
        _entry_data(self, data)

    def size(self) -> int:
        """Approximate encoded size in bytes, used for flow control."""
        return len(self.data) + ENTRY_OVERHEAD


_entry_term: Callable[[Entry, int], None] = Entry.__dict__["term"].__set__
_entry_index: Callable[[Entry, int], None] = Entry.__dict__["index"].__set__
_entry_kind: Callable[[Entry, EntryKind], None] = Entry.__dict__["kind"].__set__
_entry_data: Callable[[Entry, bytes], None] = Entry.__dict__["data"].__set__


@final
@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message promising it leaves (§5.2, Fig. 2).

    term: the current term; vote: who we voted for in it (NONE if nobody);
    commit: highest index known committed (persisted so a restart can re-apply
    up to it without waiting for the leader).
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0


EMPTY_HARD_STATE = HardState()


@final
@dataclass(frozen=True, slots=True)
class ConfState:
    """The voter set. It is data (not a constant) so membership can change later.

    Invariant: voters is sorted and has no duplicates.
    """

    voters: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.voters))) != self.voters:
            object.__setattr__(self, "voters", tuple(sorted(set(self.voters))))


@final
@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The log position and voter set a snapshot covers (everything <= index)."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine contents as of `meta.index`; `data` is opaque to Raft."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.meta.index == 0


EMPTY_SNAPSHOT = Snapshot()


@final
@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message between two cores (or a local input, see `LOCAL_MSGS`).

    Field meanings follow etcd's raftpb.Message:
    - index/log_term: for APP the position preceding `entries`; for votes the
      candidate's last log position; for APP_RESP the index acknowledged or
      rejected; for a rejection `reject_hint` is the follower's best guess of
      where the logs may match and `log_term` the term it has at that index
      (the conflict hint that makes repair O(terms), not O(entries)).
    - commit: the sender's commit index (clamped for heartbeats).
    - context: opaque bytes (ReadIndex request ids; b"transfer" marks a
      campaign caused by leadership transfer, which bypasses the lease check).
    """

    type: MsgType
    to: int = NONE
    from_: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: Snapshot | None = None

    def __init__(
        self,
        type: MsgType,
        to: int = NONE,
        from_: int = NONE,
        term: int = 0,
        log_term: int = 0,
        index: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        context: bytes = b"",
        snapshot: Snapshot | None = None,
    ) -> None:
        _msg_type(self, type)
        _msg_to(self, to)
        _msg_from(self, from_)
        _msg_term(self, term)
        _msg_log_term(self, log_term)
        _msg_index(self, index)
        _msg_entries(self, entries)
        _msg_commit(self, commit)
        _msg_reject(self, reject)
        _msg_reject_hint(self, reject_hint)
        _msg_context(self, context)
        _msg_snapshot(self, snapshot)


_msg_type: Callable[[Message, MsgType], None] = Message.__dict__["type"].__set__
_msg_to: Callable[[Message, int], None] = Message.__dict__["to"].__set__
_msg_from: Callable[[Message, int], None] = Message.__dict__["from_"].__set__
_msg_term: Callable[[Message, int], None] = Message.__dict__["term"].__set__
_msg_log_term: Callable[[Message, int], None] = Message.__dict__["log_term"].__set__
_msg_index: Callable[[Message, int], None] = Message.__dict__["index"].__set__
_msg_entries: Callable[[Message, tuple[Entry, ...]], None] = Message.__dict__["entries"].__set__
_msg_commit: Callable[[Message, int], None] = Message.__dict__["commit"].__set__
_msg_reject: Callable[[Message, bool], None] = Message.__dict__["reject"].__set__
_msg_reject_hint: Callable[[Message, int], None] = Message.__dict__["reject_hint"].__set__
_msg_context: Callable[[Message, bytes], None] = Message.__dict__["context"].__set__
_msg_snapshot: Callable[[Message, Snapshot | None], None] = Message.__dict__["snapshot"].__set__


CAMPAIGN_TRANSFER = b"transfer"
"""Vote context marking an election started by TimeoutNow (skips the lease check)."""


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@final
@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver wants to know about when it changes."""

    leader: int
    role: Role


@final
@dataclass(frozen=True, slots=True)
class ReadState:
    """A read request that may be served once the state machine applied `index`."""

    index: int
    context: bytes
