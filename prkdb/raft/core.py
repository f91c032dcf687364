"""`RaftCore`: the Raft consensus state machine of one group (one partition).

Theory of operation
-------------------
The core is a pure function of its inputs: `step(message)` and `tick()`.
It owns the role, term, vote, log view and the leader's progress tracker, and
it emits messages into `msgs` (may leave now) and `msgs_after_persist` (vote
grants and append acks, which promise durable state). `RawNode` wraps it into
the Ready/advance contract. Nothing here knows about time, sockets or disks.

Every state change goes through `step`: ticks inject local messages (HUP,
BEAT, CHECK_QUORUM). `step` first applies the term rules shared by all roles
(§5.1 "if one server's current term is smaller than the other's, then it
updates its current term"; stale-term messages are answered or dropped), then
dispatches on `self.role`. Only the `_become_*` methods assign `self.role`.

Safety-relevant extensions beyond the paper:
- Pre-Vote (thesis §9.6): a would-be candidate first asks whether it could win
  at term+1 without bumping its term, so a node isolated for a while cannot
  disrupt a healthy leader when it comes back.
- CheckQuorum + lease on votes (thesis §6.2, §9.6): a leader that has not heard
  from a majority within an election timeout steps down; a node that heard
  from a live leader within the election timeout ignores (pre-)votes, except
  for an election forced by leadership transfer.
- The leader counts its own entries toward commit only after the driver
  reports them durable (`on_persisted`), so it may send entries to followers
  while its own fsync runs (thesis §10.2.1).
- A leader commits only entries of its current term by counting (§5.4.2,
  Figure 8); it appends an empty no-op on election so that happens promptly.
- ReadIndex (thesis §6.4): reads are confirmed by one heartbeat round per
  batch, and only once the leader has committed an entry of its term.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TypedDict, Unpack

from prkdb.raft.config import RaftConfig
from prkdb.raft.describe import describe_message
from prkdb.raft.errors import (
    Compacted,
    ConfigError,
    EntriesUnavailable,
    NotLeaderError,
    ProposalDropped,
    RaftInvariantError,
)
from prkdb.raft.log import RaftLog
from prkdb.raft.quorum import VoteResult, committed_index, quorum_size, vote_result
from prkdb.raft.read_only import ReadOnly
from prkdb.raft.storage import Storage
from prkdb.raft.tracker import Inflights, Progress, ProgressState
from prkdb.raft.types import (
    CAMPAIGN_TRANSFER,
    ENTRY_OVERHEAD,
    LOCAL_MSGS,
    NONE,
    Entry,
    HardState,
    Message,
    MsgType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

# Context of an empty AppendEntries that only carries the commit index; the
# follower does not acknowledge it when it matches (fewer messages per batch).
COMMIT_ONLY = b"commit"


class _MsgFields(TypedDict, total=False):
    """The `Message` fields `RaftCore._msg` passes through (all but type, to, from_)."""

    term: int
    log_term: int
    index: int
    entries: tuple[Entry, ...]
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    snapshot: Snapshot | None


# Messages that promise durable state: they may leave only after the persist.
_AFTER_PERSIST = frozenset({MsgType.APP_RESP, MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP})

# Enum members as module names for the per-message paths: on Python 3.11 an
# Enum class attribute (`MsgType.APP`) goes through EnumType.__getattr__ and
# costs about 5x a global name, and a message meets a dozen such comparisons.
_APP = MsgType.APP
_APP_RESP = MsgType.APP_RESP
_HUP = MsgType.HUP
_VOTE_REQUESTS = frozenset({MsgType.VOTE, MsgType.PRE_VOTE})
_LEADER = Role.LEADER
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT
# Inputs the leader serves itself, before looking up a peer's progress.
_LEADER_INPUTS = frozenset(
    {MsgType.BEAT, MsgType.CHECK_QUORUM, MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER}
)


class CampaignKind(enum.Enum):
    PRE_ELECTION = "pre_election"
    ELECTION = "election"
    TRANSFER = "transfer"


class RaftCore:
    def __init__(self, config: RaftConfig, storage: Storage) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.logger = config.logger  # events only; `self.log` below is the Raft log
        self.rng = config.rng
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        hs, cs = storage.initial_state()
        voters = cs.voters or tuple(sorted(set(config.peers)))
        if not voters:
            raise ConfigError("no voters: storage has no voter set and config.peers is empty")
        # The voter set (data, not a constant: membership changes will edit it).
        self.voters: tuple[int, ...] = tuple(sorted(voters))
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        # A rebuilt replica: no votes, no campaigns (RaftConfig.recovering).
        self.recovering = config.recovering
        self.role = Role.FOLLOWER
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        # The commit index advanced since followers were last told (see
        # flush_commit_news): the news leaves once per batch of messages.
        self.commit_news = False
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        # A read arrived since the last heartbeat round (see flush_read_round).
        self.read_round_pending = False
        # Context of the read round sent and not yet confirmed (b"" if none).
        self.read_round_in_flight = b""
        # Reads that reached a new leader before it committed an entry of its term.
        self.pending_read_index: list[Message] = []
        # Ticks since the last reset; meaning depends on role (election or lease timer).
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        # Monotonic count of ticks; the leader stamps peers' last_heard_tick with it.
        self.ticks = 0
        # Target of a leadership transfer in progress, and ticks since it began.
        self.lead_transferee = NONE
        self.transfer_elapsed = 0
        # (index, bytes) of entries this leader appended that are not committed yet.
        self.uncommitted: deque[tuple[int, int]] = deque()
        self.uncommitted_size = 0
        if not hs.is_empty():
            self._load_hard_state(hs)
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self._become_follower(self.term, NONE)
        self.logger.info(
            "raft_started",
            term=self.term,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            voters=list(self.voters),
            recovering=self.recovering,
        )

    def _load_hard_state(self, hs: HardState) -> None:
        if hs.commit < self.log.committed or hs.commit > self.log.last_index():
            raise RaftInvariantError(
                f"hard state commit {hs.commit} out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    # -- state snapshots for RawNode --------------------------------------
    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        return self.id in self.voters and not self.recovering

    # -- sending -------------------------------------------------------------
    def _send(self, m: Message) -> None:
        if m.type in _AFTER_PERSIST:
            after = self.msgs_after_persist
            if m.type == _APP_RESP and not m.reject and after:
                prev = after[-1]
                if (prev.type == _APP_RESP and not prev.reject and prev.to == m.to
                        and prev.term == m.term):
                    # Acks are cumulative ("my log matches yours up to index"):
                    # of two in a row, the higher says everything both said.
                    if m.index >= prev.index:
                        after[-1] = m
                    return
            after.append(m)
        else:
            self.msgs.append(m)

    def _msg(self, type_: MsgType, to: int, **kw: Unpack[_MsgFields]) -> Message:
        kw.setdefault("term", self.term)
        return Message(type_, to=to, from_=self.id, **kw)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send `to` the entries it lacks (or a snapshot); False if nothing was sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        nxt = pr.next
        last = log.last_index()
        if nxt > last and not send_if_empty:
            # Nothing to send (and prev_index >= last >= first - 1: no snapshot due).
            return False
        prev_index = nxt - 1
        # log.term_or_raise(prev_index) and log.entries_from(nxt), inlined.
        try:
            if prev_index < log.first_index() - 1:
                raise Compacted(f"index {prev_index} is compacted")
            prev_term = log.term(prev_index)
            ents = log.slice(nxt, last + 1, self.cfg.max_size_per_msg) if nxt <= last else []
        except Compacted:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        context = b""
        if pr.state == _REPLICATE:
            if ents:
                size = 0
                for e in ents:
                    size += len(e.data) + ENTRY_OVERHEAD  # Entry.size()
                last_sent = ents[-1].index
                pr.update_optimistic(last_sent)
                pr.inflights.add(last_sent, size)
            else:
                # Only news of the commit index: a follower in sync need not
                # answer it (its acks of the entries themselves are what
                # counts); a mismatch is still answered with a rejection.
                context = COMMIT_ONLY
        elif pr.state == _PROBE:
            pr.msg_app_flow_paused = True
        # Message fields in order: type, to, from_, term, log_term, index,
        # entries, commit, reject, reject_hint, context, snapshot.
        self._send(
            Message(
                _APP, to, self.id, self.term, prev_term, prev_index, tuple(ents),
                log.committed, False, 0, context, None,
            )
        )
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not self._recently_active(pr):
            return False  # no point shipping a snapshot into the void
        try:
            snap = self.log.snapshot()
        except EntriesUnavailable:
            return False  # being created; try again later
        if snap.is_empty():
            raise RaftInvariantError(f"need a snapshot for {to} but there is none")
        pr.become_snapshot(snap.meta.index)
        pr.snapshot_sent_tick = self.ticks
        self.logger.info("sent_snapshot", to=to, index=snap.meta.index, term=snap.meta.term)
        self._send(self._msg(MsgType.SNAP, to, snapshot=snap))
        return True

    def _send_heartbeat(self, to: int, context: bytes) -> None:
        # Never tell a follower a commit index beyond what it is known to hold.
        commit = min(self.progress[to].match, self.log.committed)
        self._send(self._msg(MsgType.HEARTBEAT, to, commit=commit, context=context))

    def _peers(self) -> list[int]:
        return [p for p in sorted(self.progress) if p != self.id]

    def _broadcast_append(self) -> None:
        for p in self._peers():
            self._send_append(p)

    def _broadcast_heartbeat(self, context: bytes | None = None) -> None:
        ctx = self.read_only.last_pending_context() if context is None else context
        for p in self._peers():
            self._send_heartbeat(p, ctx)

    # -- role changes --------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self._abort_leader_transfer()
        self.votes = {}
        last = self.log.last_index()
        # Entries below the unstable offset are durable here; count only those.
        stable_last = min(last, self.log.unstable.offset - 1)
        self.progress = {}
        for v in self.voters:
            window = Inflights(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
            pr = Progress(last + 1, window)
            pr.last_heard_tick = self.ticks
            if v == self.id:
                pr.match = stable_last
            self.progress[v] = pr
        self.read_only.reset()
        self.pending_read_index = []
        self.uncommitted.clear()
        self.uncommitted_size = 0

    def _reset_randomized_election_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_election_timeout = self.rng.randint(e, 2 * e - 1)

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self.logger.info("became_follower", term=term, leader=lead)

    def _become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftInvariantError("leader cannot become pre-candidate")
        # Pre-Vote: neither term nor vote change, so a failed pre-election
        # leaves no trace that could disrupt the cluster.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._reset_randomized_election_timeout()
        self.logger.info("became_pre_candidate", term=self.term)

    def _become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftInvariantError("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self.logger.info("became_candidate", term=self.term)

    def _become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise RaftInvariantError("follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.progress[self.id].become_replicate()
        self.progress[self.id].match = min(self.log.last_index(), self.log.unstable.offset - 1)
        # The no-op lets this term commit, and with it every older entry (§5.4.2, §6.4).
        self._append_entries([Entry(self.term, 0)], count_size=False)
        self.logger.info("became_leader", term=self.term, last_index=self.log.last_index())

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE
        self.transfer_elapsed = 0

    # -- elections -----------------------------------------------------------
    def _hup(self, kind: CampaignKind) -> None:
        if self.role == Role.LEADER:
            self.logger.debug("ignored_hup", reason="already leader", term=self.term)
            return
        if not self.promotable():
            self.logger.debug("ignored_hup", reason="not a voter", term=self.term)
            return
        self._campaign(kind)

    def _campaign(self, kind: CampaignKind) -> None:
        if kind == CampaignKind.PRE_ELECTION:
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True) == VoteResult.WON:
            # A single-voter group wins at once.
            if kind == CampaignKind.PRE_ELECTION:
                self._campaign(CampaignKind.ELECTION)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if kind == CampaignKind.TRANSFER else b""
        last = self.log.last_index()
        for p in self._peers():
            self._send(
                self._msg(
                    vote_type, p, term=term, index=last, log_term=self.log.last_term(), context=ctx
                )
            )

    def _poll(self, node: int, granted: bool) -> VoteResult:
        self.votes.setdefault(node, granted)
        return vote_result(self.voters, self.votes)

    def _handle_vote_request(self, m: Message) -> None:
        # We can vote for m.from_ if we already did in this term, or have not
        # voted and know no leader, or (pre-vote) it asks about a future term.
        can_vote = (
            self.vote == m.from_
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MsgType.PRE_VOTE and m.term > self.term)
        )
        resp = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        if self.recovering:
            # Our log may lack entries we once acknowledged, so "at least as
            # up to date as ours" proves nothing: granting could elect a
            # leader without a committed entry.
            self._send(self._msg(resp, m.from_, reject=True))
            self.logger.info("rejected_vote", kind=m.type.name, to=m.from_, term=m.term,
                           reason="recovering")
            return
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Answer with the message's term: a pre-candidate compares it to its own.
            self._send(self._msg(resp, m.from_, term=m.term))
            if m.type == MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.from_
            self.logger.info("granted_vote", kind=m.type.name, to=m.from_, term=m.term)
        else:
            self._send(self._msg(resp, m.from_, reject=True))
            self.logger.debug("rejected_vote", kind=m.type.name, to=m.from_, term=m.term)

    # -- ticks ---------------------------------------------------------------
    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP, from_=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            # A live leader stays inside its own lease: step() ignores (pre-)votes
            # while election_elapsed < election_ticks. Without this wrap a leader
            # older than one election timeout granted a rejoining node's pre-vote
            # and was deposed by it (etcd's tickHeartbeat resets it the same way).
            self.election_elapsed = 0
        if self.lead_transferee != NONE:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.cfg.election_ticks:
                self.logger.info("aborted_leader_transfer", to=self.lead_transferee)
                self._abort_leader_transfer()
        if self.cfg.check_quorum:
            self.step(Message(MsgType.CHECK_QUORUM, from_=self.id))
            if self.role != Role.LEADER:
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MsgType.BEAT, from_=self.id))

    def _recently_active(self, pr: Progress) -> bool:
        return self.ticks - pr.last_heard_tick < self.cfg.election_ticks

    def quorum_active(self) -> bool:
        """Has a majority (counting us) been heard from within an election timeout?"""
        active = sum(
            1
            for v in self.voters
            if v == self.id or (v in self.progress and self._recently_active(self.progress[v]))
        )
        return active >= quorum_size(len(self.voters))

    # -- step ----------------------------------------------------------------
    def step(self, m: Message) -> str | None:
        """Feed one message; returns why it was dropped, or None if it was used.

        Raises `ProposalDropped` (or `NotLeaderError`) only for local requests
        (PROP, READ_INDEX, TRANSFER_LEADER) that cannot be served here.
        """
        if m.term == 0:
            pass  # local message, or a forwarded read (carries no term)
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_ticks
                )
                if in_lease and not force:
                    # A leader is alive as far as we know: do not help depose it.
                    return self._dropped(m, "vote request inside leader lease")
            if m.type == MsgType.PRE_VOTE:
                pass  # never change term for a pre-vote
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-vote carries the future term; we are not there yet
            else:
                lead = m.from_ if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP) else NONE
                self.logger.info(
                    "saw_higher_term", term=self.term, msg_term=m.term, from_node=m.from_
                )
                self._become_follower(m.term, lead)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (
                MsgType.HEARTBEAT,
                MsgType.APP,
            ):
                # A stale leader (e.g. after a partition healed) learns our term
                # and steps down; with pre-vote it would never see a vote from us.
                self._send(self._msg(MsgType.APP_RESP, m.from_))
            elif m.type == MsgType.PRE_VOTE:
                self._send(self._msg(MsgType.PRE_VOTE_RESP, m.from_, reject=True))
            return self._dropped(m, "stale term")

        t = m.type
        if t == _HUP:
            kind = CampaignKind.PRE_ELECTION if self.cfg.pre_vote else CampaignKind.ELECTION
            self._hup(kind)
            return None
        if t in _VOTE_REQUESTS:
            self._handle_vote_request(m)
            return None
        match self.role:
            case Role.LEADER:
                return self._step_leader(m)
            case Role.CANDIDATE | Role.PRE_CANDIDATE:
                return self._step_candidate(m)
            case _:
                return self._step_follower(m)

    def _dropped(self, m: Message, reason: str) -> str:
        self.logger.debug("dropped_message", reason=reason, msg=describe_message(m), term=self.term)
        return reason

    # -- leader ----------------------------------------------------------------
    def _step_leader(self, m: Message) -> str | None:
        if m.type in _LEADER_INPUTS:
            self._step_leader_input(m)
            return None
        pr = self.progress.get(m.from_)
        if pr is None:
            return self._dropped(m, "unknown peer")
        if m.type not in LOCAL_MSGS:
            # Only a message from the peer itself proves it alive (CheckQuorum);
            # local reports about it (unreachable, down, snapshot status) do not.
            pr.last_heard_tick = self.ticks
        match m.type:
            case MsgType.APP_RESP:
                self._handle_append_response(m, pr)
            case MsgType.HEARTBEAT_RESP:
                self._handle_heartbeat_response(m, pr)
            case MsgType.SNAP_STATUS:
                if pr.state == ProgressState.SNAPSHOT:
                    if m.reject:
                        pr.pending_snapshot = 0
                    pr.become_probe()
                    # Wait for a heartbeat response before probing again.
                    pr.msg_app_flow_paused = True
            case MsgType.UNREACHABLE | MsgType.PEER_DOWN:
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
            case _:
                return self._dropped(m, "unexpected message for a leader")
        return None

    def _step_leader_input(self, m: Message) -> None:
        """The leader's own inputs (`_LEADER_INPUTS`): ticks, proposals, reads, transfers."""
        match m.type:
            case MsgType.BEAT:
                self._broadcast_heartbeat()
            case MsgType.CHECK_QUORUM:
                if not self.quorum_active():
                    self.logger.warning("stepped_down", reason="quorum not active", term=self.term)
                    self._become_follower(self.term, NONE)
            case MsgType.PROP:
                self._propose(m)
            case MsgType.READ_INDEX:
                self._leader_read_index(m)
            case MsgType.TRANSFER_LEADER:
                self._transfer_leader(m.from_)

    def _propose(self, m: Message) -> None:
        if not m.entries:
            raise ProposalDropped("empty proposal")
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                f"leadership transfer to {self.lead_transferee} in progress"
            )
        if self.id not in self.progress:
            raise ProposalDropped("this node is no longer a voter")
        self._append_entries(list(m.entries), count_size=True)
        self._broadcast_append()

    def _append_entries(self, ents: list[Entry], count_size: bool) -> None:
        size = sum(len(e.data) for e in ents)
        limit = self.cfg.max_uncommitted_size
        if count_size and limit and self.uncommitted_size > 0 and (
            self.uncommitted_size + size > limit
        ):
            raise ProposalDropped(
                f"too much uncommitted data ({self.uncommitted_size} bytes, limit {limit})"
            )
        last = self.log.last_index()
        stamped = [Entry(self.term, last + 1 + i, e.kind, e.data) for i, e in enumerate(ents)]
        self.log.append(stamped)
        if count_size and size:
            self.uncommitted.append((stamped[-1].index, size))
            self.uncommitted_size += size
        # Our own progress advances only in on_persisted(): we count ourselves
        # toward a quorum once the entries are durable here.

    def on_persisted(self, index: int) -> None:
        """The driver made entries up to `index` durable; a leader counts itself now."""
        if self.role != _LEADER:
            return
        pr = self.progress.get(self.id)
        if pr is not None and pr.maybe_update(index) and self._maybe_commit():
            self.commit_news = True

    def _maybe_commit(self) -> bool:
        match = {v: pr.match for v, pr in self.progress.items()}
        if not self.log.maybe_commit(committed_index(self.voters, match), self.term):
            return False
        while self.uncommitted and self.uncommitted[0][0] <= self.log.committed:
            self.uncommitted_size -= self.uncommitted.popleft()[1]
        if self.pending_read_index and self._committed_entry_in_current_term():
            pending, self.pending_read_index = self.pending_read_index, []
            for req in pending:
                self._leader_read_index(req)
        return True

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            # Conflict hint: the follower's (index, term) guess lets us skip a
            # whole term of mismatching entries per round trip.
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                self.logger.debug(
                    "append_rejected", node=m.from_, index=m.index, hint=m.reject_hint
                )
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.from_)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        state = pr.state
        if state == _REPLICATE:
            pr.inflights.free_le(m.index)
        elif state == _PROBE:
            pr.become_replicate()
        elif state == _SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        if self._maybe_commit():
            self.commit_news = True
        elif old_paused:
            self._send_append(m.from_)
        while self._send_append(m.from_, send_if_empty=False):
            pass
        if m.from_ == self.lead_transferee and pr.match == self.log.last_index():
            self.logger.info("sent_timeout_now", to=m.from_, after="caught_up")
            self._send(self._msg(MsgType.TIMEOUT_NOW, m.from_))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.msg_app_flow_paused = False
        if (
            pr.state == ProgressState.SNAPSHOT
            and self.ticks - pr.snapshot_sent_tick >= self.cfg.election_ticks
        ):
            # The snapshot, or the ack of its installation, may have been lost
            # and the driver reported nothing: probe just past it. A follower
            # that installed it accepts; one that did not rejects and we resend.
            self.logger.info("retrying_snapshot", node=m.from_, index=pr.pending_snapshot)
            pr.become_probe()
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            # Acks may have been lost; free one slot so replication cannot stall.
            pr.inflights.free_first_one()
        if pr.match < self.log.last_index() or pr.state == ProgressState.PROBE:
            self._send_append(m.from_)
        if not m.context:
            return
        acks = self.read_only.recv_ack(m.from_, m.context)
        if acks is None or vote_result(self.voters, dict.fromkeys(acks, True)) != VoteResult.WON:
            return
        for rs in self.read_only.advance(m.context):
            self._respond_read_index(rs.origin, rs.index, rs.context)

    def _leader_read_index(self, m: Message) -> None:
        if len(self.voters) == 1:
            self._respond_read_index(m.from_, self.log.committed, m.context)
            return
        if not self._committed_entry_in_current_term():
            # Our commit index may still be behind the previous leader's: wait
            # until our no-op commits (thesis §6.4 step 1).
            self.pending_read_index.append(m)
            return
        self.read_only.add_request(self.log.committed, m.context, m.from_)
        self.read_only.recv_ack(self.id, m.context)
        # One heartbeat round per batch: the round leaves when the driver takes
        # the next Ready (flush_read_round), carrying the newest context; a
        # quorum echoing it confirms every read queued before it (ReadOnly.advance).
        self.read_round_pending = True

    def flush_read_round(self) -> None:
        """Send the heartbeat round that confirms the reads queued since the last one.

        At most one read round is in flight: reads arriving meanwhile wait and
        share the next round (group commit for reads), which bounds rounds by
        round trips rather than by passes of the driver. A lost round cannot
        stall reads: every regular heartbeat carries the newest pending
        context, and its acks confirm everything queued before it.
        """
        if not self.read_round_pending:
            return
        if self.read_round_in_flight in self.read_only.pending:
            return  # the next round leaves when this one is confirmed
        self.read_round_pending = False
        self.read_round_in_flight = b""
        if self.role == Role.LEADER and self.read_only.queue:
            ctx = self.read_only.last_pending_context()
            self.read_round_in_flight = ctx
            self._broadcast_heartbeat(ctx)

    def _respond_read_index(self, origin: int, index: int, context: bytes) -> None:
        if origin in (NONE, self.id):
            self.read_states.append(ReadState(index, context))
        else:
            self._send(self._msg(MsgType.READ_INDEX_RESP, origin, index=index, context=context))

    def _transfer_leader(self, target: int) -> None:
        if target not in self.progress:
            raise ProposalDropped(f"cannot transfer leadership to {target}: not a voter")
        if target == self.id:
            return  # already leader
        if self.lead_transferee == target:
            return  # already in progress
        self._abort_leader_transfer()
        self.lead_transferee = target
        self.election_elapsed = 0
        self.logger.info("started_leader_transfer", to=target, term=self.term)
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self.logger.info("sent_timeout_now", to=target, after="already_up_to_date")
            self._send(self._msg(MsgType.TIMEOUT_NOW, target))
        else:
            self._send_append(target)

    # -- candidate -------------------------------------------------------------
    def _step_candidate(self, m: Message) -> str | None:
        my_resp = (
            MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        )
        match m.type:
            case MsgType.PROP | MsgType.READ_INDEX | MsgType.TRANSFER_LEADER:
                if m.type == MsgType.READ_INDEX and m.from_ not in (NONE, self.id):
                    return self._dropped(m, "forwarded read reached a candidate")
                raise ProposalDropped("no leader: election in progress")
            case MsgType.APP:
                self._become_follower(m.term, m.from_)
                self._handle_append(m)
            case MsgType.HEARTBEAT:
                self._become_follower(m.term, m.from_)
                self._handle_heartbeat(m)
            case MsgType.SNAP:
                self._become_follower(m.term, m.from_)
                self._handle_snapshot(m)
            case t if t == my_resp:
                if m.from_ not in self.voters:
                    return self._dropped(m, "vote from a non-voter")
                result = self._poll(m.from_, not m.reject)
                if result == VoteResult.WON:
                    if self.role == Role.PRE_CANDIDATE:
                        self._campaign(CampaignKind.ELECTION)
                    else:
                        self._become_leader()
                        self._broadcast_append()
                elif result == VoteResult.LOST:
                    self._become_follower(self.term, NONE)
            case _:
                return self._dropped(m, "unexpected message for a candidate")
        return None

    # -- follower ----------------------------------------------------------------
    def _step_follower(self, m: Message) -> str | None:
        # The cases are disjoint; the most frequent comes first.
        match m.type:
            case MsgType.APP:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_append(m)
            case MsgType.PROP | MsgType.TRANSFER_LEADER:
                raise NotLeaderError(self.lead)
            case MsgType.HEARTBEAT:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_heartbeat(m)
            case MsgType.SNAP:
                self.election_elapsed = 0
                self.lead = m.from_
                self._handle_snapshot(m)
            case MsgType.TIMEOUT_NOW:
                if m.from_ != self.lead:
                    return self._dropped(m, "timeout-now not from our leader")
                self.logger.info("campaigning_for_transfer", term=self.term, from_node=m.from_)
                # Leadership transfer skips pre-vote: the leader asked for it.
                self._hup(CampaignKind.TRANSFER)
            case MsgType.READ_INDEX:
                if m.from_ not in (NONE, self.id):
                    return self._dropped(m, "forwarded read reached a follower")
                if self.lead == NONE:
                    raise ProposalDropped("no leader known to confirm the read")
                fwd = Message(MsgType.READ_INDEX, to=self.lead, from_=self.id, context=m.context)
                self._send(fwd)
            case MsgType.READ_INDEX_RESP:
                self.read_states.append(ReadState(m.index, m.context))
            case MsgType.PEER_DOWN:
                if m.from_ != self.lead or self.lead == NONE:
                    return self._dropped(m, "the peer that went down is not our leader")
                self._forget_dead_leader()
            case _:
                return self._dropped(m, "unexpected message for a follower")
        return None

    def forget_acks(self, node: int) -> None:
        """`node` restarted on an empty disk: what its old process acknowledged is void.

        Leader only (nobody else counts acks). Its match drops to 0, so no
        commit is ever computed from those acks again, and it is probed from
        the start. Lowering a match is safe: the commit index never moves back.
        """
        pr = self.progress.get(node) if self.role == Role.LEADER else None
        if pr is None or node == self.id:
            return
        self.logger.info("forgot_acks", node=node, match=pr.match, term=self.term)
        pr.match = 0
        pr.become_probe()

    def _forget_dead_leader(self) -> None:
        """Fast failover: our leader's process died (its connection closed).

        We drop the leader, so our vote lease ends and we grant (pre-)votes to
        others who saw the same, and we campaign within 1-3 ticks instead of a
        whole election timeout; the jitter keeps followers from splitting the
        vote. Safety does not depend on the lease (we serve no lease reads):
        a wrong report only costs a pre-vote that a live leader's other
        followers still reject. A silent failure (partition, pause) is never
        reported this way and still waits out the election timeout.
        """
        self.logger.info("forgot_dead_leader", leader=self.lead, term=self.term)
        self.lead = NONE
        soon = self.randomized_election_timeout - self.rng.randint(1, 3)
        self.election_elapsed = max(self.election_elapsed, soon)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(self._msg(MsgType.APP_RESP, m.from_, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.entries or m.context != COMMIT_ONLY:
                # Fields in order: type, to, from_, term, log_term, index, ...
                self._send(Message(_APP_RESP, m.from_, self.id, self.term, 0, last_new))
            return
        # Reject with a hint: the largest index <= m.index whose term is <= the
        # leader's term there; the leader resumes probing from it.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._send(
            self._msg(
                MsgType.APP_RESP,
                m.from_,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(self._msg(MsgType.HEARTBEAT_RESP, m.from_, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            self._dropped(m, "snapshot message without snapshot")
            return
        if self._restore(snap):
            self.logger.info("restored_snapshot", index=snap.meta.index, term=snap.meta.term)
            self._send(self._msg(MsgType.APP_RESP, m.from_, index=self.log.last_index()))
        else:
            self._send(self._msg(MsgType.APP_RESP, m.from_, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        """Install a leader's snapshot; False if our log already covers it."""
        if snap.meta.index <= self.log.committed:
            return False
        if self.log.match_term(snap.meta.index, snap.meta.term):
            # We have the entry already: just fast-forward the commit index.
            self.log.commit_to(snap.meta.index)
            return False
        self.log.restore(snap)
        if snap.meta.conf_state.voters:
            self.voters = snap.meta.conf_state.voters
        return True

    # -- outputs ---------------------------------------------------------------
    def flush_commit_news(self) -> None:
        """Tell the followers of a new commit index, once per batch of messages.

        The acks of one batch may advance the commit several times, and a busy
        batch also carries new entries for the followers, whose appends carry
        the commit index anyway. So instead of an append per advance (etcd's
        bcastAppend in maybeCommit), the news goes out when the messages are
        taken, and only to followers that no append of this batch told of
        this commit already. Commit news is a pure notification: when it
        leaves changes no safety property, only how soon followers apply.
        """
        if not self.commit_news:
            return
        self.commit_news = False
        if self.role != _LEADER:
            return
        committed = self.log.committed
        told = {m.to for m in self.msgs if m.type == _APP and m.commit >= committed}
        for p in self._peers():
            if p not in told:
                self._send_append(p)

    def take_messages(self) -> tuple[list[Message], list[Message]]:
        self.flush_commit_news()
        msgs, after = self.msgs, self.msgs_after_persist
        self.msgs, self.msgs_after_persist = [], []
        return msgs, after

    def take_read_states(self) -> list[ReadState]:
        rs, self.read_states = self.read_states, []
        return rs
