"""Watches: the cursor, per-partition resume, and the plan every front end drives.

Theory of operation
-------------------
A watch of a key range opens one server stream (a ``Watch`` request whose
answers repeat, prkdb.wire) per partition the range may hold keys of: all
of them, or the one a hash-tagged prefix pins (`prkdb.client.scan`). Any
replica serves a stream from its own applied state, so streams go to
followers first, spread over the nodes by partition.

This module is pure (no I/O, no clock of its own). `WatchPlan` is a
generator, like the core's plans, that yields actions a front end carries
out in its own kind of I/O:

- `OpenStream`: dial ``address`` if needed, send the request ``build``
  makes, and route every later frame with that request id to the watch's
  inbox under ``token``; answer with a handle for `CancelStream`, or throw
  what failed (`ConnectFailed`, `ConnectionLost`, `AttemptExpired`).
- `CancelStream`: stop routing ``handle``'s frames and send ``cancel`` (a
  ``WatchCancel``) if the connection still lives; answer None.
- `AwaitFrames`: wait until the inbox holds something or the clock reaches
  ``deadline``; answer with everything in it, as ``(token, frame or
  exception)`` pairs in arrival order (an exception ends that stream).
- `Deliver`: hand ``events`` (all of one revision of one partition) to the
  caller, one at a time; answer None once the caller took the last one.

Per partition a `PartitionFeed` keeps two revisions: ``received`` (every
event up to it is in the plan's hands: delivered or queued) and the cursor
(every event up to it was delivered). A stream that fails for any reason a
retry can cure (a lost connection, a node that died or froze, which shows as
silence past `IDLE_TIMEOUT` since servers send a progress notice at least
every second; WATCH_OVERFLOW; UNAVAILABLE) is reopened at another replica
with ``after = received``, after a jittered backoff. A frame may repeat what
an earlier stream sent, or a lagging replica may know less than we do: an
event with revision <= ``received`` is dropped, and ``received`` never goes
back. COMPACTED is raised to the caller as `Compacted` naming the partition
and the oldest revision the node still holds (relist, then watch again), once
every node said so: a replica that restarted from a snapshot holds a shorter
history than the others, so the other replicas are asked first.

The cursor moves one whole revision at a time: after the last event of a
revision is delivered, and to a frame's ``progress`` once every event of that
frame is. A caller that stops in the middle of a revision (several events of
one txn) gets that revision again when it resumes from the cursor.

Invariants: per partition, delivered revisions strictly increase (each
revision's events together, in the server's order); nothing at or below the
cursor is ever delivered; ``cursor <= received``.

The cursor, serialised: base64url (no padding) of the CBOR array ``[1,
{partition: revision}]``; `WatchCursor.encode` / `WatchCursor.decode`.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

import cbor2

from prkdb.client.attempt import AttemptExpired, ConnectFailed, ConnectionLost, error_from_frame
from prkdb.client.core import SUSPECT_FOR, ClientCore, Plan
from prkdb.client.results import WatchEvent
from prkdb.client.scan import KeyRange
from prkdb.errors import (
    Compacted,
    ErrorCode,
    InternalError,
    InvalidRequest,
    NotLeader,
    OutcomeUnknown,
    ProtocolError,
    Unavailable,
    WatchOverflow,
)
from prkdb.wire import encode_message
from prkdb.wire.messages import Error, Event, Watch, WatchCancel, WatchEvents, to_wire

__all__ = [
    "CURSOR_VERSION",
    "IDLE_TIMEOUT",
    "PENDING_EVENTS_LIMIT",
    "STREAM_FRAME_LIMIT",
    "AwaitFrames",
    "CancelStream",
    "Deliver",
    "OpenStream",
    "PartitionFeed",
    "WatchCursor",
    "WatchDriver",
    "WatchInbox",
    "WatchPlan",
    "cancel_array",
    "current_cursor",
    "fatal_error",
    "new_watch_plan",
    "pick_replica",
    "watch_start",
]

CURSOR_VERSION: Final = 1
"""First element of an encoded cursor's CBOR array; bump on any layout change."""

IDLE_TIMEOUT: Final = 3.0
"""Seconds of silence after which a stream is taken for dead (servers send a
progress notice at least every second, so a live stream is never this quiet;
a frozen node or a cut link keeps its TCP connection open and only shows
this way)."""

