"""The pure scan pieces (prkdb/client/scan.py): key ranges, the token, the page merge.

The merge is driven here by a tiny synchronous "cluster": one sorted key list
per partition, answering each `PageRequest` as the server's contract says
(at most ``limit`` keys from ``start``, ``more`` = keys left in range).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.client.scan import (
    KeyRange,
    PageRequest,
    ScanMerge,
    ScanToken,
    decode_token,
    encode_token,
    key_after,
    key_range,
    prefix_end,
)
from prkdb.errors import InvalidRequest, ProtocolError


@dataclass(frozen=True)
class Item:
    key: bytes


class Partitions:
    """Sorted keys per partition; answers page requests and counts what was read."""

    def __init__(self, contents: Sequence[Sequence[bytes]]) -> None:
        # A key lives in one partition: the first list that names it keeps it.
        seen: set[bytes] = set()
        self.keys: list[list[bytes]] = []
        for keys in contents:
            self.keys.append(sorted(set(keys) - seen))
            seen.update(keys)
        self.requests: list[PageRequest] = []
        self.read = 0

    def answer(self, req: PageRequest) -> tuple[list[Item], bool]:
        self.requests.append(req)
        keys = self.keys[req.partition]
        lo = bisect.bisect_left(keys, req.start)
        hi = len(keys) if req.end is None else bisect.bisect_left(keys, req.end)
        page = keys[lo : min(hi, lo + req.limit)]
        self.read += len(page)
        return [Item(k) for k in page], lo + len(page) < hi

    def all_keys(self, rng: KeyRange) -> list[bytes]:
        return sorted(k for keys in self.keys for k in keys if k in rng)


def run_merge(merge: ScanMerge[Item], parts: Partitions, at_most: int | None = None
              ) -> list[bytes]:
    """What a client's scan loop does: deliver what is ready, fetch what is waited for."""
    out: list[bytes] = []
    while True:
        room = None if at_most is None else at_most - len(out)
        out += [i.key for i in merge.pop_ready(room)]
        if at_most is not None and len(out) >= at_most:
            return out
        requests = merge.requests(None if at_most is None else at_most - len(out))
        if not requests:
            return out
        for req in requests:
            items, more = parts.answer(req)
            merge.add_page(req.partition, items, more)


def paged(parts: Partitions, rng: KeyRange, page_size: int, limit: int = 0
          ) -> tuple[list[list[bytes]], int]:
    """Scan page by page through tokens, as scan_page does; (pages, requests made)."""
    pages: list[list[bytes]] = []
    token: bytes | None = encode_token(ScanToken(rng, False, limit))
    while token is not None:
        state = decode_token(token)
        merge: ScanMerge[Item] = ScanMerge(range(len(parts.keys)), state.range,
                                           state.limit_left, page_size)
        pages.append(run_merge(merge, parts, page_size))
        resume = merge.resume(state.keys_only)
        token = None if resume is None else encode_token(resume)
        assert len(pages) < 10_000
    return pages, len(parts.requests)


keys_strategy = st.lists(st.binary(min_size=1, max_size=3), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    contents=st.lists(keys_strategy, min_size=1, max_size=6),
    page_size=st.integers(1, 7),
    limit=st.integers(0, 30),
    bounds=st.tuples(st.none() | st.binary(max_size=2), st.none() | st.binary(max_size=2)),
)
def test_merge_delivers_sorted_keys_exactly_once(
    contents: list[list[bytes]], page_size: int, limit: int,
    bounds: tuple[bytes | None, bytes | None],
) -> None:
    parts = Partitions(contents)
    rng = key_range(start=bounds[0], end=bounds[1])
    merge: ScanMerge[Item] = ScanMerge(range(len(contents)), rng, limit, page_size)
    got = run_merge(merge, parts)
    want = parts.all_keys(rng)
    assert got == (want[:limit] if limit else want)
    assert merge.finished and merge.resume(False) is None
    # Lazy: a partition is asked again only after all it gave was delivered,
    # so no partition reads more than one page past what the scan delivered.
    for p in range(len(contents)):
        asked = [r for r in parts.requests if r.partition == p]
        assert all(r.limit <= page_size for r in asked)
    if limit:
        assert parts.read <= len(contents) * limit


@settings(max_examples=300, deadline=None)
@given(
    contents=st.lists(keys_strategy, min_size=1, max_size=5),
    page_size=st.integers(1, 6),
    limit=st.integers(0, 25),
    prefix=st.none() | st.binary(max_size=1),
)
def test_pages_through_tokens_give_each_key_once(
    contents: list[list[bytes]], page_size: int, limit: int, prefix: bytes | None,
) -> None:
    parts = Partitions(contents)
    rng = key_range(prefix=prefix)
    pages, _ = paged(parts, rng, page_size, limit)
    flat = [k for page in pages for k in page]
    want = parts.all_keys(rng)
    assert flat == (want[:limit] if limit else want)
    assert all(len(page) <= page_size for page in pages)
    assert all(len(page) == page_size for page in pages[:-1])  # only the last is short


