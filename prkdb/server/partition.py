"""`PartitionDriver`: the only owner of one partition's RawNode and state machine.

It does not run a task of its own: the node's `RaftLoop` drives every
partition in one loop (see prkdb/server/raftloop.py), calling, per pass,
`handle` for each queued item, `flush_queued`, `tick`, then
`begin_ready` (send `messages`, append to the shared WAL), one WAL sync for
all partitions, and `finish_ready` (mirror into MemoryStorage, send
`messages_after_persist`, apply committed entries, serve reads, advance).
Rare slow steps (installing or finishing a snapshot, a restart after a bug)
run in the background via `go_slow`, and the loop leaves this partition
alone until they are done.

Client waits are resolved when an entry is applied, keyed by (term, index):
if a different entry is applied at our index, our proposal was lost and
will never be applied (safe to retry: sessions dedup). A proposal whose fate
is unknown when the deadline passes is OUTCOME_UNKNOWN.

Leases: the replicated state holds each lease's TTL; their deadlines live
only on the leader, in `self.leases`, a `PartitionLeases` (prkdb/server/leases.py:
the rules and why no lease expires early), on trio's clock. This driver only
feeds it, at the points the lease simulator (tests/sim/lease_sim.py) feeds
its own: the term it leads after each Ready with soft or hard state (a new
leader restarts every TTL), each applied grant's result, keep-alives once
their ReadIndex round is applied (client_service.py asks for the round),
and ticks, whose answer is the `LeaseRevokeCommand(id, expired=True)`
proposals for lapsed leases.

Watches: `self.watches` (prkdb/server/watch.py) hears every applied event
through the state machine's `on_events` hook (set again whenever the machine
is rebuilt), gets one `flush` per applied Ready (so each watch gets one frame
per pass) and one `tick` per Raft tick (idle progress notices). A client's
connection task opens and closes watches directly (`open_watch`,
`close_watch`): synchronous calls, so no apply falls between a watch's
backlog and its registration, like a STALE read.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVarTuple

import trio

from prkdb.config import NodeConfig
from prkdb.errors import Compacted, NotLeader, OutcomeUnknown, PrkdbError, Timeout, Unavailable
from prkdb.logging import NodeLogger
from prkdb.raft import (
    ConfState,
    MemoryStorage,
    Message,
    NotLeaderError,
    ProposalDropped,
    RaftConfig,
    RaftStatus,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from prkdb.raft.errors import LogStorageError
from prkdb.server.groupcommit import GroupCommitter
from prkdb.server.inbox import (
    ClientRead,
    ClientWrite,
    FencePeer,
    Inbox,
    InboxItem,
    PeerDown,
    PeerMessage,
    SlowStepDone,
    SnapshotWritten,
    TakeSnapshot,
    TransferLeadership,
)
from prkdb.server.leases import PartitionLeases
from prkdb.server.pending import Callback, Pending, Waiter
from prkdb.server.rebuild import RebuildTracker
from prkdb.server.recovery import new_state_machine, recover_partition
from prkdb.server.watch import PartitionWatches, Watch, WatchSink
from prkdb.state import (
    Compacted as HistoryCompacted,
)
from prkdb.state import (
    DecodedSnapshot,
    KeyRecord,
    KVStateMachine,
    ScanItem,
    encode_command,
)
from prkdb.state.auth import AuthStore
from prkdb.storage import SnapshotStore, WriteAheadLog

Ts = TypeVarTuple("Ts")

SendMessages = Callable[[int, Sequence[Message]], None]
"""``(partition, messages)``: hand Raft messages to the transport (sent at its next flush)."""


@dataclass(order=True)
class _ReadWait:
    index: int
    seq: int
    pending: list[Pending] = field(compare=False)


class PartitionDriver:
    def __init__(
        self,
        cfg: NodeConfig,
        partition: int,
        wal: WriteAheadLog,
        snapshots: SnapshotStore,
        committer: GroupCommitter,
        send: SendMessages,
        log: NodeLogger,
        inbox: Inbox,
        flush: Callable[[], None],
        rebuild: RebuildTracker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        # Set while this partition of a rebuilt node may not vote (rebuild.py).
        self.rebuild = rebuild if rebuild is not None and rebuild.target(partition) else None
        self.partition = partition
        self.wal = wal
        self.snapshots = snapshots
        self.committer = committer
        self.send = send  # transport.send(partition, msgs): collected until a flush
        self.flush = flush  # transport.flush: the RaftLoop calls it in its passes
        self.log = log.bind(partition=partition)
        self.inbox = inbox  # the node's RaftLoop inbox, shared by all partitions
        # This partition's randomness (election timeouts, read contexts), drawn
        # from the node's one seeded source so that a run can be replayed.
        self._rng = rng if rng is not None else random.Random()
        self._proposals: list[Pending] = []
        self._by_index: dict[int, Pending] = {}
        self._read_batch: list[Pending] = []  # reads of this pass: one ReadIndex for all
        self._reads: dict[bytes, list[Pending]] = {}  # ReadIndex context -> its reads
        self._read_waits: list[_ReadWait] = []
        self._read_seq = itertools.count(1)
        # (deadline, seq, request): requests are failed here when they expire.
        self._deadlines: list[tuple[float, int, Pending]] = []
        self._ctx_prefix = self._rng.getrandbits(48).to_bytes(6, "big")
        self._snapshot_index = 0
        self.dropped_inbox = 0
        self._snapshot_waiters: list[Pending] = []
        self._snapshot_running = False  # a background snapshot is being written
        self._saved_snapshot: Snapshot | None = None  # written, not yet in the WAL
        self.background: trio.Nursery  # set by the RaftLoop: snapshots, slow Readies
        # While a slow step (a snapshot install or finish, a restart) runs in
        # the background, the loop leaves this partition alone and parks its
        # inbox items here; they are replayed, in order, when it is done.
        self.busy = False
        self.deferred: list[InboxItem] = []
        self.touched = True  # got input since the loop last took its Ready
        self.restart_backoff = 0.1
        # Spread leaders at boot: partition p's preferred leader campaigns
        # early, before the randomized timeouts of the others expire.
        voters = cfg.voter_ids
        preferred = voters[partition % len(voters)]
        self._boot_ticks = 2 if preferred == cfg.node_id and len(voters) > 1 else -1
        self.raw: RawNode
        self.sm: KVStateMachine
        self.storage: MemoryStorage
        self.leader_id = 0
        self.role = Role.FOLLOWER
        # Lease deadlines, on the leader only (module doc). A lapsed lease's
        # revoke is proposed again after an election timeout if still pending.
        rf = cfg.raft
        self.leases = PartitionLeases(retry_s=rf.election_ticks * rf.tick_ms / 1000)
        self._role_changed = trio.Event()  # set (and replaced) on every role change
        lim = cfg.limits
        self.watches = PartitionWatches(partition, lim.watch_buffer_events,
                                        lim.watch_buffer_bytes)
        self._recover()
        if self.rebuild is not None:  # a resumed rebuild may have got there before its crash
            self._check_rebuilt(self.storage.hard_state.commit)

    # -- recovery --------------------------------------------------------------
    def _recover(self) -> None:
        r = recover_partition(self.partition, self.cfg.voter_ids, self.wal, self.snapshots,
                              self._new_state_machine())
        self.sm, self.storage, self._snapshot_index = r.sm, r.storage, r.snapshot_index
        self._hook_watches()
        self.raw = RawNode(self._raft_config(r.snapshot_index), self.storage)
        self.log.info(
            "recovered_partition",
            snapshot_index=r.snapshot_index,
            last_index=self.storage.last_index(),
            commit=self.storage.hard_state.commit,
            term=self.storage.hard_state.term,
            keys=len(self.sm),
        )

    def _new_state_machine(self) -> KVStateMachine:
        return new_state_machine(self.cfg, self.partition)

    def _raft_config(self, applied: int) -> RaftConfig:
        rf = self.cfg.raft
        return RaftConfig(
            id=self.cfg.node_id,
            peers=self.cfg.voter_ids,
            election_ticks=rf.election_ticks,
            heartbeat_ticks=rf.heartbeat_ticks,
            max_size_per_msg=rf.max_size_per_msg,
            max_inflight_msgs=rf.max_inflight_msgs,
            pre_vote=rf.pre_vote,
            check_quorum=rf.check_quorum,
            applied=applied,
            recovering=self.rebuild is not None,
            rng=random.Random(self._rng.getrandbits(64)),
            logger=self.log,
        )

    def restart_core(self) -> None:
        """Rebuild the core and state machine from the durable mirror (after a bug)."""
        snap = self.storage.snapshot()
        self.sm = self._new_state_machine()
        if not snap.is_empty():
            self.sm.restore(snap.data)
        # Watches stay: the new machine re-applies the entries after the
        # snapshot, and each watch skips what it already had (watch.py).
        self.watches.discard_pass()
        self._hook_watches()
        self._proposals.clear()
        self._by_index.clear()
        self._read_batch.clear()
        self._reads.clear()
        self._read_waits.clear()
        self._deadlines.clear()
        self.leases.step_down()
        self.raw = RawNode(self._raft_config(snap.meta.index), self.storage)
        self.log.warning("restarted_partition", snapshot_index=snap.meta.index)

    # -- read-only views (the client service, the loop, status) --------------------
    @property
    def applied_index(self) -> int:
        """Highest log index applied here (no-ops included)."""
        return max(self.sm.applied_index, self.raw.applied_index)

    @property
    def is_leader(self) -> bool:
        return self.raw.role == Role.LEADER

    def status(self) -> RaftStatus:
        """The Raft state of this replica (term, commit, each follower's progress if leading)."""
        return self.raw.status()

    def auth_store(self) -> AuthStore:
        """The users and roles this machine applied (partition 0's are the cluster's)."""
        return self.sm.auth

    def auth_caught_up(self) -> bool:
        """Whether this replica knows a leader and applied all it knows committed.

        A failed login on a replica that is not (restarted, cut off) may be a
        user or password change it has not applied yet (prkdb/server/auth.py).
        """
        st = self.raw.status()
        return st.leader != 0 and self.applied_index >= st.commit

    def lease_keys(self, lease_id: int) -> list[bytes] | None:
        """The keys attached to a lease in the applied state (None: no such lease here)."""
        lease = self.sm.lease(lease_id)
        return None if lease is None else lease[1]

    def has_ready(self) -> bool:
        """Whether the core has anything to persist, send or apply (no side effects)."""
        return self.raw.has_ready()

    def read(self, key: bytes) -> KeyRecord | None:
        """The record of `key` in the applied state, None if absent.

        ``(value, version, mod_revision, create_revision, lease)``, the state
        machine's own tuple (no copy). As of now: a linearizable read calls it
        once `submit_read` said so.
        """
        return self.sm.get(key)

    def scan(self, start: bytes, end: bytes | None, limit: int, keys_only: bool
             ) -> list[ScanItem]:
        """At most `limit` keys of ``[start, end)`` in the applied state, in key order."""
        return self.sm.scan(start, end, limit=limit, keys_only=keys_only)

    def count(self, start: bytes, end: bytes | None) -> int:
        """How many keys ``[start, end)`` holds in the applied state."""
        return self.sm.count(start, end)

    # -- watches (the client service's connection tasks) ------------------------------
    def open_watch(self, sink: WatchSink, rid: int, start: bytes, end: bytes | None,
                   after: int, prev_values: bool) -> Watch:
        """Watch ``[start, end)`` from revision `after` on: backlog now, live events after.

        Raises:
            Compacted: `after` is older than this replica's event history.
        """
        try:
            w = self.watches.open(self.sm.events, sink, rid, start, end, after, prev_values,
                                  self.applied_index, trio.current_time())
        except HistoryCompacted as e:
            raise Compacted(e.oldest, partition=self.partition) from None
        self._hook_watches()
        return w

    def close_watch(self, watch: Watch) -> None:
        """Forget `watch` (cancelled, or its connection closed); idempotent."""
        self.watches.close(watch)
        self._hook_watches()

    def _hook_watches(self) -> None:
        # The machine builds Event objects only for a hook: none while nobody
        # watches this partition (the write path stays as fast as before).
        self.sm.on_events = self.watches.on_events if self.watches.active else None

    # -- leases (the leader's; call once a ReadIndex round confirmed leadership) ----
    def keep_alive(self, lease_ids: Sequence[int], now: float) -> list[int]:
        """Restart the TTL of each lease: its remaining ms (the TTL), 0 = no such lease.

        A lease that lapsed already is not renewed (0): its revoke is on its way.
        Raises NotLeader unless this node leads and holds this term's deadlines.
        """
        out = self.leases.keep_alive(lease_ids, self.sm, now, self._lead_term())
        if out is None:
            raise self.not_leader_error()
        return out

    def lease_status(self, lease_id: int, now: float, with_keys: bool
                     ) -> tuple[int, int, list[bytes]] | None:
        """``(ttl_ms, remaining_ms, keys)`` of a lease (keys only if asked), None if unknown."""
        self._check_leading()
        return self.leases.status(lease_id, self.sm, now, with_keys)

    def lease_list(self, now: float) -> list[tuple[int, int, int]]:
        """``(lease_id, ttl_ms, remaining_ms)`` of every lease of the partition, by id."""
        self._check_leading()
        return self.leases.listing(self.sm, now)

    def _lead_term(self) -> int:
        """The term this node leads, 0 if it does not lead (what `self.leases` is told)."""
        raw = self.raw
        return raw.term if raw.role == Role.LEADER else 0

    def _check_leading(self) -> None:
        if not self.leases.leads(self._lead_term()):
            raise self.not_leader_error()

    def not_leader_error(self) -> NotLeader:
        """The NOT_LEADER error for a request here: names the leader we know and its address."""
        lead = self.raw.leader_id
        peer = self.cfg.peer(lead) if lead else None
        return NotLeader(
            lead or None,
            peer.client_addr if peer else None,
            partition=self.partition,
        )

    # -- API for the client service (any task) -----------------------------------

    def submit_write(self, data: bytes, deadline: float, callback: Callback) -> None:
        """Replicate `data`; `callback(result, error)` once applied here or failed.

        Errors: NotLeader (nothing proposed), Unavailable (dropped or lost:
        safe to retry), Timeout (not proposed before the deadline),
        OutcomeUnknown (proposed, fate unknown at the deadline).
        """
        pending = Pending(callback, data)
        self._submit(ClientWrite(self.partition, pending), pending, deadline)

    def submit_lease_grant(self, data: bytes, deadline: float, callback: Callback) -> None:
        """`submit_write` for a LeaseGrantCommand.

        Nothing more to do: once applied on the leader, the grant's result
        starts its TTL (`_apply` hands every grant result to `self.leases`).
        """
        self.submit_write(data, deadline, callback)

    def submit_read(self, deadline: float, callback: Callback) -> None:
        """`callback(applied_index, error)` once a linearizable read may be served here."""
        pending = Pending(callback)
        self._submit(ClientRead(self.partition, pending), pending, deadline)

    def _submit(self, item: InboxItem, pending: Pending, deadline: float) -> None:
        try:
            self.inbox.send_nowait(item)
        except trio.WouldBlock:
            pending.finish(error=Unavailable("the node is overloaded (raft inbox full)"))
            return
        heapq.heappush(self._deadlines, (deadline, next(self._read_seq), pending))

    def expire(self, now: float) -> None:
        """Fail every request whose deadline passed (the driver owns all deadlines)."""
        dl = self._deadlines
        if not dl or dl[0][0] > now:
            return
        while dl and dl[0][0] <= now:
            p = heapq.heappop(dl)[2]
            if p.done:
                continue
            if p.index:
                p.finish(error=OutcomeUnknown(
                    f"partition {self.partition}: write proposed at index {p.index} "
                    "not applied before the deadline"))
            elif p.data:
                p.finish(error=Timeout(
                    f"partition {self.partition}: write not accepted before the deadline"))
            else:
                p.finish(error=Timeout(
                    f"partition {self.partition}: read index not confirmed in time"))

    async def wait_not_leader(self) -> None:
        """Return once this node no longer leads the partition."""
        while self.is_leader:
            await self._role_changed.wait()

    async def transfer_leadership(self, to: int) -> int:
        """Start handing leadership to `to` (0 = the most caught-up follower); returns it."""
        w: Waiter[int] = Waiter()
        p = Pending(w.set)
        self._enqueue(TransferLeadership(self.partition, to, p), p)
        return await w.get()

    async def snapshot_now(self) -> int:
        """Take a snapshot now (if anything was applied since the last); its index."""
        w: Waiter[int] = Waiter()
        p = Pending(w.set)
        self._enqueue(TakeSnapshot(self.partition, p), p)
        return await w.get()

    def deliver(self, msg: Message) -> None:
        """A peer's message (from the transport); dropped if the inbox is full."""
        try:
            self.inbox.send_nowait(PeerMessage(self.partition, msg))
        except trio.WouldBlock:
            self.dropped_inbox += 1

    def report_peer_down(self, peer: int) -> None:
        """The transport saw `peer`'s process die; fast failover if it led us."""
        with contextlib.suppress(trio.WouldBlock):
            self.inbox.send_nowait(PeerDown(self.partition, peer))

    async def fence(self, node: int, done: Callable[[], None]) -> None:
        """Make the leader forget `node`'s acks, behind every message of it queued; then `done`."""
        await self.inbox.send(FencePeer(self.partition, node, done))

    def _enqueue(self, item: InboxItem, pending: Pending) -> None:
        try:
            self.inbox.send_nowait(item)
        except trio.WouldBlock:
            pending.finish(error=Unavailable("the node is overloaded (raft inbox full)"))

    # -- driven by the node's RaftLoop ---------------------------------------------
    def handle(self, item: InboxItem) -> None:
        """Feed one inbox item into the core (called only by the RaftLoop)."""
        match item:
            case PeerMessage(msg=msg):
                self.raw.step(msg)
            case ClientWrite(pending=pending):
                if not pending.done:  # (expired while queued)
                    self._proposals.append(pending)
            case ClientRead(pending=pending):
                if not pending.done:
                    self._read_batch.append(pending)
            case PeerDown(peer=peer):
                self.raw.report_peer_down(peer)
            case TransferLeadership(to=to, pending=pending):
                self._transfer(to, pending)
            case TakeSnapshot(pending=pending):
                self._snapshot_waiters.append(pending)
            case FencePeer(node=node, done=done):  # see Node.fence_peer
                try:
                    self.raw.forget_acks(node)
                finally:
                    done()
            case SnapshotWritten():
                pass  # the loop looks at the written snapshot after the pass
            case SlowStepDone():
                raise AssertionError("SlowStepDone is the RaftLoop's, not a partition's")

    def tick(self, now: float) -> None:
        """One Raft tick; on the leader, also revoke the leases that lapsed by `now`."""
        self.raw.tick()
        if self.watches.active:
            self.watches.tick(self.applied_index, now)
        if self._boot_ticks > 0:
            self._boot_ticks -= 1
            if self._boot_ticks == 0 and self.raw.leader_id == 0:
                self.raw.campaign()
        if self.leases.next_due <= now:
            self._expire_leases(now)

    def _expire_leases(self, now: float) -> None:
        revokes = self.leases.expire(now, self.sm, self._lead_term())
        for cmd in revokes:
            # No session: a second revoke of the same lease is a harmless LEASE_NOT_FOUND.
            self._proposals.append(Pending(self._expiry_applied, encode_command(cmd)))
        if revokes:
            self.log.info("leases_expired", count=len(revokes),
                          leases=[c.lease_id for c in revokes[:8]])

    def _expiry_applied(self, result: object, error: PrkdbError | None) -> None:
        if error is not None:  # lost or dropped: proposed again after the retry interval
            self.log.debug("lease_expiry_not_applied", error=repr(error))

    def _transfer(self, to: int, w: Pending) -> None:
        if not self.is_leader:
            w.finish(error=self.not_leader_error())
            return
        if to == 0:
            st = self.raw.status()
            candidates = [(pr.match, n) for n, pr in st.progress.items() if n != self.cfg.node_id]
            if not candidates:
                w.finish(error=Unavailable("no other voter to transfer leadership to"))
                return
            to = max(candidates)[1]
        try:
            self.raw.transfer_leadership(to)
        except ProposalDropped as e:
            w.finish(error=Unavailable(str(e)))
            return
        w.finish(result=to)

    def flush_queued(self) -> None:
        """Hand the pass's proposals and reads to the core, one call for each kind."""
        if self._proposals:
            self._flush_proposals()
        if self._read_batch:
            self._flush_reads()

    def _flush_reads(self) -> None:
        # One ReadIndex for every read of the pass: its index is the commit
        # index when the last of them had arrived, which is all each of them
        # needs (>= every commit before it arrived), and the core does the
        # bookkeeping of one request instead of one per read.
        reads, self._read_batch = self._read_batch, []
        ctx = self._ctx_prefix + next(self._read_seq).to_bytes(8, "big")
        try:
            self.raw.read_index(ctx)
        except NotLeaderError:
            err: PrkdbError = self.not_leader_error()
        except ProposalDropped as e:
            err = Unavailable(f"partition {self.partition}: {e}")
        else:
            self._reads[ctx] = reads
            return
        for r in reads:
            r.finish(error=err)

    def _flush_proposals(self) -> None:
        props, self._proposals = self._proposals, []
        try:
            term, first = self.raw.propose_many([p.data for p in props])
        except NotLeaderError:
            err = self.not_leader_error()
            for p in props:
                p.finish(error=err)
            return
        except ProposalDropped as e:
            for p in props:
                p.finish(error=Unavailable(f"partition {self.partition}: {e}"))
            return
        for i, p in enumerate(props):
            p.term, p.index = term, first + i
            self._by_index[p.index] = p

    # -- a Ready, in two halves around the node's one WAL sync per pass -----------
    def begin_ready(self) -> Ready | None:
        """Take the Ready; send what may leave before the sync; append to the WAL.

        Returns it for `finish_ready` once the RaftLoop's shared sync made the
        appends durable. A Ready carrying a snapshot to install returns None
        and goes down the slow path in the background instead: writing the
        snapshot file must not stall every other partition of the node.
        """
        rd = self.raw.ready()
        if rd.snapshot is not None:
            self.go_slow(self._process_snapshot_ready, rd)
            return None
        if rd.messages:
            self.send(self.partition, rd.messages)
        if rd.entries:
            self.wal.append_entries(self.partition, rd.entries)
        if rd.hard_state is not None:
            self.wal.append_hard_state(self.partition, rd.hard_state)
        return rd

    def finish_ready(self, rd: Ready) -> None:
        """After the sync: mirror into memory, send the acks, apply, advance."""
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        self._after_persist(rd)

    def _after_persist(self, rd: Ready, decoded: DecodedSnapshot | None = None) -> None:
        if rd.messages_after_persist:
            self.send(self.partition, rd.messages_after_persist)
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        if rd.soft_state is not None or rd.hard_state is not None:
            # (a term change comes with a hard state even if the role is the same)
            self.leases.observe(self._lead_term(), self.sm, trio.current_time())
        self._apply(rd, decoded)
        self.raw.advance(rd)
        if self.rebuild is not None and rd.hard_state is not None:
            self._check_rebuilt(rd.hard_state.commit)

    def _check_rebuilt(self, durable_commit: int) -> None:
        # The commit index just made durable covers everything committed when
        # the rebuild began (rebuild.py says why): our log holds it all again.
        assert self.rebuild is not None
        try:
            term = self.storage.term(durable_commit)
        except LogStorageError:
            return  # not in the mirror (compacted under us): the next Ready decides
        if not self.rebuild.reached(self.partition, durable_commit, term, self.raw.term):
            return
        self.raw.end_recovery()
        self.rebuild.caught_up(self.partition, durable_commit)
        self.rebuild = None

    async def _process_snapshot_ready(self, rd: Ready) -> None:
        if rd.messages:
            self.send(self.partition, rd.messages)
            self.flush()
        # Decoding a large partition's state takes about a second per million
        # keys: in a worker thread, so the node's other partitions keep
        # ticking and heartbeating meanwhile (on the loop, a leader elsewhere
        # could lose its followers to an election). Before anything is made
        # durable, so a snapshot that does not decode is never kept.
        # Installing it, after the sync, is instant.
        assert rd.snapshot is not None
        decoded = await trio.to_thread.run_sync(self.sm.decode_snapshot, rd.snapshot.data)
        await self._persist(rd)
        self._after_persist(rd, decoded)
        self.flush()

    async def _persist(self, rd: Ready) -> None:
        p = self.partition
        if rd.snapshot is not None:
            await trio.to_thread.run_sync(self.snapshots.save, p, rd.snapshot)
            self.wal.append_snapshot_marker(p, rd.snapshot.meta)
        if rd.entries:
            self.wal.append_entries(p, rd.entries)
        if rd.hard_state is not None:
            self.wal.append_hard_state(p, rd.hard_state)
        if rd.must_sync:
            await self.committer.sync()
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
            self._snapshot_index = rd.snapshot.meta.index
            self.wal.release(p, self.snapshots.safe_release_index(p))
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)

    # -- the slow path: one partition steps aside, the others go on ----------------
    def go_slow(self, fn: Callable[[*Ts], Awaitable[None]], *args: *Ts) -> None:
        """Run `await fn(*args)` in the background; the loop skips us until it is done."""
        self.busy = True
        self.background.start_soon(self._slow, fn, args)

    async def _slow(self, fn: Callable[[*Ts], Awaitable[None]], args: tuple[*Ts]) -> None:
        error: Exception | None = None
        try:
            await fn(*args)
        except Exception as e:  # judged by the RaftLoop: a bug or a storage failure
            error = e
        await self.inbox.send(SlowStepDone(self.partition, error))

    async def restart_after(self, delay: float) -> None:
        """Rebuild the core after a bug, after `delay` (so a bug cannot spin)."""
        await trio.sleep(delay)
        self.restart_core()

    @property
    def has_snapshot_work(self) -> bool:
        return self._saved_snapshot is not None or bool(self._snapshot_waiters)

    def _on_soft_state(self, rd: Ready) -> None:
        ss = rd.soft_state
        assert ss is not None
        was_leader = self.role == Role.LEADER
        if ss.leader != self.leader_id:
            self.log.info("leader_changed", leader=ss.leader, term=self.raw.term)
        self.leader_id, self.role = ss.leader, ss.role
        self._role_changed.set()
        self._role_changed = trio.Event()
        if was_leader and ss.role != Role.LEADER:
            # Reads waiting for a heartbeat round we led will never be confirmed.
            err = self.not_leader_error()
            for reads in self._reads.values():
                for w in reads:
                    w.finish(error=err)
            self._reads.clear()

    def _apply(self, rd: Ready, decoded: DecodedSnapshot | None) -> None:
        sm = self.sm
        if rd.snapshot is not None:
            # Every snapshot Ready takes the slow path, which decoded it off the loop.
            assert decoded is not None
            sm.install(decoded)
            self.watches.history_reset(rd.snapshot.meta.index)
            self._hook_watches()
            self.log.info("installed_snapshot", index=rd.snapshot.meta.index)
            for idx in [i for i in self._by_index if i <= rd.snapshot.meta.index]:
                self._by_index.pop(idx).finish(
                    error=OutcomeUnknown(f"write at index {idx} was covered by a snapshot")
                )
        by_index = self._by_index
        # A grant applied while leading starts its TTL now (a follower keeps none).
        leases = self.leases if self.leases.leading else None
        for e in rd.committed_entries:
            result = sm.apply(e.index, e.data) if e.data else None
            if leases is not None and result is not None and result.lease_id:
                leases.granted(result.lease_id, sm, trio.current_time())
            if by_index:
                prop = by_index.pop(e.index, None)
                if prop is not None:
                    if prop.term == e.term:
                        prop.finish(result=result)
                    else:
                        prop.finish(
                            error=Unavailable(
                                f"partition {self.partition}: proposal at index {e.index} was "
                                "replaced after a leader change; retry"
                            )
                        )
        for rs in rd.read_states:
            reads = self._reads.pop(rs.context, None)
            if reads is not None:
                heapq.heappush(self._read_waits, _ReadWait(rs.index, next(self._read_seq), reads))
        # A read confirmed at index i may be served once we applied i (thesis §6.4).
        applied = max(sm.applied_index, self.raw.applied_index)
        if rd.committed_entries:
            applied = max(applied, rd.committed_entries[-1].index)
        waits = self._read_waits
        while waits and waits[0].index <= applied:
            for w in heapq.heappop(waits).pending:
                w.finish(result=applied)
        if self.watches.active:
            self.watches.flush(applied, trio.current_time())
            if not self.watches.active:  # the last ones overflowed or lost their connection
                self._hook_watches()

    def maybe_snapshot(self) -> None:
        """Finish a snapshot the background task wrote, or start one if due.

        Serializing and writing a snapshot takes time proportional to the
        state; it runs in `_write_snapshot` (a worker thread for the CPU and
        disk parts) so this partition keeps ticking, heartbeating and serving
        meanwhile. Only freezing the state runs here; once the file is durable
        `_finish_snapshot` (the slow path) writes the WAL marker, releases old
        segments and compacts the in-memory log.
        """
        if self._saved_snapshot is not None:
            snap, self._saved_snapshot = self._saved_snapshot, None
            self.go_slow(self._finish_snapshot, snap)
            return
        if self._snapshot_running:
            return
        applied = self.raw.applied_index
        due = applied - self._snapshot_index >= self.cfg.raft.snapshot_entries
        if applied <= self._snapshot_index or not (due or self._snapshot_waiters):
            waiters, self._snapshot_waiters = self._snapshot_waiters, []
            for w in waiters:
                w.finish(result=self._snapshot_index)
            return
        self._snapshot_running = True
        meta = SnapshotMeta(applied, self.storage.term(applied), ConfState(self.cfg.voter_ids))
        self.background.start_soon(self._write_snapshot, meta, self.sm.snapshot_view())

    async def _write_snapshot(self, meta: SnapshotMeta, encode: Any) -> None:
        try:
            data = await trio.to_thread.run_sync(encode)
            snap = Snapshot(meta, data)
            await trio.to_thread.run_sync(self.snapshots.save, self.partition, snap)
        except Exception as e:
            self.log.error("snapshot_failed", index=meta.index, error=repr(e))
        else:
            self._saved_snapshot = snap
        finally:
            self._snapshot_running = False
        await self.inbox.send(SnapshotWritten(self.partition))

    async def _finish_snapshot(self, snap: Snapshot) -> None:
        p = self.partition
        index = snap.meta.index
        if index <= self._snapshot_index:
            return  # a leader's snapshot was installed meanwhile
        self.wal.append_snapshot_marker(p, snap.meta)
        await self.committer.sync()
        self.wal.release(p, self.snapshots.safe_release_index(p))
        self.storage.create_snapshot(index, snap.meta.conf_state, snap.data)
        # Keep some entries in memory so a follower slightly behind catches
        # up from the log instead of needing the whole snapshot.
        keep = min(self.cfg.raft.snapshot_entries // 2, 5000)
        compact_to = index - keep
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        self._snapshot_index = index
        self.log.info("took_snapshot", index=index, term=snap.meta.term, bytes=len(snap.data))
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        for w in waiters:
            w.finish(result=index)

    def fail_all(self, err: PrkdbError) -> None:
        """Fail every waiting client (shutdown)."""
        for p in self._by_index.values():
            p.finish(error=err)
        for p in self._proposals:
            p.finish(error=err)
        for w in self._read_batch:
            w.finish(error=err)
        for reads in self._reads.values():
            for w in reads:
                w.finish(error=err)
        for rw in self._read_waits:
            for w in rw.pending:
                w.finish(error=err)
        for _, _, p in self._deadlines:
            p.finish(error=err)
        for w in self._snapshot_waiters:
            w.finish(error=err)