STREAM_FRAME_LIMIT: Final = 1024
"""Frames a front end's inbox holds per stream while the plan does not read it
(the caller is busy with an event); beyond, the front end cancels the stream
and ends it with `WatchOverflow`, and the plan resumes it from ``received``."""

PENDING_EVENTS_LIMIT: Final = 10_000
"""Events the plan holds per partition, received but not yet delivered; at the
limit it cancels that partition's stream and reopens it from ``received`` once
the caller has taken half of them. With `STREAM_FRAME_LIMIT`, a slow caller
costs bounded memory and never makes the server's buffer overflow for long."""

RELOGINS: Final = 3
"""Reopens with a Login pipelined before the Watch after UNAUTHENTICATED, in a row
(no frame between), before the error is raised to the caller."""

_MAX_CURSOR: Final = 1 << 20  # characters; a cursor is a few bytes per partition
_BACKOFF_BASE: Final = 0.05  # seconds; the first reopen waits 25-50 ms
_BACKOFF_CAP: Final = 2.0  # seconds; no single wait is longer


# --- the cursor ------------------------------------------------------------------------


@final
class WatchCursor(Mapping[int, int]):
    """Where a watch is: partition -> the revision up to which everything was delivered.

    Immutable; a mapping. Pass it as ``watch(cursor=...)`` to resume exactly
    after what was delivered, or store `encode`'s text and `decode` it later.
    """

    __slots__ = ("_revisions",)

    def __init__(self, revisions: Mapping[int, int] | Iterable[tuple[int, int]] = ()) -> None:
        items = dict(revisions)
        for partition, revision in items.items():
            for what, n in (("partition", partition), ("revision", revision)):
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise InvalidRequest(f"watch cursor: {what} {n!r} must be an int >= 0")
        self._revisions: dict[int, int] = dict(sorted(items.items()))

    def __getitem__(self, partition: int) -> int:
        return self._revisions[partition]

    def __iter__(self) -> Iterator[int]:
        return iter(self._revisions)

    def __len__(self) -> int:
        return len(self._revisions)

    def __repr__(self) -> str:
        return f"WatchCursor({self._revisions!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WatchCursor):
            return self._revisions == other._revisions
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._revisions.items()))

    def encode(self) -> str:
        """Opaque text (base64url, no padding) that `decode` reads back."""
        body = cbor2.dumps([CURSOR_VERSION, self._revisions])
        return base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")

    def __str__(self) -> str:
        return self.encode()

    def to_bytes(self) -> bytes:
        """`encode` as ASCII bytes."""
        return self.encode().encode("ascii")

    @classmethod
    def decode(cls, text: str | bytes) -> WatchCursor:
        """Read a cursor made by `encode` (str, or the same as bytes).

        Raises:
            InvalidRequest: not a cursor this SDK made (damaged, truncated,
                or of an incompatible version).
        """
        if isinstance(text, str):
            try:
                text = text.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidRequest("watch cursor is not base64url text") from None
        if not isinstance(text, bytes):
            raise InvalidRequest(f"watch cursor must be str or bytes, got {type(text).__name__}")
        if not text or len(text) > _MAX_CURSOR:
            raise InvalidRequest(f"watch cursor of {len(text)} bytes is not one this SDK made")
        try:
            fields: Any = cbor2.loads(base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4)))
        except (binascii.Error, ValueError, cbor2.CBORDecodeError):
            raise InvalidRequest(f"watch cursor {text[:40]!r} is damaged") from None
        match fields:
            case [1, dict() as revisions]:
                return cls(revisions)
            case [int() as version, *_] if version != CURSOR_VERSION:
                raise InvalidRequest(f"watch cursor version {version} is not supported "
                                     f"(this SDK makes version {CURSOR_VERSION})")
        raise InvalidRequest(f"watch cursor {text[:40]!r} is not one this SDK made")

    @classmethod
    def parse(cls, cursor: object) -> WatchCursor:
        """A cursor as the API accepts it: a `WatchCursor`, its text or bytes, or a mapping."""
        if isinstance(cursor, WatchCursor):
            return cursor
        if isinstance(cursor, str | bytes):
            return cls.decode(cursor)
        if isinstance(cursor, Mapping):
            return cls(cursor)
        raise InvalidRequest(f"watch cursor must be a WatchCursor, its text or a mapping, "
                             f"got {type(cursor).__name__}")


