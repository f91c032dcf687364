"""A deterministic lease simulator: the daemon's lease code on a faulty Raft cluster.

Each node is a RawNode with the real `KVStateMachine` (partition `PARTITION`)
and the real `PartitionLeases` (prkdb/server/leases.py), fed exactly where
`PartitionDriver` feeds it: `observe` after a Ready with soft or hard state,
`granted` per applied grant result while leading, `expire` on each tick (its
revokes proposed at once) and `keep_alive` once the keep-alive's ReadIndex
round is confirmed and its index applied (the client service's
`_leader_read`). Time is virtual: `LeaseNet.now_ms` moves `TICK_MS` per
round of ticks and stands still while messages are delivered, and every
node reads the same clock.

Each `Client` lives on one side of the network (`reach`): it grants a lease,
attaches keys to it, sends keep-alives to a node that says it leads (the
ReadIndex round is the node's business) and stops at a random time. The
`LeaseOracle` watches every committed entry and every keep-alive answer:
  safety   an expiry (LeaseRevoke expired=True) never commits before
           r + TTL, r = the request time of any keep-alive answered with a
           positive TTL, or the time the lease's grant was proposed;
  liveness once the network is healed (time H) and the clients stopped,
           every lease and its keys are gone by
           max(max(R, E) + TTL, H + heartbeat) + tick (+ one retry interval
           if a revoke proposal of it was dropped), R = the last time a
           leader set the lease's deadline (a grant it applied, a keep-alive
           it answered), E = when the leader that committed the revoke took
           office. With E <= H + 2 x election timeout + heartbeat (the
           healed cluster's first election succeeds) that is the issue's
           bound, max(R, H) + TTL + `LIVENESS_SLACK_MS`; `LeaseStats`
           reports how close each schedule came.
See prkdb/server/leases.py for why these bounds hold. The Raft safety
checker of tests/raft/network.py runs underneath as well.

One schedule = one seed: `run_lease_schedule(seed, ...)` replays a failure
exactly (the error names the call and the last events).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass, field

from prkdb.raft import ConfState, Entry, ProposalDropped, RaftConfig, RawNode, Ready, Role
from prkdb.server.leases import PartitionLeases
from prkdb.state import (
    LEASE_PARTITION_BITS,
    KVStateMachine,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    decode_command,
    encode_command,
)
from tests.raft.network import Network, SafetyViolation, SimNode

PARTITION = 3  # the partition the simulated replicas serve (lease ids carry it)
TICK_MS = 50  # the daemon's default raft.tick_ms
ELECTION_TICKS = 10  # the daemon's default raft.election_ticks
HEARTBEAT_TICKS = 2  # the daemon's default raft.heartbeat_ticks
ELECTION_MS = ELECTION_TICKS * TICK_MS
HEARTBEAT_MS = HEARTBEAT_TICKS * TICK_MS
# Liveness as the issue states it: after max(R, H) + TTL, an election (a
# randomized timeout is below 2 x election timeout), one heartbeat interval
# (it may reveal a higher term once after the heal, deposing the leader)
# and one tick (the expiry check's granularity). prkdb/server/leases.py
# gives the argument; `LeaseOracle.check_liveness` checks the exact bound.
LIVENESS_SLACK_MS = 2 * ELECTION_MS + HEARTBEAT_MS + TICK_MS


class LeaseViolation(AssertionError):
    pass


@dataclass(slots=True)
class KeepAlive:
    """A client's keep-alive at a node, waiting for its ReadIndex round."""

    lease_id: int
    requested_ms: int


def lease_id_of(index: int) -> int:
    return index << LEASE_PARTITION_BITS | PARTITION


