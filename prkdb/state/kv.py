"""KVStateMachine: one partition's replicated key-value state.

Theory of operation
-------------------
The partition driver hands every committed Raft entry, in log order, to
:meth:`KVStateMachine.apply`. The machine is *pure*: no clock, no I/O, no
randomness, no trio. Its state after applying entries ``1..i`` is a function
of those entries' bytes only, which is what makes the replicas identical
(Raft's state machine safety) and makes snapshots interchangeable with
replaying the log.

State:

* ``_data``: ``key -> (value, version, mod_revision)``, a plain tuple per key
  (see results.py for the version/revision rules). Tuples are the cheapest
  record Python has: no per-object ``__dict__``, and the cyclic GC untracks
  tuples of atomic objects, so a million keys do not slow full collections.
  :meth:`get` returns the stored tuple itself, with no copy.
* ``_keys``: the same keys in byte order, a ``sortedcontainers.SortedList``
  (a list of sorted sublists of ~1,000 keys: one pointer per key plus a
  bisect, no tree nodes). It serves :meth:`scan` and :meth:`count`; point
  reads never touch it. Invariant: ``list(_keys) == sorted(_data)``. Only a
  put of an absent key adds to it and only a delete of a present key removes
  from it, so overwrites (the common write) cost one dict lookup as before.
* ``_sessions``: the exactly-once table (sessions.py).
* ``_applied``: the index of the last applied entry.
  Invariant: strictly increasing; ``apply`` refuses anything else.

apply(index, data), in order:

1. Check the index increases (else :class:`StateInvariantError`: the driver
   applied an entry twice or out of order — a bug, never input).
2. Set the applied index and expire idle sessions as of ``index``.
3. Empty data is a Raft no-op (the leader's first entry of a term, or an
   entry kind the driver does not pass on): return ``None``.
4. Decode. Malformed bytes give a ``MALFORMED_COMMAND`` result, not an
   exception: the entry is committed, every replica will see the same bytes,
   and refusing to apply it would wedge the partition forever.
5. If the command carries a session: a retry returns its cached result, an
   older seq returns ``STALE_SEQUENCE``, both without touching the data.
6. Check limits (limits.py); a violation is a failed no-op result.
7. Execute. Batches were fully validated in 6, and PutCommand/DeleteCommand cannot fail
   afterwards, so a batch applies all ops or none.
8. Record the result in the session table (failed results too: a retry must
   see the same answer).

Configuration (limits, session bounds) must be the same on every replica of
a partition, since it decides results.

Snapshot format (CBOR, one array, version-tagged)::

    [1, applied_index, [k, v, version, mod_rev, k, v, ...], [session, ...]]

Keys appear in the dict's insertion order, which is itself a function of the
applied log, so two replicas at the same index produce identical bytes
(useful for divergence checks) without paying for a sort. The ordered index
is not in the snapshot: :meth:`KVStateMachine.decode_snapshot` rebuilds it
from the keys (one sort, off the event loop).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, Final, Protocol, final

import cbor2
from sortedcontainers import SortedList

from prkdb.state.commands import (
    UNCHECKED,
    BatchCommand,
    Command,
    CompareAndSetCommand,
    DeleteCommand,
    PutCommand,
    decode_command,
)
from prkdb.state.errors import CommandDecodeError, SnapshotDecodeError, StateInvariantError
from prkdb.state.limits import Limits, check_command
from prkdb.state.results import OpResult, ResultCode, WriteResult
from prkdb.state.sessions import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_ENTRIES,
    SessionTable,
)

__all__ = ["SNAPSHOT_FORMAT", "KVStateMachine", "KeyRecord", "ScanItem", "prefix_end"]

#: Version tag of the snapshot array. Bump on any layout change, keep readers.
SNAPSHOT_FORMAT: Final = 1

#: What the machine stores per key: ``(value, version, mod_revision)``.
KeyRecord = tuple[bytes, int, int]

#: What :meth:`KVStateMachine.scan` returns per key:
#: ``(key, value, version, mod_revision)``; value is ``b""`` for keys_only.
ScanItem = tuple[bytes, bytes, int, int]


class _SortedKeys(Protocol):
    """The part of ``sortedcontainers.SortedList`` this module uses (it ships no types)."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def add(self, key: bytes, /) -> None: ...
    def remove(self, key: bytes, /) -> None: ...
    def bisect_left(self, key: bytes, /) -> int: ...
    def irange(
        self, minimum: bytes | None, maximum: bytes | None, inclusive: tuple[bool, bool]
    ) -> Iterator[bytes]: ...