# --- choosing a replica ------------------------------------------------------------------


def pick_replica(addresses: Sequence[str], leader: str | None, partition: int, turn: int,
                 avoid: Callable[[str], bool]) -> str:
    """The node to open `partition`'s stream at: a follower first, spread by partition.

    Args:
        addresses: every node, in node id order (not empty).
        leader: the partition's cached leader (a last resort), if known.
        partition: spreads the streams of one watch over the followers.
        turn: bumped on every reopen, so a retry moves on to the next node.
        avoid: true for nodes that failed recently (tried only if all did).
    """
    followers = [a for a in addresses if a != leader]
    pool = [a for a in followers if not avoid(a)]
    if not pool:
        pool = [a for a in addresses if not avoid(a)] or list(addresses)
    return pool[(partition + turn) % len(pool)]


# --- actions -----------------------------------------------------------------------------


@final
@dataclass(slots=True)
class OpenStream:
    """Action: open a stream at `address` (module doc); answer with its handle."""

    address: str
    build: Callable[[int], Any]  # request id -> the Watch request's wire array
    token: object  # what the inbox pairs this stream's frames with
    deadline: float  # for the dial and the sending


@final
@dataclass(slots=True)
class CancelStream:
    """Action: stop a stream (module doc); answer None."""

    handle: Any
    cancel: Callable[[int], Any]  # the stream's request id -> the WatchCancel wire array


@final
@dataclass(slots=True)
class AwaitFrames:
    """Action: wait for the inbox or `deadline` (module doc); answer with its contents."""

    deadline: float


@final
@dataclass(slots=True)
class Deliver:
    """Action: give `events` (one revision of one partition) to the caller; answer None."""

    events: list[WatchEvent]


WatchAction = OpenStream | CancelStream | AwaitFrames | Deliver


# --- the front end's inbox --------------------------------------------------------------


@final
class WatchInbox:
    """What the streams of one watch received and the plan did not take yet.

    A connection's reader calls `push` (through the sink `sink_for` makes);
    the front end answers `AwaitFrames` with `take`. `wake` is called when
    the inbox goes from empty to non-empty (the front end sets its event).
    """

    __slots__ = ("_counts", "_items", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self._items: list[tuple[object, object]] = []
        self._counts: dict[object, int] = {}  # token -> frames held (bounded per stream)
        self.wake = wake

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, token: object, item: object) -> bool:
        """File a frame or an ending; False: over `STREAM_FRAME_LIMIT`, end the stream.

        Once a stream is over the limit, `push` itself files its ending
        (`WatchOverflow`): the front end only has to cancel it.
        """
        count = self._counts.get(token, 0)
        if count < 0:
            return True  # already ended: drop
        if not isinstance(item, BaseException | Error) and count >= STREAM_FRAME_LIMIT:
            item = WatchOverflow("the watch's caller fell behind its stream (client side)")
            ok = False
        else:
            ok = True
        ended = isinstance(item, BaseException | Error)
        self._counts[token] = -1 if ended else count + 1
        was_empty = not self._items
        self._items.append((token, item))
        if was_empty:
            self.wake()
        return ok

    def take(self) -> list[tuple[object, object]]:
        """Everything filed, in arrival order; the inbox is empty after."""
        items, self._items = self._items, []
        for token, _ in items:
            count = self._counts.get(token, 0)
            if count > 0:
                self._counts[token] = count - 1
        return items

    def forget(self, token: object) -> None:
        """A stream the plan gave up on: its later frames are dropped."""
        self._counts[token] = -1


# --- one partition ---------------------------------------------------------------------