@dataclass(eq=False)
class LeaseNode(SimNode):
    """`SimNode` with the KV state machine and the daemon's lease glue."""

    sm: KVStateMachine = field(init=False)
    leases: PartitionLeases = field(init=False)
    keep_alives: dict[bytes, KeepAlive] = field(init=False)  # ReadIndex ctx -> request
    confirmed: list[tuple[int, KeepAlive]] = field(init=False)  # (read index, request)

    @property
    def lnet(self) -> LeaseNet:
        assert isinstance(self.net, LeaseNet)
        return self.net

    def _boot(self) -> None:
        # A process starts from its snapshot and log: no deadline survives it.
        self.sm = KVStateMachine(partition=PARTITION)
        self.chain = b""
        self.applied_index = 0
        snap = self.storage.snapshot()
        if not snap.is_empty():
            chain, _, state = snap.data.partition(b":")
            self.sm.restore(state)
            self.chain = bytes.fromhex(chain.decode())
            self.applied_index = snap.meta.index
        self.applied_log = []
        self.leases = PartitionLeases(retry_s=ELECTION_MS / 1000)
        self.keep_alives = {}
        self.confirmed = []
        rng = random.Random(self.net.rng.getrandbits(32))
        cfg = RaftConfig(id=self.id, peers=self.voters, rng=rng, **self.config_kw)
        cfg.applied = self.applied_index
        self.raw = RawNode(cfg, self.storage)
        self._last_role = self.raw.core.role
        self._last_term = self.raw.core.term

    def lead_term(self) -> int:
        raw = self.raw
        return raw.term if raw.role == Role.LEADER else 0

    # -- the driver loop (PartitionDriver's order) ------------------------------------
    def process(self, crash_mid_ready: bool = False) -> None:
        self.lnet.oracle.note_commits(self)
        super().process(crash_mid_ready)
        if self.alive:
            self.lnet.oracle.note_commits(self)

    def _apply(self, rd: Ready) -> None:
        net = self.lnet
        net.oracle.note_commits(self)  # (a persist may have advanced the commit)
        now = net.now
        if rd.soft_state is not None or rd.hard_state is not None:
            was = self.leases.term
            self.leases.observe(self.lead_term(), self.sm, now)
            if self.leases.term != was and self.leases.term:
                net.oracle.took_office(self.leases.term, net.now_ms)
            if self.raw.role != Role.LEADER:
                self.keep_alives.clear()  # never confirmed now: the driver fails them
        if rd.snapshot is not None:
            chain, _, state = rd.snapshot.data.partition(b":")
            self.sm.restore(state)
            self.chain = bytes.fromhex(chain.decode())
            self.applied_index = rd.snapshot.meta.index
        sm, leases = self.sm, self.leases
        leading = leases.leading
        for e in rd.committed_entries:
            if e.index != self.applied_index + 1:
                raise SafetyViolation(
                    f"node {self.id} applied {e.index} after {self.applied_index}")
            result = sm.apply(e.index, e.data) if e.data else None
            if leading and result is not None and result.lease_id:
                leases.granted(result.lease_id, sm, now)
                if result.lease_id in leases.keeper:
                    net.oracle.renewed(result.lease_id, net.now_ms)
            self.chain = hashlib.blake2b(self.chain + e.data, digest_size=8).digest()
            self.applied_index = e.index
            self.net.checker.on_apply(self, e.index, e.term, e.data, self.chain)
        for rs in rd.read_states:
            ka = self.keep_alives.pop(rs.context, None)
            if ka is not None:
                self.confirmed.append((rs.index, ka))
        if self.confirmed:
            waiting = []
            for index, ka in self.confirmed:
                if index <= self.applied_index:
                    self.answer_keep_alive(ka)
                else:
                    waiting.append((index, ka))
            self.confirmed = waiting

    def maybe_compact(self, threshold: int) -> None:
        first = self.storage.first_index()
        if self.applied_index - first + 1 < threshold:
            return
        data = self.chain.hex().encode() + b":" + self.sm.snapshot()
        self.storage.create_snapshot(self.applied_index, ConfState(self.voters), data)
        self.storage.compact(self.applied_index)

    # -- what the daemon does on a tick and for a keep-alive ------------------------------
    def expire_leases(self) -> None:
        """`PartitionDriver.tick`'s lease half: propose a revoke per lapsed lease."""
        for cmd in self.leases.expire(self.lnet.now, self.sm, self.lead_term()):
            try:
                self.raw.propose(encode_command(cmd))
            except ProposalDropped:  # (a transfer in progress): again after retry_s
                self.lnet.oracle.dropped.add(cmd.lease_id)

    def request_keep_alive(self, lease_id: int) -> bool:
        """The client service's keep-alive: leader only, then one ReadIndex round.

        Returns False when refused at once (not leader, or the round cannot start).
        """
        if self.raw.role != Role.LEADER:
            return False
        net = self.lnet
        ctx = b"ka%d" % net.next_ctx()
        try:
            self.raw.read_index(ctx)
        except ProposalDropped:
            return False
        self.keep_alives[ctx] = KeepAlive(lease_id, net.now_ms)
        self.process()
        return True

    def answer_keep_alive(self, ka: KeepAlive) -> None:
        """Once the round is confirmed and its index applied: `PartitionDriver.keep_alive`."""
        net = self.lnet
        out = self.leases.keep_alive([ka.lease_id], self.sm, net.now, self.lead_term())
        answer = None if out is None else out[0]
        if answer:
            net.oracle.renewed(ka.lease_id, net.now_ms)
        net.oracle.on_keep_alive(self.id, ka, answer, net.now_ms)
        for client in net.clients:
            client.on_answer(self.id, ka, answer)


