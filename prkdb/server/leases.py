"""A partition's lease deadlines: `LeaseKeeper` holds them, `PartitionLeases` decides.

Theory of operation
-------------------
Leases are replicated (a LeaseGrant entry creates one, a LeaseRevoke entry
deletes it with its keys), but their deadlines are not: only the partition
leader decides expiry, from its own clock. Both classes here are pure: no
clock, no Raft, no trio. Every call that needs the time takes `now`
(seconds: the daemon passes trio time, the lease simulator in
tests/sim/lease_sim.py its virtual clock), and TTLs are milliseconds. The
daemon's `PartitionDriver` and the simulator feed one `PartitionLeases` per
replica at the same four points, so both run this very code:

  after a Ready with soft or hard state    observe(lead_term, state, now)
  per applied grant (result.lease_id)      granted(lease_id, state, now)
  a keep-alive, once its ReadIndex round   keep_alive(ids, state, now, lead_term)
    confirmed leadership and the read
    index is applied
  each tick                                expire(now, state, lead_term) -> the
                                             LeaseRevokeCommands to propose

(`lead_term` = the Raft term this replica leads, 0 when it does not lead.)

The rules (etcd's):
  R1. A replica that learns it leads term t gives every lease of its applied
      state the deadline now + TTL; nothing from an earlier leadership, its
      own or another replica's, survives (`observe`; a follower keeps nothing).
  R2. A grant applied while leading: now + TTL (a replayed grant, or a lease
      known already, keeps its deadline).
  R3. A keep-alive answered while leading t: now + TTL, only once a ReadIndex
      round confirmed leadership after the request arrived and the read
      index is applied, and never for a lease that lapsed (its revoke is on
      its way: answered 0).
  R4. On a tick, each lease whose deadline passed gets one proposed
      `LeaseRevokeCommand(id, expired=True)`, again every `retry_s` (an
      election timeout) while it is still in the state.

Safety: no lease expires early, whatever the leader changes
---------------------------------------------------------------
Claim: if a keep-alive of lease L requested at time r was answered with a
positive TTL (or the LeaseGrant entry creating L was proposed at r), then no
LeaseRevoke(L, expired=True) is committed before r + TTL. Clocks run at the
same rate on every node (etcd assumes as much); `now` is the only time.

Let the revoke be proposed at time p by the leader of term tp, from a
deadline D it held (p >= D), and the keep-alive answered at time s >= r by
the leader of term tk.
  * tp == tk: a revoke proposed before s would have found the lease lapsed,
    and a lapsed lease is not renewed (R3: the answer would have been 0);
    so p >= s, and the answer at s set the deadline to s + TTL, which later
    renewals only move later: p >= s + TTL.
  * tp > tk: the ReadIndex round was acknowledged in term tk by a majority,
    each after the request arrived (the round's heartbeat leaves after it).
    tp's leader was elected by a majority too; a node in both acked term tk
    before it voted in term tp. So tp's election came after r, and by R1
    every deadline tp's leader holds is >= its election + TTL > r + TTL.
    This is why a deposed leader's keep-alive cannot shorten a lease: a
    keep-alive it could not confirm gets no answer, and one it did confirm
    happened before any successor's election, whose TTLs start later.
  * tp < tk: a leader serves a ReadIndex only once an entry (tk, j) of its
    own term is committed (thesis §6.4) and after applying up to the read
    index (>= j); the answer was positive, so the revoke was not among the
    entries applied, so it is not in tk's log (an entry of an older term in
    tk's log was there at its election, below j). An entry that conflicts
    with the committed (tk, j) (its own log differs at or before j) is never
    committed (log matching).
Commit comes after the proposal, so every committed expiry is >= r + TTL.
For a grant proposed at r: a leader's deadline for L starts at its election
(R1: L was applied there before, so proposed before) or at its apply (R2),
both after r. Only without a ReadIndex round (a keep-alive answered by a
leader already deposed) or with a deadline carried over a leader change
would this break; tests/sim/test_leases.py checks both mutants are caught.

Liveness: a lease nobody renews is expired
------------------------------------------
Once its owner stops, let R be the last time a leader set L's deadline (a
grant it applied, a keep-alive it answered), H the time from which every
node is up and every message gets through, and E the time the leader that
commits L's revoke began to lead. That leader's deadline is
D <= max(R, E) + TTL (R1-R3); it proposes the revoke on its first tick at or
after D (R4), and the revoke commits in that tick's message rounds, or, if
D came before H, once that leader's next heartbeat round gets through after
H. So L and its keys (deleted by that same entry) are gone by
max(max(R, E) + TTL, H + one heartbeat interval) + one tick, one retry
interval (`retry_s`, an election timeout) later if a proposal of the revoke
was dropped because a leadership transfer was in progress.
E is Raft's own liveness: with pre-vote and check-quorum (the defaults) the
healed cluster has its leader by H + 2 x election timeout (a randomized
election timeout is below 2 x `election_ticks`; a heartbeat may first
reveal a higher term once) unless that election fails (a split vote) and
another is needed. So the keys are gone within max(R, H) + TTL +
2 x election timeout + one heartbeat interval + one tick: the issue's
"TTL + an election". tests/sim/test_leases.py checks the exact bound on
every schedule and reports how close to the second each came.

`LeaseKeeper` internals
-----------------------
Per lease the keeper knows its TTL, its deadline (when it lapses: the last
of leadership start, grant and keep-alive, plus the TTL) and when it is due
(= the deadline while it lives; once lapsed, the time its revoke may be
proposed again). A heap of ``(due, id)`` finds the next due lease in O(1);
an entry whose time is not the lease's current due is stale (renewed or
forgotten since) and skipped when it surfaces, so a keep-alive is a dict
write and a heap push, and the driver's per-tick check is one comparison
with `next_due`. The heap is rebuilt when stale entries outnumber live ones
several times over (a client renewing far more often than its TTL needs).

Invariants (all while `leading`; a follower's keeper is empty):
  * deadline(id) >= t + ttl(id), t = the latest of: becoming leader, the
    grant applied here, a keep-alive here. `due` never returns a lease
    before its deadline (no early expiry).
  * A lapsed lease stays lapsed: `renew` refuses it (its revoke is on the
    way), and `due` returns it again at most once per `retry_s` until
    `forget` says it is gone.
  * Every entry of `_due` has a heap entry with the same time.

What the keeper does not know: whether a lease still exists.
`PartitionLeases` checks the state before it acts (a lease revoked by a
client lingers in the keeper until its deadline, then is forgotten without
a proposal).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

from prkdb.state import LeaseRevokeCommand

__all__ = ["MAX_EXPIRIES_PER_TICK", "LeaseKeeper", "LeaseState", "PartitionLeases"]

# Rebuild the heap when it holds more than this many entries per live lease.
_STALE_FACTOR = 4

# Most expiry revokes proposed per tick: the rest stay due for the next ticks
# (one batch of them must not crowd out, or be dropped with, client writes).
MAX_EXPIRIES_PER_TICK = 1000


class LeaseKeeper:
    """Deadlines of one partition's leases on its leader (module doc).

    Args:
        retry_s: how long a lapsed lease's revoke may be pending before `due`
            returns it again, in seconds (the driver passes its election
            timeout: a proposal not applied by then was most likely lost).
    """

    __slots__ = ("_deadline", "_due", "_heap", "_ttl_ms", "leading", "retry_s")

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        #: True between `lead` and `step_down`; while False every call is a no-op.
        self.leading = False
        self._ttl_ms: dict[int, int] = {}  # lease id -> its TTL, ms (as the state says)
        self._deadline: dict[int, float] = {}  # lease id -> when it lapses, seconds
        # lease id -> when `due` looks at it next: its deadline while it lives,
        # else the time its revoke may be proposed again.
        self._due: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._due

    # -- leadership --------------------------------------------------------------
    def lead(self, now: float, leases: Iterable[tuple[int, int]]) -> None:
        """This node became leader: every lease gets its full TTL from `now`.

        Args:
            now: the time leadership began here (as the driver learnt it).
            leases: ``(id, ttl_ms)`` of every lease in the applied state.
        """
        self.step_down()
        self.leading = True
        for lease_id, ttl_ms in leases:
            self._set(lease_id, ttl_ms, now)

    def step_down(self) -> None:
        """This node no longer leads: forget every deadline (the next leader decides)."""
        self.leading = False
        self._ttl_ms.clear()
        self._deadline.clear()
        self._due.clear()
        self._heap.clear()

    # -- what the state machine did ---------------------------------------------------
    def add(self, lease_id: int, ttl_ms: int, now: float) -> None:
        """A lease we did not know (a grant applied here): its TTL runs from `now`.

        A lease already known keeps its deadline (a grant is applied once; a
        session replay of it must not extend it).
        """
        if self.leading and lease_id not in self._due:
            self._set(lease_id, ttl_ms, now)

    def sync(self, leases: Iterable[tuple[int, int]], now: float) -> int:
        """`add` every lease of `leases` not known yet; returns how many were added.

        For leases granted by entries of earlier terms that were applied only
        after this node became leader.
        """
        n = 0
        for lease_id, ttl_ms in leases:
            if self.leading and lease_id not in self._due:
                self._set(lease_id, ttl_ms, now)
                n += 1
        return n

    def forget(self, lease_id: int) -> None:
        """The lease is gone from the state (revoked or expired)."""
        if self._due.pop(lease_id, None) is not None:
            del self._deadline[lease_id], self._ttl_ms[lease_id]

    # -- keep-alives and questions ------------------------------------------------------
    def renew(self, lease_id: int, ttl_ms: int, now: float) -> int:
        """A keep-alive confirmed by a ReadIndex round: deadline = now + TTL.

        Args:
            ttl_ms: the lease's TTL in the state machine (the caller checked
                that it exists; one not known here yet is added).

        Returns:
            The remaining time in ms (the TTL), or 0 when the lease has
            lapsed (its revoke is on its way; a keep-alive cannot save it) or
            this node does not lead.
        """
        if not self.leading:
            return 0
        deadline = self._deadline.get(lease_id)
        if deadline is not None and deadline <= now:
            return 0
        self._set(lease_id, ttl_ms, now)
        return ttl_ms

    def ttl_ms(self, lease_id: int) -> int | None:
        """The lease's TTL in ms, None if not known here."""
        return self._ttl_ms.get(lease_id)

    def remaining_ms(self, lease_id: int, now: float) -> int | None:
        """Milliseconds until the lease lapses (0 = lapsed), None if not known here."""
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return None
        # (the epsilon: 3.4 + 2.0 - 3.4 is 1.9999999999999996 in floats)
        return max(0, math.floor((deadline - now) * 1000 + 1e-6))

    @property
    def next_due(self) -> float:
        """The earliest time `due` may return something (inf: nothing known)."""
        return self._heap[0][0] if self._heap else math.inf

    def due(self, now: float, limit: int = 0) -> list[int]:
        """The leases that lapsed by `now` and whose revoke should be proposed now.

        Each is returned again after `retry_s` if `forget` was not called by
        then. Call it on ticks when ``next_due <= now``. At most `limit` ids
        (0 = all); the others stay due for the next call.
        """
        heap, due_at = self._heap, self._due
        out: list[int] = []
        retry = now + self.retry_s
        while heap and heap[0][0] <= now and (not limit or len(out) < limit):
            when, lease_id = heapq.heappop(heap)
            if due_at.get(lease_id) != when:
                continue  # renewed, retried or forgotten since this entry was pushed
            out.append(lease_id)
            due_at[lease_id] = retry
            heapq.heappush(heap, (retry, lease_id))
        return out

    # -- internals ----------------------------------------------------------------
    def _set(self, lease_id: int, ttl_ms: int, now: float) -> None:
        deadline = now + ttl_ms / 1000
        self._ttl_ms[lease_id] = ttl_ms
        self._deadline[lease_id] = deadline
        self._due[lease_id] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, lease_id))
        if len(heap) > _STALE_FACTOR * len(self._due) + 64:
            self._heap = [(when, i) for i, when in self._due.items()]
            heapq.heapify(self._heap)


