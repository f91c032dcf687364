"""`RawNode`: the driver's handle on a core, with the Ready/advance contract.

Theory of operation
-------------------
The driver feeds inputs (`tick`, `step`, `propose`, `read_index`,
`transfer_leadership`), then asks `has_ready()`; if so it takes `ready()`,
acts on it as `prkdb.raft.ready` describes, and calls `advance(ready)`.
Exactly one Ready is outstanding at a time: `ready()` twice without an
`advance` is a caller error. Between them the driver must not feed inputs
(the daemon's partition loop does persist -> send -> apply without yielding
to its inbox), which is what keeps unstable entries handed out once.

`step` is for messages from peers: it validates them (known sender, not a
local-only kind, self-consistent fields) and returns the reason a message was
dropped, or None. It never raises for peer input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prkdb.raft.config import RaftConfig
from prkdb.raft.core import RaftCore
from prkdb.raft.errors import ProposalDropped, RaftError
from prkdb.raft.ready import Ready
from prkdb.raft.storage import Storage
from prkdb.raft.tracker import ProgressState
from prkdb.raft.types import (
    LOCAL_MSGS,
    NONE,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Role,
    SoftState,
)

# Kinds a peer may never send us: local inputs, and requests we do not forward.
_NOT_FROM_PEERS = LOCAL_MSGS | {MsgType.PROP, MsgType.TRANSFER_LEADER}
# Module names for enum members used per message or per entry (an Enum class
# attribute lookup goes through EnumType.__getattr__ on Python 3.11).
_APP = MsgType.APP
_READ_INDEX = MsgType.READ_INDEX
_SNAP = MsgType.SNAP
_NORMAL = EntryKind.NORMAL


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    recently_active: bool


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """A read-only picture of the core, for `prkctl status` and tests."""

    id: int
    term: int
    vote: int
    leader: int
    role: Role
    commit: int
    applied: int
    last_index: int
    first_index: int
    voters: tuple[int, ...]
    progress: dict[int, PeerStatus]
    lead_transferee: int


class RawNode:
    def __init__(self, config: RaftConfig, storage: Storage) -> None:
        self.core = RaftCore(config, storage)
        self._prev_soft = self.core.soft_state()
        self._prev_hard = self.core.hard_state()
        self._number = 0
        self._outstanding: Ready | None = None

    # -- inputs ------------------------------------------------------------
    def tick(self) -> None:
        """One unit of logical time (the driver decides how long; 50 ms by default)."""
        self.core.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled)."""
        self.core.step(Message(MsgType.HUP, from_=self.core.id))

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append `data` as a new entry; returns its (term, index).

        The entry is committed only if an entry with the same (term, index) is
        later applied; anything else at that index means it was lost.

        Raises:
            NotLeaderError: this node is a follower (the leader id is attached).
            ProposalDropped: no leader, transfer in progress, or overload.
        """
        term, first = self.propose_many([data])
        return term, first

    def propose_many(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append several entries in one go; returns (term, index of the first)."""
        if not datas:
            raise ProposalDropped("empty proposal")
        ents = tuple([Entry(0, 0, _NORMAL, bytes(d)) for d in datas])
        before = self.core.log.last_index()
        self.core.step(Message(MsgType.PROP, from_=self.core.id, entries=ents))
        return self.core.term, before + 1

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; a `ReadState(index, context)` follows.

        `context` must be unique among outstanding reads. On a follower the
        request is forwarded to the leader. Raises `ProposalDropped` if no
        leader is known.
        """
        if not context:
            raise ProposalDropped("read_index needs a non-empty context")
        self.core.step(Message(MsgType.READ_INDEX, from_=NONE, context=context))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to `to` once it is caught up (leader only)."""
        self.core.step(Message(MsgType.TRANSFER_LEADER, from_=to))

    # -- what the driver may read (never the core itself) ---------------------
    @property
    def leader_id(self) -> int:
        """The leader this node knows of, 0 if none."""
        return self.core.lead

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def applied_index(self) -> int:
        """The highest index the driver reported applied (via `advance`)."""
        return self.core.log.applied

    @property
    def recovering(self) -> bool:
        """True while this rebuilt replica may not vote or campaign (RaftConfig.recovering)."""
        return self.core.recovering

    def end_recovery(self) -> None:
        """The log now holds everything that was committed when the rebuild began: vote again."""
        if self.core.recovering:
            self.core.recovering = False
            self.core.logger.info("recovery_ended", term=self.core.term,
                                  commit=self.core.log.committed)

    def forget_acks(self, node: int) -> None:
        """`node` is being rebuilt on an empty disk: ignore what its old process acknowledged."""
        self.core.forget_acks(node)

    def report_unreachable(self, node: int) -> None:
        self.core.step(Message(MsgType.UNREACHABLE, from_=node))

    def report_peer_down(self, node: int) -> None:
        """The driver saw `node`'s process die (connection closed or refused).

        A follower whose leader it is campaigns within a few ticks instead of
        a full election timeout (fast failover); see `RaftCore._forget_dead_leader`.
        """
        self.core.step(Message(MsgType.PEER_DOWN, from_=node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.core.step(Message(MsgType.SNAP_STATUS, from_=node, reject=not ok))

    def step(self, m: Message) -> str | None:
        """Feed a message from a peer; returns the reason it was dropped, if it was."""
        reason = self._validate(m)
        if reason is not None:
            self.core.logger.debug("dropped_peer_message", reason=reason, type=int(m.type))
            return reason
        return self.core.step(m)

    def _validate(self, m: Message) -> str | None:
        core = self.core
        if not isinstance(m.type, MsgType):
            return f"unknown message type {m.type!r}"
        if m.type in _NOT_FROM_PEERS:
            return f"{m.type.name} may not come from a peer"
        if m.to != core.id:
            return f"addressed to {m.to}, this is {core.id}"
        if m.from_ == core.id or m.from_ not in core.voters:
            return f"sender {m.from_} is not a peer of {core.id}"
        if min(m.term, m.log_term, m.index, m.commit, m.reject_hint) < 0:
            return "negative field"
        t = m.type
        if t == _READ_INDEX:
            if m.term != 0 or not m.context:
                return "forwarded read must have term 0 and a context"
        elif m.term == 0:
            return f"{m.type.name} without a term"
        if m.entries:
            if t != _APP:
                return f"{m.type.name} may not carry entries"
            prev_index, prev_term = m.index, m.log_term
            for e in m.entries:
                if e.index != prev_index + 1 or e.term < prev_term or e.term > m.term:
                    return "entries are not contiguous or have impossible terms"
                prev_index, prev_term = e.index, e.term
        if t == _SNAP:
            s = m.snapshot
            if s is None or s.meta.index <= 0 or s.meta.term <= 0 or s.meta.term > m.term:
                return "snapshot message with an impossible snapshot"
        elif m.snapshot is not None:
            return f"{m.type.name} may not carry a snapshot"
        return None

    # -- outputs -----------------------------------------------------------
    def has_ready(self) -> bool:
        """Is there anything to persist, send or apply (or a state change to report)?

        Called by the driver several times per loop pass for every touched
        partition, so it compares plain fields with the last reported
        soft/hard state instead of building `SoftState`/`HardState` values
        (same result as `soft_state() != prev or hard_state() != prev`).
        """
        core = self.core
        # Pure: a read round that `ready` would send (core.flush_read_round) is
        # output to come; one still waiting for the round in flight is not.
        if (
            core.read_round_pending
            and core.role == Role.LEADER
            and core.read_only.queue
            and core.read_round_in_flight not in core.read_only.pending
        ):
            return True
        if core.msgs or core.commit_news or core.msgs_after_persist or core.read_states:
            return True
        log = core.log
        unstable = log.unstable
        if unstable.entries or unstable.snapshot is not None:
            return True
        committed = log.committed
        # log.has_next_committed_ents(), inlined: committed > max(applying, first - 1).
        if committed > log.applying and committed >= log.first_index():
            return True
        soft = self._prev_soft
        hard = self._prev_hard
        return (
            core.lead != soft.leader
            or core.role != soft.role
            or core.term != hard.term
            or core.vote != hard.vote
            or committed != hard.commit
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply since the last `advance`."""
        if self._outstanding is not None:
            raise RaftError("call advance() for the previous Ready first")
        core = self.core
        if core.read_round_pending:
            core.flush_read_round()
        log = core.log
        prev_soft = self._prev_soft
        prev_hard = self._prev_hard
        term, vote, commit = core.term, core.vote, log.committed
        soft = None
        if core.lead != prev_soft.leader or core.role != prev_soft.role:
            soft = SoftState(core.lead, core.role)
        hard = None
        if term != prev_hard.term or vote != prev_hard.vote or commit != prev_hard.commit:
            hard = HardState(term, vote, commit)
        unstable = log.unstable
        entries = tuple(unstable.entries)
        snap = unstable.snapshot
        committed = tuple(log.next_committed_ents()) if commit > log.applying else ()
        if committed:
            log.applying = committed[-1].index
        msgs, after = core.take_messages()
        self._number += 1
        rd = Ready(
            self._number,
            soft,
            hard,
            entries,
            snap,
            committed,
            tuple(msgs),
            tuple(after),
            tuple(core.take_read_states()) if core.read_states else (),
            bool(entries)
            or snap is not None
            or term != prev_hard.term
            or vote != prev_hard.vote,
        )
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied `rd`; the core may move on."""
        if rd is not self._outstanding:
            raise RaftError(f"advance() got Ready {rd.number}, not the outstanding one")
        self._outstanding = None
        core = self.core
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            core.log.stable_snap_to(rd.snapshot.meta.index)
            core.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            core.log.stable_to(last.index, last.term)
            core.on_persisted(last.index)
        if rd.committed_entries:
            core.log.applied_to(rd.committed_entries[-1].index)

    # -- introspection -------------------------------------------------------
    def status(self) -> RaftStatus:
        core = self.core
        progress = {}
        if core.role == Role.LEADER:
            progress = {
                v: PeerStatus(pr.match, pr.next, pr.state, core._recently_active(pr))
                for v, pr in sorted(core.progress.items())
            }
        return RaftStatus(
            id=core.id,
            term=core.term,
            vote=core.vote,
            leader=core.lead,
            role=core.role,
            commit=core.log.committed,
            applied=core.log.applied,
            last_index=core.log.last_index(),
            first_index=core.log.first_index(),
            voters=core.voters,
            progress=progress,
            lead_transferee=core.lead_transferee,
        )