@dataclass
class LeaseStats:
    seed: int
    nodes: int
    check_quorum: bool = True
    ttl_ms: int = 0
    events: int = 0
    grants: int = 0
    keep_alives_ok: int = 0
    keep_alives_refused: int = 0  # not leader at the answer, or lapsed (0)
    leader_changes_with_lease: int = 0  # a lease alive across a new leader's election
    expired: int = 0
    expired_during_faults: int = 0
    crashes: int = 0
    leader_isolations: int = 0
    max_liveness_ms: int = 0  # the largest gone - max(R, H) - TTL seen
    max_election_ms: int = 0  # the latest a leader that expired a lease took office after H
    trace: list[str] = field(default_factory=list)


class LeaseOracle:
    """What the cluster committed and answered about leases, checked as it happens."""

    def __init__(self, net: LeaseNet) -> None:
        self.net = net
        self.ttl_ms = net.ttl_ms
        self.checked = 0  # highest log index whose commit was checked
        self.grants_proposed: dict[tuple[int, int], int] = {}  # (term, index) -> ms
        self.granted_at: dict[int, int] = {}  # lease -> commit time, ms
        self.live_until: dict[int, int] = {}  # lease -> no expiry may commit before, ms
        self.why: dict[int, str] = {}  # lease -> what set live_until
        self.renewed_at: dict[int, int] = {}  # lease -> last deadline set by a leader, ms
        self.gone_at: dict[int, int] = {}  # lease -> when its revoke committed, ms
        self.keys: dict[int, set[bytes]] = {}  # lease -> keys committed attached to it
        self.terms: dict[int, int] = {}  # index -> term of the committed entry
        self.in_office: dict[int, int] = {}  # term -> when its leader began leading leases, ms
        # lease -> when the leader that committed its revoke took office, ms
        self.expired_by: dict[int, int] = {}
        self.dropped: set[int] = set()  # leases a revoke proposal of was dropped

    def lease_alive(self, lease_id: int) -> bool:
        return lease_id in self.granted_at and lease_id not in self.gone_at

    def note_commits(self, node: LeaseNode) -> None:
        """Check the entries `node` now knows committed (the first to know is the leader)."""
        if not node.alive:
            return
        log = node.raw.core.log
        committed = log.committed
        if committed <= self.checked:
            return
        lo = max(self.checked + 1, log.first_index())
        entries: list[Entry] = log.slice(lo, committed + 1, 1 << 62) if lo <= committed else []
        self.checked = committed
        # The first to know an entry is committed is the leader that commits it.
        raw = node.raw
        office = self.in_office.get(raw.term, -1) if raw.role == Role.LEADER else -1
        for e in entries:
            self.terms[e.index] = e.term
            if e.data:
                self._on_commit(e, office)

    def took_office(self, term: int, now: int) -> None:
        self.in_office[term] = now

    def _on_commit(self, e: Entry, office: int) -> None:
        now, ttl = self.net.now_ms, self.ttl_ms
        cmd, _, _ = decode_command(e.data)
        match cmd:
            case LeaseGrantCommand():
                lease_id = lease_id_of(e.index)
                self.granted_at[lease_id] = now
                self.keys[lease_id] = set()
                proposed = self.grants_proposed.get((e.term, e.index))
                if proposed is not None:
                    self.live_until[lease_id] = proposed + ttl
                    self.why[lease_id] = f"its grant was proposed at {proposed} ms"
                self.net.stats.grants += 1
                self.net.stats.trace.append(f"@{now}: lease {lease_id} granted")
            case PutCommand(key=key, lease=lease) if lease and self.lease_alive(lease):
                self.keys[lease].add(key)
            case LeaseRevokeCommand(lease_id=lease_id, expired=expired) if (
                self.lease_alive(lease_id)
            ):
                self.gone_at[lease_id] = now
                self.expired_by[lease_id] = office
                bound = self.live_until.get(lease_id, 0)
                if expired and now < bound:
                    raise LeaseViolation(
                        f"early expiry: lease {lease_id} expired (revoke at index {e.index}, "
                        f"term {e.term}) committed at {now} ms, before {bound} ms "
                        f"(TTL {ttl} ms after {self.why[lease_id]})"
                    )
                self.net.stats.expired += expired
                self.net.stats.trace.append(
                    f"@{now}: lease {lease_id} {'expired' if expired else 'revoked'} "
                    f"(no expiry before {bound} ms)")

    def on_keep_alive(self, node: int, ka: KeepAlive, answer: int | None, now: int) -> None:
        stats = self.net.stats
        if not answer:
            stats.keep_alives_refused += 1
            return
        stats.keep_alives_ok += 1
        lease_id, until = ka.lease_id, ka.requested_ms + self.ttl_ms
        gone = self.gone_at.get(lease_id)
        if gone is not None and gone < until:
            raise LeaseViolation(
                f"early expiry: node {node} renewed lease {lease_id} for a keep-alive "
                f"requested at {ka.requested_ms} ms (answered at {now} ms), but its "
                f"expiry committed at {gone} ms, before {until} ms"
            )
        if until > self.live_until.get(lease_id, 0):
            self.live_until[lease_id] = until
            self.why[lease_id] = (f"a keep-alive requested at {ka.requested_ms} ms, "
                                  f"answered by node {node} at {now} ms")

    def renewed(self, lease_id: int, now: int) -> None:
        self.renewed_at[lease_id] = max(now, self.renewed_at.get(lease_id, 0))

    def check_liveness(self, healed_ms: int) -> None:
        """Every lease alive at the heal is gone by its bound (module doc).

        Exact, from the rules: the leader that commits the revoke took office
        at E and holds a deadline <= max(R, E) + TTL; it proposes the revoke
        on its first tick after it, and it commits in that tick's message
        rounds; if it lapsed before the heal, the revoke commits once the
        leader's next heartbeat round gets through. One retry interval more if a
        revoke proposal of it was dropped (a leadership transfer was in
        progress). `max_liveness_ms` keeps the worst gone - max(R, H) - TTL,
        which stays below 2 x election timeout + a heartbeat + a tick when
        the healed cluster elects its leader within 2 x election timeout.
        """
        stats, ttl = self.net.stats, self.ttl_ms
        for lease_id, granted in sorted(self.granted_at.items()):
            gone = self.gone_at.get(lease_id)
            if gone is not None and gone <= healed_ms:
                continue
            r = max(granted, self.renewed_at.get(lease_id, 0))
            if gone is None:
                raise LeaseViolation(
                    f"liveness: lease {lease_id} (last renewed {r} ms, healed {healed_ms} ms) "
                    f"still alive at {self.net.now_ms} ms")
            office = self.expired_by[lease_id]
            retry = ELECTION_MS if lease_id in self.dropped else 0
            bound = max(max(r, office) + ttl, healed_ms + HEARTBEAT_MS) + TICK_MS + retry
            if office < 0 or gone > bound:
                raise LeaseViolation(
                    f"liveness: lease {lease_id} (last renewed {r} ms, healed {healed_ms} ms) "
                    f"gone at {gone} ms, after {bound} ms (TTL {ttl} ms; the leader that "
                    f"committed its revoke took office at {office} ms)")
            stats.max_liveness_ms = max(stats.max_liveness_ms, gone - max(r, healed_ms) - ttl)
            stats.max_election_ms = max(stats.max_election_ms, office - healed_ms)