@final
class PartitionFeed:
    """One partition's stream: what was received and delivered, and where it is open."""

    __slots__ = ("address", "compacted", "cursor", "failures", "handle", "partition", "pending",
                 "received", "relogin", "retry_at", "silent_since", "token", "turn")

    def __init__(self, partition: int, after: int) -> None:
        self.partition = partition
        #: Every event with revision <= received was received (delivered or in `pending`).
        self.received = after
        #: Every event with revision <= cursor was delivered. Invariant: cursor <= received.
        self.cursor = after
        #: Received, not yet delivered: (revision, its events) in revision order, and
        #: progress markers as (revision, None).
        self.pending: deque[tuple[int, list[WatchEvent] | None]] = deque()
        self.handle: Any = None  # the open stream's handle (None: closed)
        self.token: object = None  # the open stream's inbox token
        self.address: str | None = None
        self.turn = 0  # reopens so far (moves the replica choice on)
        self.failures = 0  # reopens since the last frame (sets the backoff)
        self.retry_at = 0.0  # clock time of the next open while closed
        self.silent_since = 0.0  # clock time of the last frame (or the open)
        #: Nodes that answered COMPACTED for `received` (cleared by any frame): a replica
        #: that restarted from a snapshot keeps less history than the others.
        self.compacted: set[str] = set()
        #: Streams ended UNAUTHENTICATED (an expired token) since the last frame: the
        #: next open logs in first; the third in a row is raised.
        self.relogin = 0

    def accept(self, events: Sequence[Event], progress: int, key_range: KeyRange,
               where: str) -> int:
        """File one WatchEvents frame; returns how many events it added.

        Drops events at or below `received` (a repeat after a reopen) and
        events outside `key_range` (defensive; a server sends none).

        Raises:
            ProtocolError: revisions out of order within the frame.
        """
        added = 0
        last = self.received
        partition = self.partition
        previous = 0
        group: list[WatchEvent] | None = None
        for ev in events:
            revision = ev.revision
            if revision < previous:
                raise ProtocolError(f"{where}: watch frame of partition {partition} goes back "
                                    f"from revision {previous} to {revision}")
            previous = revision
            if revision <= last or ev.key not in key_range:
                continue
            if group is None or revision != self.pending[-1][0]:
                group = []
                self.pending.append((revision, group))
            group.append(WatchEvent(ev.kind, ev.key, revision, partition, ev.value,
                                    ev.prev_value))
            added += 1
        top = max(progress, previous)
        if top > last:
            self.received = top
            if not self.pending or self.pending[-1][0] < top:
                self.pending.append((top, None))
        return added

    @property
    def pending_events(self) -> int:
        return sum(len(g) for _, g in self.pending if g is not None)


# --- the plan ----------------------------------------------------------------------------


