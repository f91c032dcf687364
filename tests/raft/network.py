"""A deterministic in-process network of Raft cores, with faults and safety checks.

Each `SimNode` plays the daemon's role for one core: it takes Readies,
"persists" them into a `MemoryStorage` (which is exactly what survives a
crash), delivers messages through the `Network`, applies committed entries to
a tiny state machine (a hash chain over the applied data) and serves reads.

`SafetyChecker` watches every persisted entry, every applied entry, every
role change and every served read, and raises `SafetyViolation` the moment
one of the Raft safety properties breaks:
- election safety: at most one leader per term;
- log matching: two entries with the same (index, term) have the same data
  and the same predecessor term (inductively: identical prefixes);
- leader completeness: a new leader holds every entry applied anywhere;
- state machine safety: no two nodes apply different entries at one index;
- linearizable reads: a read's index is >= every commit index that existed
  anywhere when the read was issued.
Everything random comes from one `random.Random(seed)`, so a seed replays.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prkdb.raft import (
    ConfState,
    MemoryStorage,
    Message,
    MsgType,
    ProposalDropped,
    RaftConfig,
    RawNode,
    Ready,
    Role,
)
from prkdb.raft.describe import describe_message


class SafetyViolation(AssertionError):
    pass


@dataclass
class ServedRead:
    node: int
    context: bytes
    index: int
    issued_min_index: int


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.persisted: dict[tuple[int, int], tuple[bytes, int]] = {}  # (i,t) -> (data, prev term)
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.chain: dict[int, bytes] = {}  # index -> state machine hash after applying it
        self.max_commit = 0
        self.max_applied = 0
        self.reads: list[ServedRead] = []

    def on_leader(self, node: SimNode) -> None:
        core = node.raw.core
        term = core.term
        prev = self.leaders.get(term)
        if prev is not None and prev != node.id:
            raise SafetyViolation(f"election safety: term {term} has leaders {prev} and {node.id}")
        self.leaders[term] = node.id
        # Leader completeness: every entry applied anywhere is in the new leader's log.
        first = core.log.first_index()
        for i in range(first, self.max_applied + 1):
            t = core.log.term(i)
            if t != self.applied[i][0]:
                raise SafetyViolation(
                    f"leader completeness: leader {node.id} (term {term}) has term {t} at "
                    f"{i}, but {self.applied[i][0]} was applied"
                )

    def on_persist(self, node: SimNode, storage: MemoryStorage, entries: Iterable) -> None:
        for e in entries:
            prev_term = storage.term(e.index - 1) if e.index - 1 >= storage.ents[0].index else -1
            key = (e.index, e.term)
            seen = self.persisted.get(key)
            if seen is None:
                self.persisted[key] = (e.data, prev_term)
            elif seen[0] != e.data or (prev_term != -1 and seen[1] != -1 and seen[1] != prev_term):
                raise SafetyViolation(
                    f"log matching: node {node.id} has {e.index}/{e.term} = {e.data!r} after "
                    f"term {prev_term}, another node {seen[0]!r} after term {seen[1]}"
                )

    def on_apply(self, node: SimNode, index: int, term: int, data: bytes, chain: bytes) -> None:
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = (term, data)
            self.chain[index] = chain
            self.max_applied = max(self.max_applied, index)
        elif seen != (term, data) or self.chain[index] != chain:
            raise SafetyViolation(
                f"state machine safety: node {node.id} applied {term}/{index}={data!r}, "
                f"another node applied {seen[0]}/{index}={seen[1]!r}"
            )

    def on_commit(self, commit: int) -> None:
        self.max_commit = max(self.max_commit, commit)

    def on_read(self, read: ServedRead) -> None:
        if read.index < read.issued_min_index:
            raise SafetyViolation(
                f"linearizable read: node {read.node} served read {read.context!r} at index "
                f"{read.index}, but {read.issued_min_index} was committed when it was issued"
            )
        self.reads.append(read)


@dataclass
class SimNode:
    id: int
    voters: tuple[int, ...]
    net: Network
    config_kw: dict
    storage: MemoryStorage = field(init=False)
    raw: RawNode = field(init=False)
    alive: bool = True
    applied_index: int = 0
    chain: bytes = b""
    applied_log: list[tuple[int, bytes]] = field(default_factory=list)  # (index, data)
    read_waiting: dict[bytes, int] = field(default_factory=dict)  # ctx -> min index at issue
    served: list[ServedRead] = field(default_factory=list)
    pending_serve: list[ServedRead] = field(default_factory=list)  # confirmed, awaiting apply
    restarts: int = 0

    def __post_init__(self) -> None:
        self.storage = MemoryStorage(self.voters)
        self._boot()

    def _boot(self) -> None:
        snap = self.storage.snapshot()
        if not snap.is_empty():
            idx, _, chain = snap.data.partition(b":")
            self.applied_index, self.chain = int(idx), bytes.fromhex(chain.decode())
        else:
            self.applied_index, self.chain = 0, b""
        self.applied_log = []
        rng = random.Random(self.net.rng.getrandbits(32))
        cfg = RaftConfig(id=self.id, peers=self.voters, rng=rng, **self.config_kw)
        cfg.applied = self.applied_index
        self.raw = RawNode(cfg, self.storage)
        self._last_role = self.raw.core.role
        self._last_term = self.raw.core.term

    # -- the driver loop -----------------------------------------------------
    def process(self, crash_mid_ready: bool = False) -> None:
        """Drain all Readies, exactly as the daemon's partition loop does."""
        while self.alive and self.raw.has_ready():
            rd = self.raw.ready()
            self.net.send_all(rd.messages)  # may leave before persisting
            if crash_mid_ready and (rd.entries or rd.hard_state):
                self.net.crash(self.id)
                return
            self._persist(rd)
            self.net.send_all(rd.messages_after_persist)
            self._apply(rd)
            self.raw.advance(rd)
            self._after_advance()

    def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
            self.net.checker.on_persist(self, self.storage, rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)

    def _apply(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            idx, _, chain = rd.snapshot.data.partition(b":")
            self.applied_index, self.chain = int(idx), bytes.fromhex(chain.decode())
        for e in rd.committed_entries:
            if e.index != self.applied_index + 1:
                raise SafetyViolation(
                    f"node {self.id} applied {e.index} after {self.applied_index}"
                )
            self.chain = hashlib.blake2b(self.chain + e.data, digest_size=8).digest()
            self.applied_index = e.index
            self.applied_log.append((e.index, e.data))
            self.net.checker.on_apply(self, e.index, e.term, e.data, self.chain)
        for rs in rd.read_states:
            issued = self.read_waiting.pop(rs.context, None)
            if issued is None:
                continue
            # The daemon serves the read once applied >= rs.index; entries are
            # applied above, so in the sim the wait is over when we get here
            # unless the read index is still ahead of our applied index.
            read = ServedRead(self.id, rs.context, rs.index, issued)
            self.pending_serve.append(read)
        still = []
        for read in self.pending_serve:
            if self.applied_index >= read.index:
                self.net.checker.on_read(read)
                self.served.append(read)
            else:
                still.append(read)
        self.pending_serve = still

    def _after_advance(self) -> None:
        core = self.raw.core
        self.net.checker.on_commit(core.log.committed)
        if self.net.advance_hook is not None:
            self.net.advance_hook(self)
        new_term = core.term != self._last_term
        if core.role == Role.LEADER and (self._last_role != Role.LEADER or new_term):
            self.net.checker.on_leader(self)
        self._last_role, self._last_term = core.role, core.term

    def maybe_compact(self, threshold: int) -> None:
        """Take a snapshot of the state machine when the log grew past `threshold`."""
        first = self.storage.first_index()
        if self.applied_index - first + 1 < threshold:
            return
        data = f"{self.applied_index}:".encode() + self.chain.hex().encode()
        self.storage.create_snapshot(self.applied_index, ConfState(self.voters), data)
        self.storage.compact(self.applied_index)

    def crash(self) -> None:
        self.alive = False
        self.read_waiting.clear()
        self.pending_serve = []

    def restart(self) -> None:
        self.alive = True
        self.restarts += 1
        self._boot()
        self.process()


class Network:
    """N cores over a simulated network. Messages queue until `deliver` runs."""

    #: The node type; a subclass may bring its own state machine (tests/sim/lease_sim.py).
    node_class: type[SimNode] = SimNode

    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        pre_vote: bool = True,
        check_quorum: bool = True,
        election_ticks: int = 10,
        heartbeat_ticks: int = 2,
        **config_kw: object,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.checker = SafetyChecker()
        self.ids = tuple(range(1, n + 1))
        kw = dict(
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            **config_kw,
        )
        self.election_ticks = election_ticks
        self.queue: list[Message] = []
        self.cut_pairs: set[tuple[int, int]] = set()
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.msg_hook: Callable[[Message], bool] | None = None  # False drops the message
        # Called after every Ready a node advances (the driver's post-persist step).
        self.advance_hook: Callable[[SimNode], None] | None = None
        self.sent: Counter[MsgType] = Counter()
        self.trace: list[str] = []
        self.trace_enabled = False
        self.nodes = {i: self.node_class(i, self.ids, self, kw) for i in self.ids}
        self._read_seq = 0

    # -- faults ---------------------------------------------------------------
    def cut(self, a: int, b: int) -> None:
        self.cut_pairs |= {(a, b), (b, a)}

    def isolate(self, node: int) -> None:
        for other in self.ids:
            if other != node:
                self.cut(node, other)

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for i, ga in enumerate(sets):
            for gb in sets[i + 1 :]:
                for a in ga:
                    for b in gb:
                        self.cut(a, b)

    def heal(self) -> None:
        self.cut_pairs.clear()

    def crash(self, node: int) -> None:
        self.nodes[node].crash()
        self.queue = [m for m in self.queue if m.to != node]

    def restart(self, node: int) -> None:
        self.nodes[node].restart()

    # -- messages -------------------------------------------------------------
    def send_all(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.sent[m.type] += 1
            if self.trace_enabled:
                self.trace.append(describe_message(m))
            self.queue.append(m)
            if self.dup_rate and self.rng.random() < self.dup_rate:
                self.queue.append(m)

    def _deliverable(self, m: Message) -> bool:
        if (m.from_, m.to) in self.cut_pairs:
            return False
        if not self.nodes[m.to].alive:
            return False
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return False
        return not (self.msg_hook is not None and not self.msg_hook(m))

    def deliver_one(self, m: Message) -> None:
        if not self._deliverable(m):
            return
        node = self.nodes[m.to]
        node.raw.step(m)
        node.process()

    def deliver(self, max_rounds: int = 10_000) -> None:
        """Deliver queued messages (and the ones they cause) until the network is quiet."""
        for _ in range(max_rounds):
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                self.deliver_one(m)
        raise AssertionError("network did not quiesce")

    def deliver_random(self, max_count: int) -> None:
        """Deliver up to `max_count` random queued messages (reordering them)."""
        for _ in range(min(max_count, len(self.queue))):
            m = self.queue.pop(self.rng.randrange(len(self.queue)))
            self.deliver_one(m)

    # -- inputs ---------------------------------------------------------------
    def tick(self, node: int) -> None:
        n = self.nodes[node]
        if n.alive:
            n.raw.tick()
            n.process()

    def tick_all(self, ticks: int = 1, *, deliver: bool = True) -> None:
        for _ in range(ticks):
            for i in self.ids:
                self.tick(i)
            if deliver:
                self.deliver()

    def campaign(self, node: int) -> None:
        self.nodes[node].raw.campaign()
        self.nodes[node].process()
        self.deliver()

    def propose(self, node: int, data: bytes) -> tuple[int, int]:
        n = self.nodes[node]
        result = n.raw.propose(data)
        n.process()
        return result

    def read(self, node: int) -> bytes | None:
        """Issue a ReadIndex read at `node`; returns its context (None if dropped)."""
        n = self.nodes[node]
        self._read_seq += 1
        ctx = f"r{node}-{self._read_seq}".encode()
        try:
            n.raw.read_index(ctx)
        except ProposalDropped:
            return None
        n.read_waiting[ctx] = self.checker.max_commit
        n.process()
        return ctx

    # -- queries --------------------------------------------------------------
    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.alive and n.raw.core.role == Role.LEADER]

    def leader(self) -> int:
        """The live leader of the highest term (0 if none)."""
        best, best_term = 0, -1
        for i in self.leaders():
            t = self.nodes[i].raw.core.term
            if t > best_term:
                best, best_term = i, t
        return best

    def wait_for_leader(self, max_ticks: int, among: Iterable[int] | None = None) -> int:
        """Tick until a leader is in `among` (default: any); returns ticks taken."""
        allowed = set(among) if among is not None else set(self.ids)
        for t in range(max_ticks + 1):
            lead = [i for i in self.leaders() if i in allowed]
            if lead and all(
                self.nodes[i].raw.core.lead == lead[0] for i in allowed if self.nodes[i].alive
            ):
                return t
            self.tick_all(1)
        raise AssertionError(f"no leader among {sorted(allowed)} after {max_ticks} ticks")

    def term(self, node: int) -> int:
        return self.nodes[node].raw.core.term

    def committed(self, node: int) -> int:
        return self.nodes[node].raw.core.log.committed

    def log_entries(self, node: int) -> list[tuple[int, int, bytes]]:
        log = self.nodes[node].raw.core.log
        ents = log.slice(log.first_index(), log.last_index() + 1, 1 << 62)
        return [(e.index, e.term, e.data) for e in ents]

    def applied_data(self, node: int) -> list[bytes]:
        return [d for _, d in self.nodes[node].applied_log if d]
