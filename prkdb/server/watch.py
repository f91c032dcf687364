"""`PartitionWatches`: one partition's watches, fed by its state machine's events.

Theory of operation
-------------------
A watch is ``(rid, [start, end), cursor, prev_values)`` on one connection
(its `WatchSink`). Opening one reads the partition's event history
(``EventLog.since(cursor, start, end)``: `Compacted` if the cursor is older
than what is held), queues that backlog and registers the watch, all in one
synchronous step: no apply can fall between the backlog and the
registration, so nothing is missed and nothing is sent twice.

The state machine calls `on_events` after each applied entry that changed
keys; the events wait in `_pass` until the driver calls `flush(applied, now)`
once its Ready is applied. Then each watch whose range matches gets one
batch: the events of the whole Ready (so of whole revisions, never split)
with ``progress = applied``. Watches with the same range share the match.

Delivery never blocks the Raft loop: a batch is put on the watch's own
queue, and `_pump` moves queued batches into the connection (one
WatchEvents frame per call, at most `FRAME_BYTES` of events, whole
batches) only while the connection holds less than `SINK_HIGH_WATER`
unsent bytes. What the socket did not take stays queued here and is pumped
again on later passes and ticks. A watch whose live queue passes
`max_events` or `max_bytes` is dropped with WATCH_OVERFLOW (the client
resumes from its cursor). So is a watch whose connection took none of its
frames for `STALLED_S` while it had live events queued, and every watch of
a connection whose client acknowledged none of the bytes waiting for it
for `STALLED_S` (`WatchSink.stalled_for`, by TCP's acknowledgments: a
client that stopped reading is seen within seconds, while the kernel's
send buffer, autotuned up to 4 MiB, would hide it for tens of seconds at a
watch's event rate, each write costing a frame meanwhile). The backlog read
at open is not counted (it is bounded by the history size and may exceed
the buffer; counting it would make a client that resumes from far back
overflow forever).

Progress notices: a watch that sent nothing for `PROGRESS_INTERVAL_S` gets
an empty frame with ``progress = applied`` on a tick (idle watches are looked
for every `NOTICE_CHECK_S`, so a notice leaves within a second of quiet).

Invariants (per watch):
    `queued_upto` is the progress of the last batch queued, >= the cursor
    it was opened with; every queued or later event has revision > it, so
    frames go out in revision order and progress never goes back.
    An event at or below `queued_upto` (a partition that restarted and
    re-applies entries after its snapshot) is skipped: never a duplicate.

A snapshot installed at index s replaces the history; a watch with
``queued_upto < s`` may have missed events before s, so it is ended with
UNAVAILABLE (the client resumes elsewhere or here, from its cursor).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prkdb.errors import PrkdbError, Unavailable, WatchOverflow
from prkdb.state.events import events_from_records

PROGRESS_INTERVAL_S = 0.8  # idle notice after this long (checked every NOTICE_CHECK_S)
NOTICE_CHECK_S = 0.1  # idle watches are looked for this often (not every 50 ms tick)
SINK_HIGH_WATER = 1024 * 1024  # unsent bytes on a connection before watches queue here
FRAME_BYTES = 256 * 1024  # event bytes per WatchEvents frame (whole batches; at least one)
EVENT_OVERHEAD = 16  # bytes counted per event besides its key and values
INDEX_FROM = 8  # ranges from which a pass's events are matched through the range index
STALLED_S = 2.0  # a watch whose client took none of its bytes this long ends (module doc)


class EventLike(Protocol):
    """What this module reads of a `prkdb.state.events.Event`."""

    @property
    def kind(self) -> int: ...
    @property
    def key(self) -> bytes: ...
    @property
    def revision(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def prev_value(self) -> bytes | None: ...


class History(Protocol):
    """The partition's event history (`prkdb.state.events.EventLog`)."""

    def since(self, after: int, start: bytes, end: bytes | None) -> Sequence[Any]: ...