@final
class WatchPlan:
    """A watch in progress; `run` is the generator a front end drives (module doc).

    Args:
        key_range: the keys watched.
        start: partition -> the revision to deliver after (every partition watched).
        prev_values: ask for each event's previous value too.
        addresses: () -> every node's address, in node id order.
        leader_of: partition -> its cached leader's address, or None.
        suspected / suspect: the core's memory of nodes that failed recently.
        clock: the front end's clock, seconds.
        rng: jitter for the backoff.
        login: () -> a Login frame with the client's credentials, or None: a stream
            that ends UNAUTHENTICATED (its connection's token expired) is reopened at
            once with it pipelined before the Watch; `RELOGINS` times in a row at most
            (a replica that applies a password change late may refuse one), then it
            is raised.
    """

    def __init__(self, key_range: KeyRange, start: Mapping[int, int], prev_values: bool, *,
                 addresses: Callable[[], Sequence[str]],
                 leader_of: Callable[[int], str | None],
                 suspected: Callable[[str], bool],
                 suspect: Callable[[str], None],
                 clock: Callable[[], float],
                 rng: random.Random,
                 login: Callable[[], bytes] | None = None) -> None:
        self.range = key_range
        self.prev_values = prev_values
        self.feeds = {p: PartitionFeed(p, after) for p, after in sorted(start.items())}
        self._addresses = addresses
        self._leader_of = leader_of
        self._suspected = suspected
        self._suspect = suspect
        self._clock = clock
        self._rng = rng
        # The frame of a Login with the client's credentials (None: none), sent before
        # a Watch reopened after UNAUTHENTICATED.
        self._login = login
        self._tokens: dict[object, PartitionFeed] = {}
        self._next_token = 0
        self.opened = 0  # streams opened so far (tests and logs)
        self.closed = False

    @property
    def cursor(self) -> WatchCursor:
        """What was delivered, per partition."""
        return WatchCursor({p: f.cursor for p, f in self.feeds.items()})

    def run(self) -> Generator[WatchAction, Any, None]:
        """Deliver events forever (until the caller stops, or `Compacted` / a fatal error)."""
        try:
            while True:
                yield from self._deliver_ready()
                yield from self._open_due()
                inbox = yield AwaitFrames(self._next_deadline())
                now = self._clock()
                for token, item in inbox:
                    feed = self._tokens.get(token)
                    if feed is None or feed.token != token:
                        continue  # a stream we already gave up on
                    yield from self._on_item(feed, item, now)
                yield from self._check_silence(now)
        finally:
            self.closed = True

    @property
    def streams(self) -> dict[int, str]:
        """Partition -> the address its stream is open at (partitions reconnecting: absent)."""
        return {p: f.address for p, f in self.feeds.items()
                if f.handle is not None and f.address is not None}

    def close_actions(self) -> list[CancelStream]:
        """The cancels a front end sends when the caller stops (every open stream)."""
        out = []
        for feed in self.feeds.values():
            if feed.handle is not None:
                out.append(CancelStream(feed.handle, cancel_array))
                feed.handle = None
                feed.token = None
        return out

    # --- internals --------------------------------------------------------------------

    def _deliver_ready(self) -> Generator[WatchAction, Any, None]:
        # Round-robin over partitions, one revision each, so no partition starves.
        busy = True
        while busy:
            busy = False
            for feed in self.feeds.values():
                while feed.pending:
                    revision, events = feed.pending.popleft()
                    if events is None:
                        feed.cursor = max(feed.cursor, revision)
                        continue
                    if revision <= feed.cursor:
                        continue  # never deliver at or below the cursor (defensive)
                    yield Deliver(events)
                    feed.cursor = revision
                    busy = True
                    break
        # A stream paused for a slow caller (its handle dropped) reopens below.

    def _open_due(self) -> Generator[WatchAction, Any, None]:
        now = self._clock()
        for feed in self.feeds.values():
            if feed.handle is not None or feed.retry_at > now:
                continue
            if feed.pending_events > PENDING_EVENTS_LIMIT // 2:
                continue  # the caller has not caught up yet
            yield from self._open(feed, now)

    def _open(self, feed: PartitionFeed, now: float) -> Generator[WatchAction, Any, None]:
        addresses = self._addresses()
        if not addresses:
            raise ProtocolError("watch: the topology names no nodes")
        compacted = feed.compacted
        suspected = self._suspected

        def avoid(address: str) -> bool:
            return address in compacted or suspected(address)

        if compacted:  # try every replica that did not say COMPACTED, suspects last
            addresses = [a for a in addresses if a not in compacted] or addresses
        address = pick_replica(addresses, self._leader_of(feed.partition), feed.partition,
                               feed.turn, avoid)
        feed.turn += 1
        self._next_token += 1
        token = (feed.partition, self._next_token)
        partition, start, end = feed.partition, self.range.start, self.range.end
        after, prev = feed.received, self.prev_values
        login = self._login if feed.relogin else None

        def watch_request(rid: int) -> Any:
            if login is not None:  # a Login pipelined before the Watch (the node serves
                # them in order); its answer carries an id no request has, and is dropped
                return login() + encode_message(Watch(rid, partition, start, end, after, prev))
            return to_wire(Watch(rid, partition, start, end, after, prev))

        try:
            handle = yield OpenStream(address, watch_request, token, now + IDLE_TIMEOUT)
        except Exception as exc:
            if fatal_error(exc, address) is not None:
                raise
            self._failed(feed, address, now)
            return
        self.opened += 1
        feed.handle, feed.token, feed.address = handle, token, address
        feed.silent_since = now
        self._tokens = {t: f for t, f in self._tokens.items() if f.token == t}
        self._tokens[token] = feed

    def _on_item(self, feed: PartitionFeed, item: Any, now: float,
                 ) -> Generator[WatchAction, Any, None]:
        address = feed.address or "a node"
        if not isinstance(item, WatchEvents):
            # The stream ended: a lost connection, a local overflow, or an Error frame.
            feed.handle = feed.token = None
            if (self._login is not None and feed.relogin < RELOGINS and isinstance(item, Error)
                    and item.code == ErrorCode.UNAUTHENTICATED):
                feed.relogin += 1  # (a token that expired): at once, with a login
                feed.retry_at = now
                return
            fatal = fatal_error(item, address)
            if isinstance(fatal, Compacted):
                feed.compacted.add(address)
                if not set(self._addresses()) <= feed.compacted:
                    feed.retry_at = now  # another replica may still hold the history
                    return
                raise Compacted(fatal.oldest, partition=feed.partition,
                                details=fatal.details) from None
            if fatal is not None:
                raise fatal
            self._failed(feed, address, now)
            return
        if item.partition != feed.partition:
            raise ProtocolError(f"{address}: watch frame of partition {item.partition} on the "
                                f"stream of partition {feed.partition}")
        feed.silent_since = now
        feed.failures = 0
        feed.relogin = 0
        feed.compacted.clear()
        feed.accept(item.events, item.progress, self.range, address)
        if feed.pending_events >= PENDING_EVENTS_LIMIT and feed.handle is not None:
            # The caller is slow: stop this stream, resume from `received` later.
            yield CancelStream(feed.handle, cancel_array)
            feed.handle = feed.token = None

    def _check_silence(self, now: float) -> Generator[WatchAction, Any, None]:
        for feed in self.feeds.values():
            if feed.handle is not None and now - feed.silent_since >= IDLE_TIMEOUT:
                yield CancelStream(feed.handle, cancel_array)
                feed.handle = feed.token = None
                if feed.address is not None:
                    self._suspect(feed.address)
                self._failed(feed, feed.address or "", now)

    def _failed(self, feed: PartitionFeed, address: str, now: float) -> None:
        """Schedule a reopen of `feed` elsewhere after a jittered, growing pause."""
        feed.failures += 1
        bound = min(_BACKOFF_BASE * 2 ** min(feed.failures - 1, 16), _BACKOFF_CAP)
        feed.retry_at = now + (self._rng.uniform(bound / 2, bound) if feed.failures > 1 else 0)

    def _next_deadline(self) -> float:
        deadlines = []
        for feed in self.feeds.values():
            if feed.handle is not None:
                deadlines.append(feed.silent_since + IDLE_TIMEOUT)
            elif feed.pending_events <= PENDING_EVENTS_LIMIT // 2:
                deadlines.append(feed.retry_at)
        return min(deadlines, default=self._clock() + IDLE_TIMEOUT)


