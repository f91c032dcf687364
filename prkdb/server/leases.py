"""`LeaseKeeper`: when each lease of one partition lapses, as its leader sees it.

Theory of operation
-------------------
Leases are replicated (a LeaseGrant entry creates one, a LeaseRevoke entry
deletes it with its keys), but their deadlines are not: only the partition
leader decides expiry, from its own clock, and a node that becomes leader
starts every lease's TTL afresh (etcd's rule). So a leader change can make
a lease live longer than its TTL, never shorter. This keeper holds those
deadlines for one partition; the `PartitionDriver` feeds it and asks it, and
it knows no clock, no Raft and no state machine: every call takes `now`
(seconds on the daemon's clock, trio time) and lease TTLs in milliseconds.

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

What the keeper does not know: whether a lease still exists. The driver
checks the state machine before it acts (a lease revoked by a client
lingers here until its deadline, then is forgotten without a proposal).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

__all__ = ["LeaseKeeper"]

# Rebuild the heap when it holds more than this many entries per live lease.
_STALE_FACTOR = 4


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