def test_small_limit_reads_one_page_per_partition() -> None:
    parts = Partitions([[b"%03d" % i for i in range(p, 3000, 8)] for p in range(8)])
    merge: ScanMerge[Item] = ScanMerge(range(8), key_range(), limit=5)
    assert run_merge(merge, parts) == [b"000", b"001", b"002", b"003", b"004"]
    assert len(parts.requests) == 8 and parts.read <= 8 * 5
    assert {r.limit for r in parts.requests} == {5}


def test_a_partition_is_fetched_again_only_when_its_buffer_is_empty() -> None:
    # Partition 0 has the small keys; partition 1 only a large one.
    parts = Partitions([[b"a%d" % i for i in range(10)], [b"z"]])
    merge: ScanMerge[Item] = ScanMerge(range(2), key_range(), page_size=3)
    assert run_merge(merge, parts) == [*(b"a%d" % i for i in range(10)), b"z"]
    assert [r.partition for r in parts.requests] == [0, 1, 0, 0, 0]
    assert [r.start for r in parts.requests if r.partition == 0] == [
        b"", key_after(b"a2"), key_after(b"a5"), key_after(b"a8")]


def test_nothing_is_delivered_while_a_partition_is_waiting() -> None:
    merge: ScanMerge[Item] = ScanMerge([0, 1], key_range(), page_size=2)
    merge.add_page(0, [Item(b"b"), Item(b"d")], more=True)
    assert merge.pop_ready() == []  # partition 1 might hold "a"
    assert [r.partition for r in merge.requests()] == [1]
    merge.add_page(1, [Item(b"c")], more=False)
    assert [i.key for i in merge.pop_ready()] == [b"b", b"c", b"d"]
    assert not merge.finished
    assert merge.requests() == [PageRequest(0, key_after(b"d"), None, 2)]
    token = merge.resume(keys_only=True)
    assert token == ScanToken(KeyRange(key_after(b"d"), None), True, 0)


def test_empty_range_needs_no_request() -> None:
    merge: ScanMerge[Item] = ScanMerge(range(4), key_range(start=b"b", end=b"a"))
    assert merge.finished and merge.requests() == [] and merge.pop_ready() == []


@pytest.mark.parametrize(
    ("items", "more", "match"),
    [
        ([Item(b"b"), Item(b"a")], False, "ascending"),
        ([Item(b"a"), Item(b"a")], False, "ascending"),
        ([Item(b"zz")], False, "outside the range"),
        ([Item(b"0")], False, "outside the range"),
        ([], True, "holds none"),
        ([Item(b"a"), Item(b"b"), Item(b"c")], False, "more than the 2 asked"),
    ],
    ids=["descending", "duplicate", "past end", "before start", "more without keys", "too many"],
)
def test_bad_pages_are_protocol_errors(items: list[Item], more: bool, match: str) -> None:
    merge: ScanMerge[Item] = ScanMerge([0], key_range(start=b"a", end=b"z"), page_size=2)
    with pytest.raises(ProtocolError, match=match):
        merge.add_page(0, items, more, where="127.0.0.1:1")


def test_a_page_before_the_cursor_is_refused() -> None:
    merge: ScanMerge[Item] = ScanMerge([0], key_range(), page_size=1)
    merge.add_page(0, [Item(b"m")], more=True)
    merge.pop_ready()
    with pytest.raises(ProtocolError, match="outside the range"):
        merge.add_page(0, [Item(b"m")], more=False)  # a key already received


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"", None), (b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", None), (b"ab\x00", b"ab\x01")],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


def test_key_range_arguments() -> None:
    assert key_range() == KeyRange(b"", None)
    assert key_range(prefix=b"app/") == KeyRange(b"app/", b"app0")
    assert key_range(start=bytearray(b"a"), end=b"c") == KeyRange(b"a", b"c")
    assert b"b" in key_range(start=b"a", end=b"c") and b"c" not in key_range(start=b"a", end=b"c")
    with pytest.raises(InvalidRequest, match="not both"):
        key_range(prefix=b"a", start=b"b")
    with pytest.raises(InvalidRequest, match="prefix must be bytes"):
        key_range(prefix="a")


def test_token_round_trip_and_shape() -> None:
    token = ScanToken(KeyRange(b"k\x00", b"l"), True, 7)
    raw = encode_token(token)
    assert isinstance(raw, bytes) and b"=" not in raw and b"+" not in raw and b"/" not in raw
    assert decode_token(raw) == token
    assert decode_token(raw.decode()) == token  # as it comes back from a URL
    assert decode_token(encode_token(ScanToken(KeyRange(b"", None), False, 0))).range.end is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"!!!", b"AAAA", "é", 17, b"hQIBAQEB"],  # last: CBOR [2, 1, 1, 1, 1]
    ids=["empty", "not base64", "not cbor array", "non-ascii", "int", "version 2"],
)
def test_bad_tokens_are_invalid_requests(raw: object) -> None:
    with pytest.raises(InvalidRequest, match="token"):
        decode_token(raw)


def test_a_future_token_version_is_named() -> None:
    with pytest.raises(InvalidRequest, match="version 2 is not supported"):
        decode_token(b"hQIBAQEB")


def test_page_size_must_be_positive() -> None:
    with pytest.raises(InvalidRequest, match="page_size"):
        ScanMerge([0], key_range(), page_size=0)