# --- stepping the plan -------------------------------------------------------------------


@final
class WatchDriver:
    """Steps a `WatchPlan` for a front end's iterator: events out, I/O actions to carry out.

    Loop: ``event = driver.next_event()``; if None, carry out
    ``driver.action`` (an `OpenStream`, `CancelStream` or `AwaitFrames`) and
    `answer` or `fail` it. The plan learns that an event was delivered when
    the caller asks for the next one, except the last of a revision: its
    revision enters the cursor as it is handed out, so a caller that saves
    ``cursor`` after each event resumes with no duplicate.
    """

    __slots__ = ("_batch", "_error", "_gen", "action", "finished", "plan")

    def __init__(self, plan: WatchPlan) -> None:
        self.plan = plan
        self._gen = plan.run()
        self._batch: deque[WatchEvent] = deque()
        self._error: BaseException | None = None
        self.finished = False
        self.action: WatchAction | None = None
        self._step(lambda: next(self._gen))

    def next_event(self) -> WatchEvent | None:
        """The next event to hand out, or None: carry out `action` first.

        Raises:
            Compacted: a partition's history no longer holds the cursor.
            PrkdbError: a fatal error of a stream (InvalidRequest, ...).
        """
        while True:
            if self._batch:
                event = self._batch.popleft()
                if not self._batch:
                    self.answer(None)  # the revision is delivered: the cursor moves now
                return event
            if self._error is not None:
                error, self._error = self._error, None
                self.finished = True
                raise error
            action = self.action
            if isinstance(action, Deliver):
                self._batch.extend(action.events)
                self.action = None
                continue
            return None

    def answer(self, value: object) -> None:
        """The result of `action` (a handle, None, or the inbox's contents)."""
        self._step(lambda: self._gen.send(value))

    def fail(self, exc: Exception) -> None:
        """`action` failed with `exc` (the plan judges it)."""
        self._step(lambda: self._gen.throw(exc))

    def close(self) -> list[CancelStream]:
        """Stop the plan; the cancels of its open streams, for the front end to send."""
        self.finished = True
        cancels = self.plan.close_actions()
        self._gen.close()
        return cancels

    def _step(self, step: Callable[[], WatchAction]) -> None:
        try:
            self.action = step()
        except StopIteration:
            self.action = None
            self.finished = True
        except Exception as exc:  # raised by the next `next_event`, after the batch
            self.action = None
            self._error = exc


