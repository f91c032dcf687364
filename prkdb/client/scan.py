"""Scans across partitions: the key range, the page merge and the continuation token.

Theory of operation
-------------------
A key range ``[start, end)`` lives in every partition (keys are spread by
hash), so a scan asks each partition for its part and merges the answers by
key. This module is pure (no I/O, no clock): `ClientCore` makes the requests
it asks for, and the front ends only carry them out.

`ScanMerge` keeps one cursor per partition: the keys it received and has
not delivered yet (its *buffer*), the key to ask from next (just after the
last one received) and whether the partition said it has ``more``. A key
can be delivered only when it is the smallest head of all buffers *and*
no partition is *waiting* (buffer empty but ``more``): such a partition's
next key is unknown and might be smaller. So:

1. `requests` names the waiting partitions, each with ``limit = min(left,
   page_size)`` (``left`` = keys the caller still wants): a partition is
   fetched again only when its buffer is empty and it reported more, so a
   small limit reads a page per partition, never every partition to its end;
2. `add_page` files an answer (checked: ascending, inside the range, no
   larger than asked, and not empty when it says ``more``);
3. `pop_ready` delivers keys in order until a partition is waiting, the
   limit is reached, or everything is delivered.

Invariants: every delivered key is larger than the one before; a key
reaches a buffer at most once (each request starts after the last key
received from that partition); the merge is *finished* when no partition
is waiting and every buffer is empty, or the limit is reached.

What the caller gets: each key that exists in the range for the whole scan
is delivered exactly once, in key order. Each partition page is read at one
linearizable point (at the consistency asked); pages of one partition, and
different partitions, are read at different points, so there is no
cross-partition snapshot: a key written or deleted during the scan may or
may not appear.

The continuation token is opaque to callers: base64url (no padding) of the
CBOR array ``[1, next_start_key, end, keys_only, limit_left]``, where
``next_start_key`` is the smallest key after the last one delivered and
``limit_left`` is 0 for "no limit". Resuming restarts every partition from
``next_start_key``, so a resumed scan needs no server state.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar, final

import cbor2

from prkdb.errors import InvalidRequest, ProtocolError
from prkdb.partitioning import hash_slice

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "TOKEN_VERSION",
    "KeyRange",
    "PageRequest",
    "ScanMerge",
    "ScanToken",
    "decode_token",
    "encode_token",
    "key_after",
    "key_range",
    "pinned_key",
    "prefix_end",
]

DEFAULT_PAGE_SIZE: Final = 1000
"""Keys asked of one partition per request (the server's default page cap)."""

TOKEN_VERSION: Final = 1
"""First element of a token's CBOR array; bump on any layout change, keep reading old ones."""

_MAX_TOKEN: Final = 1 << 20  # characters; a token holds two keys at most, each far smaller


class _Keyed(Protocol):
    """What the merge needs of an item: its key (wire `KeyValue` records have one)."""

    @property
    def key(self) -> bytes: ...


KV = TypeVar("KV", bound=_Keyed)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with `prefix` (None: no such key).

    ``[prefix, prefix_end(prefix))`` is exactly the keys starting with
    `prefix`: drop trailing 0xff bytes, then add one to the last byte.
    ``b""`` and all-0xff prefixes have no end (they reach the last key).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def key_after(key: bytes) -> bytes:
    """The smallest key greater than `key` (the next scan starts there)."""
    return key + b"\x00"


@final
@dataclass(frozen=True, slots=True)
class KeyRange:
    """Keys ``start <= k < end``; ``end`` None means up to the last key."""

    start: bytes
    end: bytes | None

    @property
    def empty(self) -> bool:
        return self.end is not None and self.end <= self.start

    def __contains__(self, key: object) -> bool:
        return (isinstance(key, bytes) and key >= self.start
                and (self.end is None or key < self.end))


def _optional_bytes(value: object, name: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise InvalidRequest(f"scan: {name} must be bytes or None, got {type(value).__name__}")
    return value


def key_range(prefix: object = None, start: object = None, end: object = None) -> KeyRange:
    """The keys a scan covers: every key starting with `prefix`, or ``[start, end)``.

    All None: every key. ``prefix=b""`` is every key too.

    Raises:
        InvalidRequest: a prefix together with start/end (one or the other),
            or an argument that is not bytes.
    """
    prefix_b = _optional_bytes(prefix, "prefix")
    start_b = _optional_bytes(start, "start")
    end_b = _optional_bytes(end, "end")
    if prefix_b is not None:
        if start_b is not None or end_b is not None:
            raise InvalidRequest("scan: give a prefix or start/end, not both "
                                 f"(prefix={prefix_b[:32]!r}, start={start_b!r:.40}, "
                                 f"end={end_b!r:.40})")
        return KeyRange(prefix_b, prefix_end(prefix_b))
    return KeyRange(start_b or b"", end_b)


def pinned_key(rng: KeyRange) -> bytes | None:
    """Under the "hashtag" key rule: a key in the one partition holding all of `rng`, or None.

    Every key of ``[start, end)`` starts with the same ``...{tag}`` when
    `start` has a hash tag (`prkdb.partitioning.hash_slice`) and `end` is at
    most the end of the prefix up to the tag's ``}``: then they all share
    that tag and so a partition. A prefix scan of ``b"{user:42}/"``, or its
    resumption from a token, reads one partition instead of all.
    """
    start, end = rng.start, rng.end
    if end is None or b"{" not in start:
        return None
    tag = hash_slice(start)
    if len(tag) == len(start):  # no tag: the whole key is hashed
        return None
    tagged = start[: start.find(b"{") + len(tag) + 2]  # up to and including the "}"
    limit = prefix_end(tagged)
    if limit is None or end > limit:
        return None
    return tagged


def check_count(value: object, name: str) -> int:
    """`value` as an int >= 0 (limits: 0 = none).

    Raises:
        InvalidRequest: not an int, or negative.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"scan: {name} ({value!r}) must be an int >= 0")
    return value


# --- the continuation token ----------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ScanToken:
    """Where a paged scan goes on: what a token says, decoded.

    Attributes:
        range: the keys still to scan (``start`` is just after the last key delivered).
        keys_only: as the scan that made the token.
        limit_left: keys the caller still wants; 0 = no limit.
    """

    range: KeyRange
    keys_only: bool
    limit_left: int


def encode_token(token: ScanToken) -> bytes:
    """The opaque bytes a `ScanPage` carries (module doc: base64url of a CBOR array)."""
    body = cbor2.dumps([TOKEN_VERSION, token.range.start, token.range.end, token.keys_only,
                        token.limit_left])
    return base64.urlsafe_b64encode(body).rstrip(b"=")


def decode_token(token: object) -> ScanToken:
    """Read a token made by `encode_token` (bytes, or the same as str: from a URL, say).

    Raises:
        InvalidRequest: not a token this SDK made (damaged, truncated, or
            from an incompatible version).
    """
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidRequest("scan token is not base64url text") from None
    if not isinstance(token, bytes):
        raise InvalidRequest(f"scan token must be bytes or str, got {type(token).__name__}")
    if not token or len(token) > _MAX_TOKEN:
        raise InvalidRequest(f"scan token of {len(token)} bytes is not one this SDK made")
    try:
        body = base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))
        fields: Any = cbor2.loads(body)
    except (binascii.Error, ValueError, cbor2.CBORDecodeError):
        raise InvalidRequest(f"scan token {token[:40]!r} is damaged") from None
    match fields:
        case [1, bytes() as start, bytes() | None as end, bool() as keys_only,
              int() as limit_left] if limit_left >= 0 and not isinstance(limit_left, bool):
            return ScanToken(KeyRange(start, end), keys_only, limit_left)
        case [int() as version, *_] if version != TOKEN_VERSION:
            raise InvalidRequest(f"scan token version {version} is not supported "
                                 f"(this SDK makes version {TOKEN_VERSION})")
    raise InvalidRequest(f"scan token {token[:40]!r} is not one this SDK made")


# --- the merge -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class PageRequest:
    """Ask `partition` for at most `limit` keys in ``[start, end)``."""

    partition: int
    start: bytes
    end: bytes | None
    limit: int


@final
class _Cursor(Generic[KV]):
    """One partition's part of the merge."""

    __slots__ = ("buffer", "more", "next_start")

    def __init__(self, start: bytes) -> None:
        #: Received, not yet delivered, ascending. Invariant: every key < next_start.
        self.buffer: deque[KV] = deque()
        #: The partition may have keys >= next_start in range (True until it says no).
        self.more = True
        #: Where the next request for this partition starts.
        self.next_start = start


@final
class ScanMerge(Generic[KV]):
    """Merges pages of several partitions into one key-ordered stream (module doc).

    Args:
        partitions: the partitions that may hold keys of the range.
        key_range: the keys to scan.
        limit: deliver at most this many keys in all; 0 = no limit.
        page_size: keys asked of one partition per request (>= 1).
    """

    __slots__ = ("_cursors", "_delivered", "_heap", "_last", "_left", "_page_size", "_range",
                 "_waiting")

    def __init__(self, partitions: Iterable[int], key_range: KeyRange, limit: int = 0,
                 page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1:
            raise InvalidRequest(f"scan: page_size ({page_size!r}) must be >= 1")
        self._range = key_range
        self._page_size = page_size
        #: Keys the caller still wants; None = no limit. Invariant: never negative.
        self._left: int | None = limit or None
        self._cursors: dict[int, _Cursor[KV]] = {}
        if not key_range.empty:
            self._cursors = {p: _Cursor(key_range.start) for p in partitions}
        #: Partitions whose buffer is empty but that have more (the merge waits for them).
        self._waiting: set[int] = set(self._cursors)
        #: (head key, partition) of every non-empty buffer.
        self._heap: list[tuple[bytes, int]] = []
        self._last: bytes | None = None
        self._delivered = 0

    @property
    def delivered(self) -> int:
        """Keys delivered so far."""
        return self._delivered

    @property
    def last_key(self) -> bytes | None:
        """The last key delivered (None before the first)."""
        return self._last

    @property
    def limit_left(self) -> int | None:
        """Keys the caller still wants (None: no limit)."""
        return self._left

    @property
    def finished(self) -> bool:
        """Nothing more will be delivered: the limit is reached or every partition is done."""
        return self._left == 0 or (not self._waiting and not self._heap)

    def requests(self, at_most: int | None = None) -> list[PageRequest]:
        """The pages to fetch before more keys can be delivered (empty when finished).

        Call `pop_ready` first: while keys can be delivered, nothing needs
        fetching. Each asks for ``min(page_size, limit left, at_most)`` keys
        (`at_most`: what the caller's current page still lacks).
        """
        if self._left == 0 or at_most == 0:
            return []
        limit = self._page_size
        for bound in (self._left, at_most):
            if bound is not None and bound < limit:
                limit = bound
        end = self._range.end
        return [PageRequest(p, self._cursors[p].next_start, end, limit)
                for p in sorted(self._waiting)]

    def add_page(self, partition: int, items: Sequence[KV], more: bool,
                 where: str = "") -> None:
        """File one partition's answer to the request `requests` made for it.

        Raises:
            ProtocolError: the answer breaks the scan contract (keys out of
                order or out of range, more keys than asked, or ``more``
                with no key); `where` names the node in the message.
        """
        if partition not in self._waiting:
            raise ValueError(f"partition {partition} was not asked for a page")
        cursor = self._cursors[partition]
        what = f"{where or 'a node'}: scan page of partition {partition}"
        if len(items) > self._page_size:
            raise ProtocolError(f"{what} has {len(items)} keys, more than the "
                                f"{self._page_size} asked")
        if more and not items:
            raise ProtocolError(f"{what} says more keys follow but holds none")
        previous = None
        for item in items:
            key = item.key
            if previous is not None and key <= previous:
                raise ProtocolError(f"{what} is not in ascending key order at {key[:32]!r}")
            if key < cursor.next_start or key not in self._range:
                raise ProtocolError(f"{what} holds {key[:32]!r}, outside the range asked")
            previous = key
        cursor.buffer.extend(items)
        cursor.more = more
        if previous is not None:
            cursor.next_start = key_after(previous)
        self._waiting.discard(partition)
        if cursor.buffer:
            heapq.heappush(self._heap, (cursor.buffer[0].key, partition))

    def pop_ready(self, at_most: int | None = None) -> list[KV]:
        """Every key that can be delivered now, in order (at most `at_most`)."""
        out: list[KV] = []
        if self._waiting:
            return out
        heap = self._heap
        cursors = self._cursors
        wanted = self._left
        if at_most is not None and (wanted is None or at_most < wanted):
            wanted = at_most
        while heap and (wanted is None or len(out) < wanted):
            _, partition = heap[0]
            cursor = cursors[partition]
            out.append(cursor.buffer.popleft())
            if cursor.buffer:
                heapq.heapreplace(heap, (cursor.buffer[0].key, partition))
            else:
                heapq.heappop(heap)
                if cursor.more:
                    self._waiting.add(partition)
                    break  # its next key is unknown: it may come before every other head
        if out:
            self._last = out[-1].key
            self._delivered += len(out)
            if self._left is not None:
                self._left -= len(out)
        return out

    def resume(self, keys_only: bool) -> ScanToken | None:
        """Where to go on after what was delivered; None when the scan is finished."""
        if self.finished:
            return None
        start = self._range.start if self._last is None else key_after(self._last)
        return ScanToken(KeyRange(start, self._range.end), keys_only, self._left or 0)
