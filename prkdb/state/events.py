"""Change events of one partition and the bounded history that serves watches.

Theory of operation
-------------------
Every applied command that changes keys yields one :class:`Event` per key it
changed, in op order, all at ``revision`` = the entry's log index (the
revision a key's ``mod_revision`` gets). A txn or a lease revoke may yield
several events at one revision; a failed txn or CAS, a delete of an absent
key, a read, a grant and a session replay yield none; a put that rewrites the
same value still yields a PUT. :class:`KVStateMachine` (kv.py) emits them and
owns one :class:`EventLog`; the server serves watches from it (``since``) and
hears of new events through the machine's ``on_events`` callback.

The log is a bounded window of recent history:

* ``_records``: the held events, oldest first, one plain tuple each (see
  below). A list, not a deque, because ``since`` bisects it by revision.
  Invariant: revisions never decrease along it and are all ``> oldest``;
  a revision's events are all held or none is.
* ``_bytes``: the sum of the held records' sizes (the record's last field).
* ``oldest``: the smallest revision ``r`` such that every event with a
  revision ``> r`` is still held. It starts at the applied index the machine
  started from (0, or a snapshot's index after an install: the history of
  what came before is not known) and moves up to the newest revision
  evicted.
* Bounds: at most ``max_events`` events and ``max_bytes`` bytes held, where
  an event costs ``len(key) + len(value) + len(prev_value)`` plus
  :data:`EVENT_OVERHEAD` (:func:`record_size`). An :meth:`EventLog.append`
  that goes past a bound evicts whole revisions from the old end (so a
  reader never sees half of a txn) until both bounds hold with 1/8 to spare:
  a cut of the list once per ``max_events / 8`` puts instead of a list shift
  per put. It runs after the whole revision is in. A single revision larger
  than a bound is evicted at once: the log is empty and ``oldest`` is that
  revision (live watchers still got it through ``on_events``; a resume from
  before it is COMPACTED, as it should be).

Cost. ``apply`` of a put must stay within ~10% of what it was without
events (scripts/bench_state.py), and building a frozen slotted dataclass
costs more than the rest of the hot path's additions together (~0.7 us on
CPython 3.11). So the log holds each event as a plain tuple
``(kind, key, revision, value, prev_value, size)`` (:data:`EventRecord`,
~40 ns), built by the machine where it makes the change (it has the values
at hand there), and builds :class:`Event` objects only when someone reads:
:meth:`since`, and the machine's ``on_events`` callback (only when one is
set). The tuples hold only bytes, ints and None (the kind as a plain int) so
the cyclic GC untracks them: a held history of GC-tracked objects made every
put ~20% slower through collections alone.

Pure and deterministic like the rest of :mod:`prkdb.state`: no clock, no I/O.
Not thread-safe: one owner (the partition driver).
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import Final, final

from prkdb.state.errors import StateError

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_EVENTS",
    "EVENT_OVERHEAD",
    "Compacted",
    "Event",
    "EventKind",
    "EventLog",
    "EventRecord",
    "events_from_records",
    "make_record",
    "record_size",
]

#: Default bound of a partition's history, in events.
DEFAULT_HISTORY_EVENTS: Final = 10_000
#: Default bound of a partition's history, in bytes (see :data:`EVENT_OVERHEAD`).
DEFAULT_HISTORY_BYTES: Final = 16 * 1024 * 1024
#: Bytes charged per held event on top of its key and values: the record
#: tuple (80 B with its GC header), a share of its revision group, the list
#: slots. An estimate; it makes a history of empty values bounded too.
EVENT_OVERHEAD: Final = 128

class EventKind(enum.IntEnum):
    """What happened to a key. Values are on the wire (Event records): append only."""

    PUT = 0  # created or overwritten (also with the same value)
    DELETE = 1  # deleted by a delete, a CAS, a txn or batch op, or a client's lease revoke
    EXPIRE = 2  # deleted because its lease expired (a revoke the leader proposed)


@final
@dataclass(frozen=True, slots=True)
class Event:
    """One change to one key, as a watcher sees it.

    Attributes:
        kind: PUT, DELETE or EXPIRE.
        key: the key changed.
        revision: the log index of the entry that changed it (its new
            ``mod_revision`` for a PUT). Several events may share one.
        value: the new value for a PUT; None for DELETE and EXPIRE.
        prev_value: the value before, None if the key was absent (so always
            set for DELETE and EXPIRE).
    """

    kind: EventKind
    key: bytes
    revision: int
    value: bytes | None
    prev_value: bytes | None


#: How the log holds an event: ``(kind, key, revision, value, prev_value,
#: size)``: the fields of :class:`Event` in order, with ``kind`` a plain int
#: (an EventKind member is a GC-tracked object; a tuple of only bytes, ints
#: and None is untracked by the first collection that sees it, so a full
#: history costs the cyclic GC nothing), then the bytes charged for it,
#: exactly :func:`record_size` of its key and values.
EventRecord = tuple[int, bytes, int, bytes | None, bytes | None, int]

_KINDS: Final = tuple(EventKind)
_revision: Final = itemgetter(2)


def record_size(key: bytes, value: bytes | None, prev_value: bytes | None) -> int:
    """The bytes a held event is charged: its key and values plus EVENT_OVERHEAD."""
    size = len(key) + EVENT_OVERHEAD
    if value is not None:
        size += len(value)
    if prev_value is not None:
        size += len(prev_value)
    return size


def make_record(
    kind: EventKind, key: bytes, revision: int, value: bytes | None, prev_value: bytes | None
) -> EventRecord:
    """The :data:`EventRecord` of one event (hot paths build the tuple inline)."""
    return (int(kind), key, revision, value, prev_value, record_size(key, value, prev_value))


# Event's slot setters: a frozen dataclass's __init__ sets each field through
# object.__setattr__ from Python; setting the slots through their descriptors
# skips that frame and those lookups (results.py's ok_result does the same).
_new = object.__new__
_set_kind, _set_key, _set_revision, _set_value, _set_prev = (
    getattr(Event, name).__set__ for name in ("kind", "key", "revision", "value", "prev_value")
)


def events_from_records(records: Iterable[EventRecord]) -> list[Event]:
    """Build the :class:`Event` of each record, in order.

    About 3x faster than calling ``Event(...)`` per record (0.45 us against
    1.3 us per event on a loaded CPython 3.11): it runs once per applied
    entry while a watch is open (``on_events``) and over a whole backlog in
    ``since``. The objects are the same: equal, hashable, frozen.
    """
    kinds = _KINDS
    events: list[Event] = []
    add = events.append
    for k, key, rev, value, prev, _ in records:
        e = _new(Event)
        _set_kind(e, kinds[k])
        _set_key(e, key)
        _set_revision(e, rev)
        _set_value(e, value)
        _set_prev(e, prev)
        add(e)
    return events


class Compacted(StateError):
    """The history no longer holds every event after the revision asked for.

    The server answers a Watch with ErrorCode COMPACTED (details: oldest);
    the watcher must list the range again and watch from there.

    Attributes:
        oldest: the smallest revision a watch may start after now.
    """

    def __init__(self, after: int, oldest: int) -> None:
        super().__init__(
            f"events after revision {after} are compacted (the oldest start is {oldest})"
        )
        self.after = after
        self.oldest = oldest


@final
class EventLog:
    """A partition's recent events, bounded by count and bytes (module doc).

    Args:
        max_events: most events held (0 keeps no history: watches then only
            see live events, and any resume before the newest revision is
            compacted).
        max_bytes: most bytes held, as charged per event (module doc).
        oldest: the revision the history starts after (the applied index of
            the machine that owns it).

    Raises:
        ValueError: a bound or ``oldest`` is negative or not an int.
    """

    __slots__ = (
        "_bytes",
        "_oldest",
        "_records",
        "max_bytes",
        "max_events",
    )

    def __init__(
        self,
        max_events: int = DEFAULT_HISTORY_EVENTS,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
        *,
        oldest: int = 0,
    ) -> None:
        for name, n in (("max_events", max_events), ("max_bytes", max_bytes), ("oldest", oldest)):
            if type(n) is not int or n < 0:
                raise ValueError(f"{name} ({n!r}) must be an int >= 0")
        #: Most events held. Invariant: ``len(self) <= max_events`` between appends.
        self.max_events = max_events
        #: Most bytes held. Invariant: ``self.held_bytes <= max_bytes`` between appends.
        self.max_bytes = max_bytes
        self.reset(oldest)

    def reset(self, oldest: int) -> None:
        """Forget every event; the history restarts after revision ``oldest``.

        The machine calls it when it installs a snapshot: what happened
        before the snapshot's index is not known here.

        Raises:
            ValueError: ``oldest`` is negative or not an int.
        """
        if type(oldest) is not int or oldest < 0:
            raise ValueError(f"oldest ({oldest!r}) must be an int >= 0")
        self._oldest = oldest
        # The held events, oldest first, and their total size (module doc).
        self._records: list[EventRecord] = []
        self._bytes = 0

    @property
    def oldest(self) -> int:
        """The smallest revision ``r`` such that every event after ``r`` is held.

        A watch may start after any revision ``>= oldest``.
        """
        return self._oldest

    @property
    def held_bytes(self) -> int:
        """Bytes held, as charged (key + value + prev_value + EVENT_OVERHEAD each)."""
        return self._bytes

    @property
    def newest(self) -> int:
        """The revision of the newest event held; ``oldest`` when none is held."""
        return self._records[-1][2] if self._records else self._oldest

    def __len__(self) -> int:
        """How many events are held."""
        return len(self._records)

    def __iter__(self) -> Iterator[Event]:
        """Every held event, oldest first (builds the Event objects)."""
        return iter(events_from_records(self._records))

    def append(self, records: list[EventRecord]) -> None:
        """Add the events of one revision, then evict old revisions if past a bound.

        Args:
            records: the events of one entry in op order, each ``(kind, key,
                revision, value, prev_value, size)``, all with that entry's
                revision, which is greater than every revision held and than
                :attr:`oldest`. Not empty. Copied: the caller may reuse the list.

        O(len(records)), plus amortized O(1) per evicted event.
        """
        held = self._records
        held += records
        if len(records) == 1:  # most entries: a put or delete (saves a loop)
            size = self._bytes + records[0][5]
        else:
            size = self._bytes + sum(record[5] for record in records)
        self._bytes = size
        if len(held) > self.max_events or size > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Drop the oldest revisions until both bounds hold with 1/8 to spare; move ``oldest``.

        Evicting down to 7/8 of a bound (not just under it) makes eviction
        rare: once per ``max_events / 8`` single-event revisions in the
        steady state, each one cut of the list, instead of shifting the list
        on every put. (A bound under 8 is kept exactly.) O(events evicted).
        """
        records = self._records
        keep_events = self.max_events - self.max_events // 8
        keep_bytes = self.max_bytes - self.max_bytes // 8
        size = self._bytes
        # Evict the first `cut` events: enough for the count bound...
        cut = max(0, len(records) - keep_events)
        for record in islice(records, cut):
            size -= record[5]
        # ...and for the byte bound...
        while size > keep_bytes:
            size -= records[cut][5]
            cut += 1
        # ...and the rest of the last evicted event's revision.
        revision = records[cut - 1][2]
        end = bisect_right(records, revision, cut, key=_revision)
        for record in islice(records, cut, end):
            size -= record[5]
        self._oldest = revision
        self._bytes = size
        del records[:end]

    def since(self, after: int, start: bytes = b"", end: bytes | None = None) -> list[Event]:
        """Return the held events after revision ``after`` whose key is in ``[start, end)``.

        Args:
            after: a watch's cursor: the revision up to which the watcher has
                everything. Must be ``>= oldest``; a cursor beyond every held
                revision (e.g. the applied index) simply gets nothing.
            start: the first key of the range (``b""`` = from the first key).
            end: the first key past the range; None = no upper bound. ``end
                <= start`` is an empty range.

        Returns:
            New Event objects in revision order, op order within a revision.

        Raises:
            Compacted: ``after < oldest``: some event after ``after`` was
                evicted (or precedes the snapshot the history starts at).

        O(log n + m) for n revisions held and m events after ``after``: a
        bisect on the revisions, then a key check per event (the key
        filter is a scan: a per-key index would cost every put).
        """
        if after < self._oldest:
            raise Compacted(after, self._oldest)
        records = self._records
        i = bisect_right(records, after, key=_revision)
        if start == b"" and end is None:
            return events_from_records(records[i:])
        if end is not None and end <= start:
            return []
        return events_from_records(
            [r for r in islice(records, i, None) if start <= r[1] and (end is None or r[1] < end)]
        )

    def __repr__(self) -> str:
        return (
            f"EventLog(oldest={self._oldest}, newest={self.newest}, events={len(self)}, "
            f"held_bytes={self.held_bytes}, max_events={self.max_events}, "
            f"max_bytes={self.max_bytes})"
        )