def _sorted_keys(keys: Iterable[bytes] = ()) -> _SortedKeys:
    sorted_keys: _SortedKeys = SortedList(keys)
    return sorted_keys


def prefix_end(prefix: bytes) -> bytes | None:
    """Return the smallest key greater than every key that starts with ``prefix``.

    ``scan(prefix, prefix_end(prefix))`` is then exactly the keys with the
    prefix. Trailing ``0xff`` bytes cannot be incremented, so they are dropped
    and the byte before them is incremented: ``b"a\\xff"`` gives ``b"b"``.
    Returns None (no upper bound) when there is no such key, i.e. when the
    prefix is empty or all ``0xff``. O(len(prefix)).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))

_OK: Final = ResultCode.OK
_CAS_FAILED: Final = ResultCode.CAS_FAILED


@final
class DecodedSnapshot:
    """A partition's whole state decoded from a snapshot, not yet installed."""

    __slots__ = ("applied", "data", "keys", "sessions")

    def __init__(self, data: dict[bytes, KeyRecord], sessions: SessionTable, applied: int) -> None:
        self.data = data
        # The ordered index, built here so that `install` stays instant: the
        # sort (O(n log n)) runs wherever decoding runs, off the event loop.
        self.keys = _sorted_keys(data)
        self.sessions = sessions
        self.applied = applied