class Client:
    """One lease owner on one side of the network (`reach`), until `stop_ms`.

    It grants a lease, attaches two keys to it, and sends a keep-alive every
    TTL/5 to TTL/2 to a node that says it leads (stale or not: it cannot
    tell), again elsewhere when no answer came within `REQUEST_TIMEOUT_MS`.
    A keep-alive answered 0 means the lease is gone: it grants another.
    One grant in ten, the client is killed as soon as it is granted.
    """

    REQUEST_TIMEOUT_MS = 250

    def __init__(self, net: LeaseNet, name: int, stop_ms: int) -> None:
        self.net = net
        self.name = name
        self.rng = net.rng
        self.stop_ms = stop_ms
        self.reach: set[int] = set(net.ids)
        self.lease = 0
        self.pending_grant: tuple[int, int, int] | None = None  # (term, index, proposed ms)
        self.next_keep_alive = 0  # ms
        self.awaiting = 0  # ms: a keep-alive sent then, no answer yet (0 = none)
        self.next_put = 0  # ms: when to attach a key again (until two are)
        self.seq = 0

    @property
    def stopped(self) -> bool:
        return self.net.now_ms >= self.stop_ms

    def reachable(self, node: int) -> bool:
        return node in self.reach and self.net.nodes[node].alive

    def _pick_leader(self) -> LeaseNode | None:
        nodes = self.net.lnodes
        cands = [i for i in sorted(self.reach)
                 if nodes[i].alive and nodes[i].raw.role == Role.LEADER]
        return nodes[self.rng.choice(cands)] if cands else None

    def _propose(self, node: LeaseNode, data: bytes) -> tuple[int, int] | None:
        try:
            term, index = node.raw.propose(data)
        except ProposalDropped:
            return None
        node.process()
        return term, index

    def step(self) -> None:
        """Once per tick: grant, attach keys, keep alive."""
        if self.stopped:
            return
        net, oracle = self.net, self.net.oracle
        now = net.now_ms
        if self.pending_grant is not None:
            term, index, at = self.pending_grant
            got = oracle.terms.get(index)
            if got == term:
                self.lease, self.pending_grant = lease_id_of(index), None
                self.next_keep_alive, self.awaiting = now, 0
                if self.rng.random() < 0.1:
                    self.stop_ms = now  # killed right after its grant: never a keep-alive
                    return
            elif got is not None or now - at > 2 * ELECTION_MS:
                self.pending_grant = None  # lost (or unknown: grant another, like a retry)
        if not self.lease:
            if self.pending_grant is None and (node := self._pick_leader()) is not None:
                data = encode_command(LeaseGrantCommand(net.ttl_ms))
                if (got_at := self._propose(node, data)) is not None:
                    self.pending_grant = (*got_at, now)
                    oracle.grants_proposed[got_at] = now
            return
        if (len(oracle.keys.get(self.lease, ())) < 2 and oracle.lease_alive(self.lease)
                and now >= self.next_put and (node := self._pick_leader()) is not None):
            self.seq += 1
            key = b"{c%d}k%d" % (self.name, self.seq)
            self._propose(node, encode_command(PutCommand(key, b"v", self.lease)))
            self.next_put = now + self.REQUEST_TIMEOUT_MS
        if self.awaiting and now - self.awaiting >= self.REQUEST_TIMEOUT_MS:
            self.awaiting = 0  # timed out: try again, wherever a leader is
            self.next_keep_alive = now
        if not self.awaiting and now >= self.next_keep_alive:
            node = self._pick_leader()
            if node is not None:
                self.awaiting = now
                if not node.request_keep_alive(self.lease):
                    self.awaiting = 0

    def on_answer(self, node: int, ka: KeepAlive, answer: int | None) -> None:
        if self.stopped or not self.reachable(node) or ka.lease_id != self.lease:
            return  # the answer is lost, or the client moved on
        now = self.net.now_ms
        self.awaiting = 0
        if answer is None:
            self.next_keep_alive = now  # NOT_LEADER: ask again
        elif answer == 0:
            self.lease = 0  # gone (its revoke is on the way): grant another
        else:
            ttl_ticks = self.net.ttl_ms // TICK_MS
            self.next_keep_alive = now + TICK_MS * self.rng.randint(ttl_ticks // 5, ttl_ticks // 2)


class LeaseNet(Network):
    """The simulated network with a clock, the oracle and the clients."""

    node_class = LeaseNode

    def __init__(self, n: int, *, seed: int, ttl_ms: int, check_quorum: bool,
                 **config_kw: object) -> None:
        # (set before the nodes boot: they read the clock and the oracle)
        self.now_ms = 0
        self.ttl_ms = ttl_ms
        self.stats = LeaseStats(seed, n, check_quorum=check_quorum, ttl_ms=ttl_ms)
        self.oracle = LeaseOracle(self)
        self.clients: list[Client] = []
        self._ctx = 0
        super().__init__(n, seed=seed, pre_vote=True, check_quorum=check_quorum,
                         election_ticks=ELECTION_TICKS, heartbeat_ticks=HEARTBEAT_TICKS,
                         **config_kw)

    @property
    def now(self) -> float:
        """The clock as the lease code takes it: seconds."""
        return self.now_ms / 1000

    @property
    def lnodes(self) -> dict[int, LeaseNode]:
        return self.nodes  # type: ignore[return-value]

    def next_ctx(self) -> int:
        self._ctx += 1
        return self._ctx

    def tick(self, node: int) -> None:
        n = self.lnodes[node]
        if n.alive:
            n.raw.tick()
            n.expire_leases()
            n.process()

    def tick_all(self, ticks: int = 1, *, deliver: bool = True) -> None:
        """Time moves `TICK_MS`; every node ticks; the clients act."""
        for _ in range(ticks):
            self.now_ms += TICK_MS
            for i in self.ids:
                self.tick(i)
            for client in self.clients:
                client.step()
            if deliver:
                self.deliver()


def run_lease_schedule(
    seed: int,
    *,
    nodes: int = 5,
    events: int = 500,
    clients: int = 2,
) -> LeaseStats:
    """One seeded schedule: faults while clients hold leases, then heal and wait.

    Raises AssertionError (LeaseViolation or the Raft checker's
    SafetyViolation) with the seed, the call that replays it and the last
    events.
    """
    rng = random.Random(seed)
    ttl_ms = rng.choice([750, 1000, 1500])
    check_quorum = rng.random() < 0.5  # (raft.check_quorum; the daemon's default is on)
    net = LeaseNet(nodes, seed=seed, ttl_ms=ttl_ms, check_quorum=check_quorum,
                   max_inflight_msgs=4, max_size_per_msg=256)
    stats = net.stats
    net.drop_rate = rng.choice([0.0, 0.02, 0.1])
    net.dup_rate = rng.choice([0.0, 0.02])
    trace = stats.trace
    try:
        net.wait_for_leader(20 * ELECTION_TICKS)
        # Each client lives for a random part of the faulty phase (~1 tick per 3 events).
        for name in range(clients):
            stop_ms = net.now_ms + TICK_MS * rng.randint(events // 12, events // 3)
            net.clients.append(Client(net, name, stop_ms))
            trace.append(f"client {name} stops at {stop_ms} ms")
        trace.append(f"ttl {ttl_ms} ms, check_quorum {check_quorum}")
        _faults(net, rng, events)
        # Heal: every node up, every message delivered; the clients have stopped.
        for client in net.clients:
            client.stop_ms = min(client.stop_ms, net.now_ms)
            client.reach = set(net.ids)
        net.heal()
        net.drop_rate = net.dup_rate = 0.0
        for i in net.ids:
            if not net.nodes[i].alive:
                net.restart(i)
        net.deliver()
        healed = net.now_ms
        trace.append(f"{healed} ms: healed")
        oracle = net.oracle
        # Until every lease is gone, and a while longer (nothing may come back;
        # a grant proposed before the heal may still commit within the slack).
        limit = healed + 4 * ttl_ms + 2 * LIVENESS_SLACK_MS + 20 * ELECTION_MS
        quiet = 0
        while net.now_ms < limit and (quiet < 2 * ELECTION_TICKS
                                      or net.now_ms < healed + LIVENESS_SLACK_MS):
            net.tick_all(1)
            alive = any(oracle.lease_alive(lid) for lid in oracle.granted_at)
            quiet = 0 if alive else quiet + 1
        oracle.check_liveness(healed)
        _check_converged(net)
    except AssertionError as e:
        tail = "\n  ".join(trace[-30:])
        raise AssertionError(
            f"seed {seed} failed: {e}\nreplay: run_lease_schedule({seed}, nodes={nodes}, "
            f"events={events}, clients={clients})\nlast events:\n  {tail}"
        ) from e
    return stats


def _check_converged(net: LeaseNet) -> None:
    """Every replica holds the same state: no lease, no key of one."""
    net.tick_all(3 * ELECTION_TICKS)
    nodes = net.lnodes
    first = nodes[net.ids[0]]
    for i in net.ids:
        sm = nodes[i].sm
        if sm.leases():
            raise LeaseViolation(f"node {i} still has leases {sm.leases()}")
        leased = [k for k, rec in sm.items() if rec[4]]
        if leased:
            raise LeaseViolation(f"node {i} still has leased keys {leased[:5]}")
        if nodes[i].applied_index != first.applied_index or sm != first.sm:
            raise LeaseViolation(f"node {i} did not converge with node {first.id}")


def _faults(net: LeaseNet, rng: random.Random, events: int) -> None:
    """The faulty phase: ticks and deliveries, and now and then a fault.

    A partition (or the leader cut off with clients on its side) lasts 5 to
    100 ticks, a crashed node stays down for a while; `storm` scales how
    often faults come, per schedule. Faults are rare next to ticks (an
    election takes 10-20 ticks, a TTL 15-30) so that leaders get elected and
    leases granted and kept alive between them.
    """
    stats, trace = net.stats, net.stats.trace
    nodes = net.lnodes
    n = len(net.ids)
    max_down = (n - 1) // 2
    storm = rng.choice([0.5, 1.0, 2.0])
    heal_at = 0  # ms; 0 = no partition now
    leader_terms: set[int] = set()
    for step in range(events):
        at = f"{step} @{net.now_ms}"
        if heal_at and net.now_ms >= heal_at:
            net.heal()
            heal_at = 0
            for client in net.clients:
                client.reach = set(net.ids)
            trace.append(f"{at}: heal")
        r = rng.random()
        alive = [i for i in net.ids if nodes[i].alive]
        if r < 0.35:
            net.tick_all(1, deliver=False)
        elif r < 0.84:
            net.deliver_random(rng.randint(1, 30))
        elif r < 0.86:
            lead = net.leader()
            if lead:
                with contextlib.suppress(ProposalDropped):
                    net.propose(lead, encode_command(PutCommand(b"other%d" % step, b"x")))
        elif (r := (r - 0.86) / storm) < 0.008:
            if heal_at:
                continue
            heal_at = net.now_ms + TICK_MS * rng.randint(5, 100)
            lead = net.leader()
            if lead and rng.random() < 0.5:
                # The leader cut off from the others, most clients on its side.
                net.isolate(lead)
                for client in net.clients:
                    client.reach = {lead} if rng.random() < 0.7 else set(net.ids) - {lead}
                stats.leader_isolations += 1
                trace.append(f"{at}: leader {lead} isolated until {heal_at} ms")
            else:
                a = rng.sample(net.ids, rng.randint(1, n // 2))
                b = [i for i in net.ids if i not in a]
                net.partition(a, b)
                for client in net.clients:
                    client.reach = set(a if rng.random() < 0.5 else b)
                trace.append(f"{at}: partition {sorted(a)} | {b} until {heal_at} ms")
        elif r < 0.014:
            if n - len(alive) < max_down and alive:
                victim = rng.choice(alive)
                net.crash(victim)
                stats.crashes += 1
                trace.append(f"{at}: crash {victim}")
                if rng.random() < 0.7:  # its connections close: the others see it die
                    for i in alive:
                        if i != victim:
                            nodes[i].raw.report_peer_down(victim)
                            nodes[i].process()
        elif r < 0.024:
            down = [i for i in net.ids if not nodes[i].alive]
            if down:
                victim = rng.choice(down)
                net.restart(victim)
                trace.append(f"{at}: restart {victim}")
        elif r < 0.030:
            lead = net.leader()
            if lead:
                to = rng.choice([i for i in net.ids if i != lead])
                nodes[lead].raw.transfer_leadership(to)
                nodes[lead].process()
                trace.append(f"{at}: transfer {lead}->{to}")
        elif r < 0.040:
            for i in alive:
                nodes[i].maybe_compact(20)
        if len(net.queue) > 500:
            net.queue = net.queue[-500:]  # a bounded network buffer drops the oldest
        for i in net.ids:
            node = nodes[i]
            if node.alive and node.raw.role == Role.LEADER and node.raw.term not in leader_terms:
                leader_terms.add(node.raw.term)
                trace.append(f"{at}: node {i} leads term {node.raw.term}")
                oracle = net.oracle
                stats.leader_changes_with_lease += sum(
                    1 for c in net.clients if c.lease and oracle.lease_alive(c.lease))
        stats.events += 1
    stats.expired_during_faults = stats.expired