class WatchSink(Protocol):
    """One client connection, as its watches see it (client_service.py)."""

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued on the connection that the socket has not taken yet."""
        ...

    def send_events(self, watch: Watch, events: Sequence[Any], progress: int,
                    shared: SharedBatch | None = None) -> bool:
        """Queue one WatchEvents frame of `events` as they are; False if closed (or full).

        Without `watch.prev_values` their ``prev_value`` is None already.
        `shared`: the batch these events are, shared by every watch of the
        range; the sink may keep their encoding in ``shared.encoded`` for the
        next watch (the frames differ only in their request id).
        """
        ...

    def end_watch(self, watch: Watch, error: PrkdbError) -> None:
        """The server ended `watch`: send the Error frame of its rid, forget the rid."""
        ...

    def stalled_for(self, now: float) -> float:
        """Seconds the client has taken none of the bytes waiting for it (0: it reads)."""
        ...


def _as_sent(events: list[Any], prev_values: bool) -> tuple[list[Any], int]:
    """`events` as a watch gets them (no previous values unless asked), and their size."""
    if not prev_values and any(e.prev_value is not None for e in events):
        # (events_from_records: a third of dataclasses.replace's cost per event)
        events = events_from_records([(e.kind, e.key, e.revision, e.value, None, 0)
                                      for e in events])
    return events, sum(event_size(e, prev_values) for e in events)


def event_size(e: EventLike, prev_values: bool) -> int:
    """Bytes counted for one event in buffers and frames."""
    n = EVENT_OVERHEAD + len(e.key)
    if e.value is not None:
        n += len(e.value)
    if prev_values and e.prev_value is not None:
        n += len(e.prev_value)
    return n


@dataclass(slots=True)
class _Batch:
    """Events queued for a watch; a pass's live batch is shared by its range's watches."""

    events: list[Any]
    progress: int  # every event of this partition's range up to here is in or before it
    size: int  # event_size total
    live: bool  # counted against the buffer bound (the backlog is not)
    encoded: Any = None  # the sink's encoding of `events`, made once for all sharers


SharedBatch = _Batch


@dataclass(eq=False, slots=True)
class Watch:
    """One registration; identity is the object (a rid is unique per connection only)."""

    rid: int
    partition: int
    start: bytes
    end: bytes | None
    prev_values: bool
    sink: WatchSink
    queued_upto: int  # progress of the last batch queued (module invariants)
    sent_at: float = 0.0  # when the last frame of this watch was queued on the sink
    queue: deque[_Batch] = field(default_factory=deque)
    live_events: int = 0  # events in live batches of `queue`
    live_bytes: int = 0
    closed: bool = False
    stalled_since: float | None = None  # since when live events wait and nothing left

    @property
    def range(self) -> tuple[bytes, bytes | None]:
        return self.start, self.end


class _RangeIndex:
    """The watched ranges, for matching each event with a bisection (not every range).

    Bounded ranges sorted by start, with the largest end among each one and
    those before it: walking back from the last start <= key, no earlier
    range can hold the key once that running maximum is <= key, so distinct
    prefixes cost one bisection and a step or two per event. Ranges without
    an end are checked one by one (few: "every key from here").
    """

    __slots__ = ("bounded", "max_end", "starts", "unbounded")

    def __init__(self, ranges: Iterable[tuple[bytes, bytes | None]]) -> None:
        ranges = list(ranges)
        bounded = sorted((r for r in ranges if r[1] is not None), key=lambda r: r[0])
        self.bounded = bounded
        self.starts = [r[0] for r in bounded]
        self.max_end: list[bytes] = []
        top = b""
        for _, end in bounded:
            assert end is not None
            if end > top:
                top = end
            self.max_end.append(top)
        self.unbounded = [r for r in ranges if r[1] is None]

    def match(self, events: list[Any]) -> list[tuple[tuple[bytes, bytes | None], list[Any]]]:
        hits: dict[tuple[bytes, bytes | None], list[Any]] = {}
        bounded, starts, max_end, unbounded = (self.bounded, self.starts, self.max_end,
                                               self.unbounded)
        for e in events:
            key = e.key
            j = bisect_right(starts, key) - 1
            while j >= 0 and max_end[j] > key:
                r = bounded[j]
                if key < r[1]:  # type: ignore[operator,unused-ignore]  # bounded: an end
                    hits.setdefault(r, []).append(e)
                j -= 1
            for r in unbounded:
                if r[0] <= key:
                    hits.setdefault(r, []).append(e)
        return list(hits.items())


class PartitionWatches:
    """The watches of one partition (owned by its `PartitionDriver`; module doc)."""

    def __init__(self, partition: int, max_events: int, max_bytes: int) -> None:
        self.partition = partition
        self.max_events = max_events  # live events queued per watch before it overflows
        self.max_bytes = max_bytes
        # Watches by range: watches of one range share the match of each pass.
        self._by_range: dict[tuple[bytes, bytes | None], dict[Watch, None]] = {}
        self._index: _RangeIndex | None = None  # of `_by_range`'s keys; None: to rebuild
        self._pass: list[Any] = []  # events applied since the last flush, in order
        self._backed_up: dict[Watch, None] = {}  # watches with queued batches (ordered set)
        self._next_notice_check = 0.0
        self.overflows = 0

    @property
    def active(self) -> bool:
        """Whether any watch is open (the driver skips the calls otherwise)."""
        return bool(self._by_range)

    def __len__(self) -> int:
        return sum(len(ws) for ws in self._by_range.values())

    # -- registration (the connection's task; synchronous, so atomic w.r.t. applies) --
    def open(self, history: History, sink: WatchSink, rid: int, start: bytes,
             end: bytes | None, after: int, prev_values: bool, applied: int,
             now: float) -> Watch:
        """Register a watch of ``[start, end)`` after revision `after`; queue its backlog.

        Args:
            history: the partition's EventLog, as applied up to `applied`.
            applied: the partition's applied index (the backlog's progress).

        Raises:
            Compacted: `after` is older than the history held (from `history.since`).
        """
        backlog = list(history.since(after, start, end))
        w = Watch(rid, self.partition, start, end, prev_values, sink, max(after, applied), now)
        # A cursor ahead of this replica (a lagging follower) keeps its place:
        # progress never goes back for the client.
        self._queue_backlog(w, backlog, max(after, applied))
        ws = self._by_range.get(w.range)
        if ws is None:
            ws = self._by_range[w.range] = {}
            self._index = None
        ws[w] = None
        self._pump(w, now)
        return w

    def close(self, w: Watch) -> None:
        """Forget `w` (cancel, connection closed, or ended by the server); idempotent."""
        if w.closed:
            return
        w.closed = True
        w.queue.clear()
        w.live_events = w.live_bytes = 0
        self._backed_up.pop(w, None)
        ws = self._by_range.get(w.range)
        if ws is not None:
            ws.pop(w, None)
            if not ws:
                del self._by_range[w.range]
                self._index = None
                if not self._by_range:
                    self._pass.clear()  # nobody flushes it now

    def _queue_backlog(self, w: Watch, events: list[Any], progress: int) -> None:
        # Cut at revision boundaries into frame-sized batches.
        batch: list[Any] = []
        size = 0
        for e in events:
            n = event_size(e, w.prev_values)
            if size + n > FRAME_BYTES and batch and e.revision != batch[-1].revision:
                w.queue.append(_Batch(batch, batch[-1].revision, size, False))
                batch, size = [], 0
            batch.append(e)
            size += n
        # The last batch (maybe empty: then it is the watch's first progress notice).
        w.queue.append(_Batch(batch, progress, size, False))

    # -- the state machine's hook and the driver's pass ---------------------------
    def on_events(self, events: Sequence[Any]) -> None:
        """The state machine applied an entry that produced `events` (called in apply)."""
        if self._by_range:
            self._pass.extend(events)

    def discard_pass(self) -> None:
        """Forget events of a pass that will not be flushed (the partition restarts)."""
        self._pass.clear()

    def flush(self, applied: int, now: float) -> None:
        """Hand the pass's events to the watches of their ranges (once per applied Ready)."""
        events, self._pass = self._pass, []
        if events:
            for r, matched in self._match(events):
                # Shared by the range's watches: the batch as each kind of
                # watch gets it (without previous values unless asked), made
                # once, and so encoded once by the sinks (`_pump`).
                shared: dict[bool, _Batch] = {}
                for w in list(self._by_range.get(r, ())):
                    pv = w.prev_values
                    batch = shared.get(pv)
                    if batch is None:
                        sent, size = _as_sent(matched, pv)
                        batch = shared[pv] = _Batch(
                            sent, max(applied, sent[-1].revision), size, True)
                    self._add_live(w, batch, now)
        if self._backed_up:
            self.pump_all(now)

    def _match(self, events: list[Any]) -> list[tuple[tuple[bytes, bytes | None], list[Any]]]:
        """``(range, its events in apply order)`` for each range that has any."""
        if len(self._by_range) < INDEX_FROM:
            out = []
            for r in self._by_range:
                start, end = r
                matched = [e for e in events if start <= e.key and (end is None or e.key < end)]
                if matched:
                    out.append((r, matched))
            return out
        index = self._index
        if index is None:
            index = self._index = _RangeIndex(self._by_range)
        return index.match(events)

    def _add_live(self, w: Watch, batch: _Batch, now: float) -> None:
        if batch.events[0].revision <= w.queued_upto:  # re-applied after a restart: skip
            matched = [e for e in batch.events if e.revision > w.queued_upto]
            if not matched:
                return
            batch = _Batch(matched, batch.progress,
                           sum(event_size(e, w.prev_values) for e in matched), True)
        w.live_events += len(batch.events)
        w.live_bytes += batch.size
        if w.live_events > self.max_events or w.live_bytes > self.max_bytes:
            self._overflow(w)
            return
        w.queue.append(batch)
        w.queued_upto = batch.progress
        self._pump(w, now)

    def _overflow(self, w: Watch, why: str = "") -> None:
        self.overflows += 1
        events, size = w.live_events, w.live_bytes
        self.close(w)
        why = why or (f"fell behind by more than {self.max_events} events or "
                      f"{self.max_bytes} bytes ({events} events, {size} bytes queued)")
        w.sink.end_watch(w, WatchOverflow(
            f"partition {self.partition}: watch {w.rid} ended: {why}; resume from the cursor",
            details={"partition": self.partition}))

    def _pump(self, w: Watch, now: float) -> None:
        """Move queued batches into the connection while it has room (module doc)."""
        sink = w.sink
        q = w.queue
        while q and sink.unsent_bytes < SINK_HIGH_WATER:
            events: list[Any] = []
            size = 0
            progress = 0
            taken = 0
            b = q[0]
            while q and (not taken or size + q[0].size <= FRAME_BYTES):
                b = q.popleft()
                if b.live:
                    w.live_events -= len(b.events)
                    w.live_bytes -= b.size
                events.extend(b.events)
                size += b.size
                progress = b.progress
                taken += 1
            # A frame of one live batch is the frame of every watch sharing it.
            shared = b if taken == 1 and b.live else None
            if not sink.send_events(w, events, progress, shared):
                self.close(w)  # the connection is closing: its cleanup forgets the rid
                return
            w.sent_at = now
            w.stalled_since = None
        if q:
            if w.live_events:
                if w.stalled_since is None:
                    w.stalled_since = now
                elif now - w.stalled_since > STALLED_S:
                    self._overflow(w, f"nothing left its queue for {STALLED_S:g} s")
                    return
            self._backed_up[w] = None
        else:
            self._backed_up.pop(w, None)

    def pump_all(self, now: float) -> None:
        """Pump every watch with queued batches (the socket may have taken more)."""
        for w in list(self._backed_up):
            self._pump(w, now)

    # -- ticks: idle notices, and pumping watches that waited for the socket -------
    def tick(self, applied: int, now: float) -> None:
        """Progress notices for idle watches; pump the backed-up ones."""
        if self._backed_up:
            self.pump_all(now)
        if now < self._next_notice_check:
            return
        self._next_notice_check = now + NOTICE_CHECK_S
        due = now - PROGRESS_INTERVAL_S
        for ws in list(self._by_range.values()):
            for w in list(ws):
                if w.sink.stalled_for(now) > STALLED_S:
                    self._overflow(w, f"its client took none of the connection's bytes for "
                                      f"{STALLED_S:g} s")
                    continue
                if w.sent_at > due or w.queue:
                    continue
                if applied > w.queued_upto:
                    w.queued_upto = applied
                if not w.sink.send_events(w, (), w.queued_upto):
                    self.close(w)
                    continue
                w.sent_at = now

    # -- a replaced history -------------------------------------------------------
    def history_reset(self, index: int) -> None:
        """A snapshot at `index` was installed: end watches that may have missed events."""
        self._pass.clear()
        for ws in list(self._by_range.values()):
            for w in list(ws):
                if w.queued_upto < index:
                    self.close(w)
                    w.sink.end_watch(w, Unavailable(
                        f"partition {self.partition}: this replica installed a snapshot at "
                        f"index {index}, past the watch's progress {w.queued_upto}; resume "
                        "the watch from its cursor", details={"partition": self.partition}))

    def close_all(self, error: PrkdbError) -> None:
        """End every watch with `error` (the node shuts down)."""
        for ws in list(self._by_range.values()):
            for w in list(ws):
                self.close(w)
                w.sink.end_watch(w, error)