@final
class KVStateMachine:
    """The deterministic KV state of one partition. Not thread-safe: one owner.

    Args:
        max_key_size, max_value_size, max_batch_ops: see :class:`Limits`.
        max_sessions: most client sessions kept (LRU by log index beyond it).
        session_ttl_entries: a session unused for more than this many log
            indexes is dropped.
    """

    __slots__ = ("_applied", "_data", "_keys", "_sessions", "limits")

    def __init__(
        self,
        *,
        max_key_size: int = 64 * 1024,
        max_value_size: int = 4 * 1024 * 1024,
        max_batch_ops: int = 1000,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_ttl_entries: int = DEFAULT_SESSION_TTL_ENTRIES,
    ) -> None:
        #: The limits every committed command is checked against.
        self.limits = Limits(max_key_size, max_value_size, max_batch_ops)
        self._data: dict[bytes, KeyRecord] = {}
        # The keys of _data in byte order (module doc: invariant).
        self._keys = _sorted_keys()
        self._sessions = SessionTable(max_sessions, session_ttl_entries)
        # Index of the last applied entry; 0 = nothing applied.
        self._applied = 0

    # -- reads -----------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """Index of the last applied entry (0 before any). STALE reads report it."""
        return self._applied

    @property
    def sessions(self) -> SessionTable:
        """The session table, for inspection; mutate it only through ``apply``."""
        return self._sessions

    def get(self, key: bytes) -> KeyRecord | None:
        """Return ``(value, version, mod_revision)`` of ``key``, or None if absent.

        Reads the local state as of :attr:`applied_index`; the server decides
        whether that is fresh enough (ReadIndex) before calling it.
        """
        return self._data.get(key)

    def scan(
        self, start: bytes, end: bytes | None, *, limit: int = 0, keys_only: bool = False
    ) -> list[ScanItem]:
        """Return the keys in ``[start, end)`` in byte order, with their records.

        Args:
            start: the first key to include (``b""`` = from the first key).
            end: the first key to exclude; None = up to and including the last
                key. ``end <= start`` is an empty range, not an error. For a
                prefix scan pass ``end=prefix_end(prefix)``.
            limit: return at most this many keys; 0 = no limit.
            keys_only: leave values out (``b""`` in their place), as a
                keys-only listing needs.

        Returns:
            ``(key, value, version, mod_revision)`` per key (see :data:`ScanItem`),
            a new list; state as of :attr:`applied_index`, like :meth:`get`.

        O(log n + k) for n keys in the partition and k keys returned: a bisect
        into the ordered index, then one dict lookup per returned key.
        """
        if limit < 0:
            raise ValueError(f"scan limit must be >= 0, got {limit}")
        if end is not None and end <= start:
            return []
        it = self._keys.irange(start, end, (True, False))
        if limit:
            it = islice(it, limit)
        data = self._data
        if keys_only:
            return [(k, b"", (r := data[k])[1], r[2]) for k in it]
        return [(k, *data[k]) for k in it]

    def count(self, start: bytes, end: bytes | None) -> int:
        """Return how many keys are in ``[start, end)`` (``end`` None = to the last key).

        O(log n): two bisects of the ordered index, whatever the count (the
        index's positional tree is rebuilt, O(n / 1000), after a write that
        split a sublist).
        """
        keys = self._keys
        if end is not None and end <= start:
            return 0
        hi = len(keys) if end is None else keys.bisect_left(end)
        return hi - keys.bisect_left(start)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def items(self) -> list[tuple[bytes, KeyRecord]]:
        """All ``(key, (value, version, mod_revision))`` pairs, in insertion order (a copy)."""
        return list(self._data.items())

    # -- apply -----------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> WriteResult | None:
        """Apply the committed entry at ``index`` whose payload is ``data``.

        Deterministic: the same sequence of ``(index, data)`` yields the same
        results and the same state on every replica. Never raises for bad
        *data* (see module doc); only for a broken invariant.

        Args:
            index: the entry's Raft log index; must exceed :attr:`applied_index`
                (gaps are allowed, for entries the driver does not pass on).
            data: the entry payload; ``b""`` is a Raft no-op.

        Returns:
            The command's :class:`WriteResult`, or ``None`` for a no-op.

        Raises:
            StateInvariantError: ``index <= applied_index`` (applied twice or
                out of order).
        """
        if index <= self._applied:
            raise StateInvariantError(
                f"apply index {index} must be greater than the applied index {self._applied}"
            )
        self._applied = index
        sessions = self._sessions
        sessions.expire(index)
        if not data:
            return None
        try:
            cmd, client_id, seq = decode_command(data)
        except CommandDecodeError as e:
            return WriteResult(ResultCode.MALFORMED_COMMAND, index, message=str(e))
        if client_id is None:
            return self._execute(index, cmd)
        assert seq is not None  # decode_command returns both or neither
        replay = sessions.check(client_id, seq, index)
        if replay is not None:
            return replay
        result = self._execute(index, cmd)
        sessions.record(client_id, seq, result, index)
        return result

    def _execute(self, index: int, cmd: Command) -> WriteResult:
        violation = check_command(cmd, self.limits)
        if violation is not None:
            return WriteResult(violation[0], index, message=violation[1])
        if type(cmd) is PutCommand:
            return self._put(index, cmd.key, cmd.value)
        if type(cmd) is DeleteCommand:
            return self._delete(index, cmd.key)
        if type(cmd) is CompareAndSetCommand:
            return self._compare_and_set(index, cmd)
        assert type(cmd) is BatchCommand  # check_command rejected everything else
        return self._batch(index, cmd)

    def _put(self, index: int, key: bytes, value: bytes) -> WriteResult:
        data = self._data
        old = data.get(key)
        if old is None:
            prev = 0
            self._keys.add(key)
        else:
            prev = old[1]
        data[key] = (value, prev + 1, index)
        return WriteResult(_OK, index, prev + 1, prev)

    def _delete(self, index: int, key: bytes) -> WriteResult:
        old = self._data.pop(key, None)
        if old is None:
            return WriteResult(_OK, index, 0, 0)
        self._keys.remove(key)
        return WriteResult(_OK, index, 0, old[1])

    def _compare_and_set(self, index: int, cmd: CompareAndSetCommand) -> WriteResult:
        current = self._data.get(cmd.key)
        version = 0 if current is None else current[1]
        expected_value = cmd.expected_value
        failure = ""
        if expected_value is not UNCHECKED:
            if expected_value is None:
                if current is not None:
                    failure = f"key exists (version {version}), expected absent"
            elif current is None:
                failure = "key is absent, expected a value"
            elif current[0] != expected_value:
                failure = f"value differs from expected_value (version {version})"
        if not failure and cmd.expected_version is not None and version != cmd.expected_version:
            failure = f"version is {version}, expected {cmd.expected_version}"
        if failure:
            return WriteResult(
                _CAS_FAILED, index, version, version, message=f"compare failed: {failure}"
            )
        if cmd.new_value is None:
            return self._delete(index, cmd.key)
        return self._put(index, cmd.key, cmd.new_value)

    def _batch(self, index: int, cmd: BatchCommand) -> WriteResult:
        results = []
        for op in cmd.ops:
            if type(op) is PutCommand:
                r = self._put(index, op.key, op.value)
            else:
                r = self._delete(index, op.key)
            results.append(OpResult(r.version, r.prev_version))
        return WriteResult(_OK, index, ops=tuple(results))

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Serialize the whole state (data, sessions, applied index) as CBOR.

        The driver calls it right after applying the entry the snapshot is
        taken at; restoring the bytes anywhere yields an equal machine.
        """
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """Freeze the state now; return a function that serializes that frozen state.

        Freezing copies the key -> record table (one C-level pass; records are
        immutable tuples), so the slow part, the encoding, can run in another
        thread while this machine keeps applying entries.
        Memory: the copy, then one flat list of 4 pointers per key, then the bytes.
        """
        items = list(self._data.items())
        applied = self._applied
        sessions = self._sessions.to_cbor()

        def encode() -> bytes:
            flat: list[Any] = []
            append = flat.append
            for key, (value, version, rev) in items:
                append(key)
                append(value)
                append(version)
                append(rev)
            return cbor2.dumps([SNAPSHOT_FORMAT, applied, flat, sessions])

        return encode

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a :meth:`snapshot`'s bytes.

        The state is replaced only if the snapshot decodes completely, so a
        corrupt snapshot leaves the machine as it was.

        Raises:
            SnapshotDecodeError: ``data`` is not a well-formed snapshot.
        """
        self.install(self.decode_snapshot(data))

    def install(self, state: DecodedSnapshot) -> None:
        """Replace the whole state with one `decode_snapshot` built (instant)."""
        self._data = state.data
        self._keys = state.keys
        self._sessions = state.sessions
        self._applied = state.applied

    def decode_snapshot(self, data: bytes) -> DecodedSnapshot:
        """Decode and check a :meth:`snapshot`'s bytes into a state `install` can take.

        Touches nothing of this machine but its session limits, so it may run
        in a worker thread while the machine keeps serving: for a large
        partition it takes about a second per million keys, which on the
        event loop would stall every partition of the node.

        Raises:
            SnapshotDecodeError: ``data`` is not a well-formed snapshot.
        """
        fp = io.BytesIO(data)
        try:
            item = cbor2.CBORDecoder(fp).decode()
        except cbor2.CBORDecodeError as e:
            raise SnapshotDecodeError(f"snapshot is not valid CBOR: {e}") from None
        if fp.tell() != len(data):
            raise SnapshotDecodeError("snapshot has trailing bytes after the CBOR item")
        if type(item) is not list or len(item) != 4:
            raise SnapshotDecodeError("snapshot must be a 4-element array")
        fmt, applied, flat, raw_sessions = item
        if fmt != SNAPSHOT_FORMAT or type(fmt) is not int:
            raise SnapshotDecodeError(
                f"unsupported snapshot format {fmt!r:.40} (this build reads {SNAPSHOT_FORMAT})"
            )
        if type(applied) is not int or applied < 0:
            raise SnapshotDecodeError(f"snapshot applied index must be >= 0, got {applied!r:.40}")
        if type(flat) is not list or len(flat) % 4:
            raise SnapshotDecodeError("snapshot data must be an array of 4-tuples")
        new_data: dict[bytes, KeyRecord] = {}
        it = iter(flat)
        for key, value, version, rev in zip(it, it, it, it):
            if (
                type(key) is not bytes
                or type(value) is not bytes
                or type(version) is not int
                or type(rev) is not int
                or version < 1
                or not 0 < rev <= applied
            ):
                raise SnapshotDecodeError(f"snapshot has a malformed record for key {key!r:.60}")
            new_data[key] = (value, version, rev)
        if len(new_data) * 4 != len(flat):
            raise SnapshotDecodeError("snapshot has a duplicate key")
        sessions = SessionTable(self._sessions.max_sessions, self._sessions.ttl_entries)
        try:
            sessions.load_cbor(raw_sessions, applied)
        except ValueError as e:
            raise SnapshotDecodeError(f"snapshot has a malformed session table: {e}") from None
        return DecodedSnapshot(new_data, sessions, applied)

    def __eq__(self, other: object) -> bool:
        """Equal state: applied index, data (order included) and session table.

        Insertion order is compared because it decides the snapshot bytes.
        """
        if not isinstance(other, KVStateMachine):
            return NotImplemented
        return (
            self._applied == other._applied
            and list(self._data.items()) == list(other._data.items())
            and self._sessions == other._sessions
        )

    # Mutable, so unhashable; typeshed types object.__hash__ as a method, not None.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"KVStateMachine(applied_index={self._applied}, keys={len(self._data)}, "
            f"sessions={len(self._sessions)})"
        )