class LeaseState(Protocol):
    """What `PartitionLeases` reads of the replicated state (`KVStateMachine` has it)."""

    def leases(self) -> list[tuple[int, int]]:
        """Every lease as ``(lease_id, ttl_ms)``."""
        ...

    def lease(self, lease_id: int) -> tuple[int, list[bytes]] | None:
        """``(ttl_ms, attached keys)`` of a lease, None if it does not exist."""
        ...

    def has_lease(self, lease_id: int) -> bool: ...


class PartitionLeases:
    """One replica's lease glue: when deadlines start, renew and run out (module doc).

    Every input says which term this replica leads (`lead_term`, 0 = none),
    so a question asked of a replica that leads another term than the one
    its deadlines were set for (or none) gets the not-leader answer instead
    of stale deadlines.

    Args:
        retry_s: seconds a lapsed lease's revoke may be pending before it is
            proposed again (the driver passes its election timeout: a
            proposal not applied by then was most likely lost).
        max_expiries: most revokes `expire` returns per call.
    """

    __slots__ = ("keeper", "max_expiries", "term")

    def __init__(self, retry_s: float, max_expiries: int = MAX_EXPIRIES_PER_TICK) -> None:
        self.keeper = LeaseKeeper(retry_s)
        self.max_expiries = max_expiries
        #: The term whose leadership set the keeper's deadlines (0 = not leading).
        #: Invariant: term > 0 exactly while ``keeper.leading``.
        self.term = 0

    @property
    def leading(self) -> bool:
        """Whether this replica holds deadlines (it leads `term`)."""
        return self.keeper.leading

    @property
    def next_due(self) -> float:
        """The earliest time `expire` may return something (inf: nothing to expire)."""
        return self.keeper.next_due

    def leads(self, lead_term: int) -> bool:
        """Whether the deadlines held are those of leading `lead_term` (0: never)."""
        return lead_term > 0 and lead_term == self.term

    # -- what Raft and the state machine did -----------------------------------------
    def observe(self, lead_term: int, state: LeaseState, now: float) -> None:
        """After a Ready's soft or hard state: start leading (R1), or stop.

        A replica that leads a term it held no deadlines for (just elected,
        or deposed and elected again between two Readies) restarts every TTL
        from `now`; one that no longer leads forgets them all.
        """
        if lead_term:
            if lead_term != self.term:
                self.keeper.lead(now, state.leases())
                self.term = lead_term
        elif self.term:
            self.step_down()

    def step_down(self) -> None:
        """Forget every deadline (no longer leading, or the core was rebuilt)."""
        self.keeper.step_down()
        self.term = 0

    def granted(self, lease_id: int, state: LeaseState, now: float) -> None:
        """A grant of `lease_id` was applied here (R2): while leading, its TTL starts now.

        Also for a session's replay of an old grant (`lease_id` of its cached
        result): a lease known already keeps its deadline, one gone since is
        not brought back.
        """
        keeper = self.keeper
        if not keeper.leading or lease_id in keeper:
            return
        rec = state.lease(lease_id)
        if rec is not None:
            keeper.add(lease_id, rec[0], now)

    # -- requests (once a ReadIndex round confirmed leadership) ---------------------------
    def keep_alive(self, lease_ids: Sequence[int], state: LeaseState, now: float,
                   lead_term: int) -> list[int] | None:
        """Restart each lease's TTL (R3): its remaining ms (the TTL), 0 = no such lease.

        Call only once a ReadIndex round begun after the request arrived has
        confirmed leadership and its index is applied (the safety argument
        in the module doc needs both). A lease that lapsed already is not
        renewed (0): its revoke is on its way.

        Returns:
            None when this replica does not lead `lead_term` with its
            deadlines (answer NOT_LEADER).
        """
        if not self.leads(lead_term):
            return None
        keeper = self.keeper
        out = []
        for lease_id in lease_ids:
            ttl = self._ttl_ms(lease_id, state)
            out.append(0 if ttl is None else keeper.renew(lease_id, ttl, now))
        return out

    def status(self, lease_id: int, state: LeaseState, now: float, with_keys: bool
               ) -> tuple[int, int, list[bytes]] | None:
        """``(ttl_ms, remaining_ms, keys)`` of a lease (keys only if asked), None if unknown.

        The caller checked `leads` (after a ReadIndex round).
        """
        if with_keys:
            rec = state.lease(lease_id)
            if rec is None:
                return None
            ttl, keys = rec
        else:
            found = self._ttl_ms(lease_id, state)
            if found is None:
                return None
            ttl, keys = found, []
        remaining = self.keeper.remaining_ms(lease_id, now)
        # Not known to the keeper (not leading, or a replayed grant's lease
        # forgotten meanwhile): its TTL starts no earlier than now.
        return ttl, ttl if remaining is None else remaining, keys

    def listing(self, state: LeaseState, now: float) -> list[tuple[int, int, int]]:
        """``(lease_id, ttl_ms, remaining_ms)`` of every lease of the state, by id."""
        remaining = self.keeper.remaining_ms
        out = []
        for lease_id, ttl in state.leases():
            r = remaining(lease_id, now)
            out.append((lease_id, ttl, ttl if r is None else r))
        return out

    # -- ticks ----------------------------------------------------------------------
    def expire(self, now: float, state: LeaseState, lead_term: int) -> list[LeaseRevokeCommand]:
        """The revokes to propose for the leases that lapsed by `now` (R4).

        At most `max_expiries`; the rest stay due for the next call. Nothing
        unless this replica leads `lead_term` with its deadlines (deposed in
        this pass: the next Ready's `observe` clears them). A lapsed lease
        gone from the state (revoked by its client, or our revoke applied) is
        forgotten without a proposal. The caller proposes each command
        without a session (a second revoke of a lease is a harmless
        LEASE_NOT_FOUND).
        """
        keeper = self.keeper
        if keeper.next_due > now or not self.leads(lead_term):
            return []
        out = []
        for lease_id in keeper.due(now, self.max_expiries):
            if state.has_lease(lease_id):
                out.append(LeaseRevokeCommand(lease_id, expired=True))
            else:
                keeper.forget(lease_id)
        return out

    def _ttl_ms(self, lease_id: int, state: LeaseState) -> int | None:
        if not state.has_lease(lease_id):
            return None
        ttl = self.keeper.ttl_ms(lease_id)
        if ttl is None:
            rec = state.lease(lease_id)
            assert rec is not None
            ttl = rec[0]
        return ttl
