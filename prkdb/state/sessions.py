"""Client sessions: the table that makes retried writes apply exactly once.

Theory of operation
-------------------
A client that wants exactly-once writes picks a ``client_id`` (bytes or int,
unique per client process) and numbers its writes ``seq = 1, 2, 3, ...``. A
write whose reply is lost (leader crash, timeout) is retried with the *same*
``seq``. When a session command is applied (Raft dissertation §6.3):

* ``seq`` > the client's last seq, or the client is unknown: apply the
  command, remember ``(seq, result)`` as the client's last.
* ``seq`` == last seq: a retry of a write that already happened. Return the
  cached result and change nothing in the KV data.
* ``seq`` < last seq: a late duplicate of something already superseded. The
  result of that old write is gone, so return ``STALE_SEQUENCE`` and change
  nothing.

Every command kind is covered: puts, deletes, CAS, batches, transactions
(the cached result holds the branch taken and every GetOp's record, so a
retry sees what the first attempt read, not the current state), lease grants
(a retry returns the same lease id instead of granting a second lease) and
revokes (a retry returns the original count, not LEASE_NOT_FOUND).
In a snapshot each cached result is written in result shape 2 (results.py:
``result_to_cbor``); a snapshot of format 1 holds shape 1, which still loads.

Consequence: a client must wait for the reply of seq N before it sends N+1,
or accept that a retry of N after N+1 was applied gets ``STALE_SEQUENCE``
(it did happen once). Pipelining clients use one session per in-flight slot.

Bounded and deterministic. The table must be the same on every replica, so
it never looks at a clock: "time" is the log index being applied.

* ``last_used`` of a session = index of the last entry that applied or
  replayed one of its writes. Invariant: the dict is ordered by ascending
  ``last_used`` (a touched session is moved to the end, and indexes only
  grow), so the least recently used session is always first.
* Expiry: applying index ``i`` drops every session with
  ``i - last_used > ttl_entries``. This is a pure function of (table, i), so a
  replica restored from a snapshot and one that applied every entry agree.
* Capacity: after inserting a new session, while ``len > max_sessions`` the
  first (least recently used) session is evicted.

A client whose session expired or was evicted is unknown again, so a retry
of its last write would be applied a second time. That is the price of a
bounded table without explicit session registration; clients should not
retry past ``ttl_entries`` worth of log. (TODO(#3): a RegisterClient command
would let the machine answer SESSION_EXPIRED instead.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, final

from prkdb.state.commands import ClientId
from prkdb.state.results import ResultCode, WriteResult, result_from_cbor, result_to_cbor

__all__ = ["DEFAULT_MAX_SESSIONS", "DEFAULT_SESSION_TTL_ENTRIES", "SessionTable"]

DEFAULT_MAX_SESSIONS = 10_000
DEFAULT_SESSION_TTL_ENTRIES = 1_000_000


@final
class SessionTable:
    """Per-client last ``(seq, result)``, bounded by count and by log-index age.

    Only the state machine mutates it, from ``apply``; everything it does is a
    function of the applied entries, never of wall-clock time.
    """

    __slots__ = ("_sessions", "max_sessions", "ttl_entries")

    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        ttl_entries: int = DEFAULT_SESSION_TTL_ENTRIES,
    ) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError(f"max_sessions ({max_sessions!r}) must be a positive int")
        if type(ttl_entries) is not int or ttl_entries < 1:
            raise ValueError(f"session_ttl_entries ({ttl_entries!r}) must be a positive int")
        #: Most sessions kept; the least recently used is evicted beyond it.
        self.max_sessions = max_sessions
        #: A session unused for more than this many log indexes is dropped.
        self.ttl_entries = ttl_entries
        # client_id -> (last_seq, last_used_index, last_result).
        # Invariant: ordered by ascending last_used_index.
        # An OrderedDict, not a dict: finding the oldest entry of a plain dict
        # after many deletions at its front scans their tombstones, while
        # OrderedDict's linked list makes first/move_to_end/popitem O(1).
        self._sessions: OrderedDict[ClientId, tuple[int, int, WriteResult]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions

    def get(self, client_id: ClientId) -> tuple[int, int, WriteResult] | None:
        """Return ``(last_seq, last_used_index, last_result)`` for a client, or None."""
        return self._sessions.get(client_id)

    def __iter__(self) -> Iterator[tuple[ClientId, int, int, WriteResult]]:
        """Yield ``(client_id, last_seq, last_used_index, result)``, least recently used first."""
        for cid, (seq, used, result) in self._sessions.items():
            yield cid, seq, used, result

    def __eq__(self, other: object) -> bool:
        # Order is part of the state (it decides evictions), so compare it too.
        if not isinstance(other, SessionTable):
            return NotImplemented
        return list(self._sessions.items()) == list(other._sessions.items())

    # Mutable, so unhashable; typeshed types object.__hash__ as a method, not None.
    __hash__ = None  # type: ignore[assignment]

    def expire(self, index: int) -> None:
        """Drop the sessions unused for more than ``ttl_entries`` as of ``index``.

        Called by ``apply`` for every entry, no-ops included, before the entry
        is looked at. Amortized O(1): only the expired prefix is visited.
        """
        sessions = self._sessions
        if not sessions:
            return
        horizon = index - self.ttl_entries
        while sessions:
            cid = next(iter(sessions))
            if sessions[cid][1] >= horizon:
                break
            sessions.popitem(last=False)

    def check(self, client_id: ClientId, seq: int, index: int) -> WriteResult | None:
        """Decide whether the write ``(client_id, seq)`` at ``index`` must be applied.

        Returns:
            ``None`` if the write is new and must be applied (then call
            :meth:`record`); otherwise the result to return instead of
            applying: the cached result of a retry (the session is refreshed),
            or a ``STALE_SEQUENCE`` result for an older seq.
        """
        entry = self._sessions.get(client_id)
        if entry is None:
            return None
        last_seq, _, result = entry
        if seq > last_seq:
            return None
        if seq == last_seq:
            self._sessions[client_id] = (last_seq, index, result)
            self._sessions.move_to_end(client_id)
            return result
        return WriteResult(
            ResultCode.STALE_SEQUENCE,
            index,
            message=f"seq {seq} is older than the last applied seq {last_seq} of this client",
        )

    def record(self, client_id: ClientId, seq: int, result: WriteResult, index: int) -> None:
        """Remember ``result`` as the client's last write, then enforce ``max_sessions``."""
        sessions = self._sessions
        sessions[client_id] = (seq, index, result)
        sessions.move_to_end(client_id)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)

    def clear(self) -> None:
        """Forget every session (used by restore)."""
        self._sessions.clear()

    # -- snapshot form ---------------------------------------------------------

    def to_cbor(self) -> list[Any]:
        """Flatten to ``[client_id, seq, last_used, result, ...]`` in LRU order.

        Each ``result`` is ``result_to_cbor``'s shape 2.
        """
        flat: list[Any] = []
        for cid, (seq, used, result) in self._sessions.items():
            flat.append(cid)
            flat.append(seq)
            flat.append(used)
            flat.append(result_to_cbor(result))
        return flat

    def load_cbor(self, flat: Any, applied_index: int) -> None:
        """Replace the table with the output of :meth:`to_cbor` (results of shape 1 or 2).

        Raises:
            ValueError: ``flat`` is not a well-formed table for a machine at
                ``applied_index`` (wrong shape, or the LRU order or
                ``last_used <= applied_index`` invariant does not hold). The
                table is left unchanged.
        """
        if type(flat) is not list or len(flat) % 4:
            raise ValueError("sessions must be an array of 4-tuples")
        sessions: OrderedDict[ClientId, tuple[int, int, WriteResult]] = OrderedDict()
        prev_used = 0
        for i in range(0, len(flat), 4):
            cid, seq, used, raw = flat[i : i + 4]
            if type(cid) is not bytes and type(cid) is not int:
                raise ValueError(f"session client_id must be bytes or int, got {cid!r:.40}")
            if type(seq) is not int or seq < 0:
                raise ValueError(f"session seq must be a non-negative int, got {seq!r:.40}")
            if type(used) is not int or not prev_used <= used <= applied_index:
                raise ValueError(
                    f"session last_used {used!r:.40} breaks LRU order or exceeds "
                    f"the applied index {applied_index}"
                )
            if cid in sessions:
                raise ValueError(f"duplicate session client_id {cid!r:.40}")
            prev_used = used
            sessions[cid] = (seq, used, result_from_cbor(raw))
        self._sessions = sessions