# --- starting a watch -----------------------------------------------------------------


def current_cursor(core: ClientCore, key_range: KeyRange,
                   timeout: float | None) -> Plan[WatchCursor]:
    """A cursor at "now" for every partition `key_range` covers (one Status to any node).

    Each revision is the answering node's applied index: at most what a
    linearizable read made after this returns sees. So list-then-watch (this
    cursor, then a scan, then ``watch(cursor=...)``) misses nothing; events
    between the cursor and the scan may repeat what the scan showed, and
    applying them in order ends in the same state.
    """
    partitions = yield from core.scan_partitions(key_range, timeout)
    if not partitions:
        return WatchCursor()
    status = yield from core.status(None, timeout)
    applied = {ps.partition: ps.applied for ps in status.partitions}
    return WatchCursor({p: applied.get(p, 0) for p in partitions})


def watch_start(core: ClientCore, key_range: KeyRange, cursor: object,
                timeout: float | None) -> Plan[dict[int, int]]:
    """partition -> revision to watch after: from `cursor`, "now" where it says nothing.

    Raises:
        InvalidRequest: a damaged cursor, or an empty range.
    """
    if key_range.empty:
        raise InvalidRequest(f"watch: the range [{key_range.start[:32]!r}, "
                             f"{key_range.end!r:.40}) is empty")
    given = WatchCursor.parse(cursor) if cursor is not None else WatchCursor()
    partitions = yield from core.scan_partitions(key_range, timeout)
    start = {p: given[p] for p in partitions if p in given}
    if len(start) < len(partitions):
        now = yield from current_cursor(core, key_range, timeout)
        for p in partitions:
            start.setdefault(p, now.get(p, 0))
    return start


def new_watch_plan(core: ClientCore, key_range: KeyRange, start: Mapping[int, int],
                   prev_values: bool) -> WatchPlan:
    """A `WatchPlan` that routes with `core`'s topology and suspects."""
    topology = core.topology
    clock = core.clock

    def leader_of(partition: int) -> str | None:
        return topology.address_of(topology.leader_of(partition))

    def suspected(address: str) -> bool:
        return core.suspected(address, clock())

    def suspect(address: str) -> None:
        core.suspects[address] = clock() + SUSPECT_FOR

    return WatchPlan(key_range, start, bool(prev_values), addresses=topology.addresses_by_id,
                     leader_of=leader_of, suspected=suspected, suspect=suspect, clock=clock,
                     rng=core.rng, login=core.login_frame if core.credentials else None)


def cancel_array(request_id: int) -> Any:
    """The WatchCancel of the stream `request_id` (a wire array)."""
    return to_wire(WatchCancel(request_id))


def fatal_error(item: object, address: str) -> BaseException | None:
    """None if a stream that ended with `item` (an exception or an Error frame) may be
    reopened elsewhere; else the exception to raise to the caller.

    Reopened: a lost connection or failed dial, silence, UNAVAILABLE and its
    kinds (TIMEOUT, WATCH_OVERFLOW), NOT_LEADER (any replica serves watches;
    a server that says otherwise is passed over), INTERNAL and OUTCOME_UNKNOWN.
    """
    if isinstance(item, ConnectFailed | ConnectionLost | AttemptExpired):
        return None
    if isinstance(item, Error):
        err: BaseException = error_from_frame(item)
    elif isinstance(item, BaseException):
        err = item
    else:
        return ProtocolError(f"{address}: answered a watch with {type(item).__name__}")
    if isinstance(err, Unavailable | NotLeader | InternalError | OutcomeUnknown):
        return None
    return err
