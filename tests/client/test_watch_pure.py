"""The pure watch pieces (prkdb/client/watch.py): the cursor, a partition's feed, the replica
choice, the inbox, and the plan driven by hand (no I/O, a list for a clock)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.client.attempt import ConnectionLost
from prkdb.client.scan import KeyRange, key_range
from prkdb.client.watch import (
    IDLE_TIMEOUT,
    STREAM_FRAME_LIMIT,
    AwaitFrames,
    CancelStream,
    OpenStream,
    PartitionFeed,
    WatchCursor,
    WatchDriver,
    WatchInbox,
    WatchPlan,
    pick_replica,
)
from prkdb.errors import Compacted, ErrorCode, InvalidRequest, ProtocolError, WatchOverflow
from prkdb.wire.messages import Error, Event, EventKind, WatchEvents

ALL = KeyRange(b"", None)


def ev(revision: int, key: bytes = b"k", kind: EventKind = EventKind.PUT) -> Event:
    return Event(kind, key, revision, b"v" if kind == EventKind.PUT else None, None)


# --- the cursor ------------------------------------------------------------------------


@given(st.dictionaries(st.integers(0, 1 << 16), st.integers(0, 1 << 62), max_size=64))
def test_cursor_round_trips(revisions: dict[int, int]) -> None:
    cursor = WatchCursor(revisions)
    text = cursor.encode()
    assert WatchCursor.decode(text) == cursor
    assert WatchCursor.decode(cursor.to_bytes()) == cursor
    assert WatchCursor.parse(str(cursor)) == cursor == WatchCursor.parse(dict(revisions))
    assert dict(cursor) == revisions
    assert text.isascii() and "=" not in text


@pytest.mark.parametrize("bad", ["", "!!!", "AAAA", WatchCursor({1: 2}).encode()[:-3] + "x"])
def test_damaged_cursor_is_invalid_request(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="watch cursor"):
        WatchCursor.decode(bad)


def test_cursor_checks_its_numbers() -> None:
    with pytest.raises(InvalidRequest, match="revision -1"):
        WatchCursor({0: -1})
    with pytest.raises(InvalidRequest, match="must be a WatchCursor"):
        WatchCursor.parse(3)


# --- a partition's feed ----------------------------------------------------------------


def test_feed_drops_repeats_and_keeps_revisions_whole() -> None:
    feed = PartitionFeed(2, after=5)
    assert feed.accept([ev(4), ev(6, b"a"), ev(6, b"b"), ev(8)], 9, ALL, "n1") == 3
    assert feed.received == 9
    assert [(r, None if g is None else [e.key for e in g]) for r, g in feed.pending] == [
        (6, [b"a", b"b"]), (8, [b"k"]), (9, None)]
    # A replay from another replica: everything <= 9 is dropped; a lagging
    # replica's lower progress never moves `received` back.
    assert feed.accept([ev(6, b"a"), ev(8)], 8, ALL, "n2") == 0
    assert feed.received == 9
    assert all(e.partition == 2 for _, g in feed.pending if g for e in g)


def test_feed_rejects_revisions_going_back() -> None:
    with pytest.raises(ProtocolError, match="goes back from revision 7 to 6"):
        PartitionFeed(0, 0).accept([ev(7), ev(6)], 7, ALL, "n1")


def test_feed_drops_keys_outside_the_range() -> None:
    feed = PartitionFeed(0, 0)
    assert feed.accept([ev(1, b"a/1"), ev(2, b"b/1")], 2, key_range(b"a/"), "n") == 1


# --- choosing a replica ------------------------------------------------------------------


def test_pick_replica_prefers_followers_spread_by_partition() -> None:
    nodes = ["n1", "n2", "n3"]
    picks = {pick_replica(nodes, "n1", p, 0, lambda a: False) for p in range(4)}
    assert picks == {"n2", "n3"}
    assert pick_replica(nodes, "n1", 0, 0, lambda a: a != "n1") == "n1"  # all followers failed
    assert pick_replica(nodes, "n1", 0, 1, lambda a: False) != pick_replica(
        nodes, "n1", 0, 0, lambda a: False)


# --- the inbox ----------------------------------------------------------------------------


def test_inbox_ends_a_stream_past_its_limit() -> None:
    woken: list[int] = []
    inbox = WatchInbox(lambda: woken.append(1))
    for i in range(STREAM_FRAME_LIMIT):
        assert inbox.push("t", i)
    assert not inbox.push("t", "one too many")
    assert inbox.push("t", "after the end")  # dropped
    items = inbox.take()
    assert len(items) == STREAM_FRAME_LIMIT + 1 and isinstance(items[-1][1], WatchOverflow)
    assert woken == [1] and not inbox


# --- the plan, by hand ------------------------------------------------------------------


class Harness:
    """Drives a `WatchPlan` through a `WatchDriver`: a clock, and streams as handles."""

    def __init__(self, start: dict[int, int]) -> None:
        self.now = 0.0
        self.suspects: set[str] = set()
        self.plan = WatchPlan(ALL, start, False, addresses=lambda: ["n1", "n2", "n3"],
                              leader_of=lambda p: "n1", suspected=self.suspects.__contains__,
                              suspect=self.suspects.add, clock=lambda: self.now,
                              rng=random.Random(1))
        self.driver = WatchDriver(self.plan)
        self.opened: list[OpenStream] = []
        self.cancelled: list[Any] = []

    def run(self, inbox: list[tuple[object, object]] | None = None) -> list[tuple[int, bytes]]:
        """Carry out actions until the plan waits; `inbox` answers its first wait."""
        out = []
        while True:
            event = self.driver.next_event()
            if event is not None:
                out.append((event.revision, event.key))
                continue
            action = self.driver.action
            if isinstance(action, OpenStream):
                self.opened.append(action)
                self.driver.answer(action.token)
            elif isinstance(action, CancelStream):
                self.cancelled.append(action.handle)
                self.driver.answer(None)
            else:
                assert isinstance(action, AwaitFrames)
                if inbox is None:
                    return out
                self.now = max(self.now, min(action.deadline, self.now + 0.01))
                self.driver.answer(inbox)
                inbox = None

    def token(self, partition: int) -> object:
        return [o.token for o in self.opened if o.token[0] == partition][-1]  # type: ignore[index]

    def watch_after(self, partition: int) -> int:
        """The `after` of the last Watch of `partition`."""
        array = [o for o in self.opened if o.token[0] == partition][-1].build(9)  # type: ignore[index]
        return int(array[5])


def frame(partition: int, events: list[Event], progress: int) -> WatchEvents:
    return WatchEvents(1, partition, tuple(events), progress)


def test_plan_resumes_after_a_lost_stream_from_what_it_received() -> None:
    h = Harness({0: 10, 1: 20})
    assert h.run() == [] and len(h.opened) == 2
    assert h.watch_after(0) == 10 and h.watch_after(1) == 20
    out = h.run([(h.token(0), frame(0, [ev(11, b"a"), ev(12, b"b")], 12))])
    assert out == [(11, b"a"), (12, b"b")]
    assert h.plan.cursor == WatchCursor({0: 12, 1: 20})
    first = h.opened[-2].address
    h.run([(h.token(0), ConnectionLost("x", "reset"))])
    assert h.watch_after(0) == 12 and h.opened[-1].address != first
    # The new replica repeats 12 and goes on: 12 is dropped.
    out = h.run([(h.token(0), frame(0, [ev(12, b"b"), ev(13, b"c")], 14))])
    assert out == [(13, b"c")] and h.plan.cursor[0] == 14


def test_plan_resumes_on_overflow_and_raises_compacted_once_every_node_says_so() -> None:
    h = Harness({0: 5})
    h.run()
    overflow = Error(1, ErrorCode.WATCH_OVERFLOW, "slow", {})
    h.run([(h.token(0), overflow)])
    assert len(h.opened) == 2 and h.watch_after(0) == 5
    compacted = Error(1, ErrorCode.COMPACTED, "gone", {"oldest": 9})
    h.run([(h.token(0), compacted)])  # a replica with a short history: ask another
    h.run([(h.token(0), compacted)])
    assert len({o.address for o in h.opened[-3:]}) == 3
    with pytest.raises(Compacted) as info:
        h.run([(h.token(0), compacted)])
    assert info.value.partition == 0 and info.value.oldest == 9


def test_a_frame_clears_what_replicas_said_compacted() -> None:
    h = Harness({0: 5})
    h.run()
    compacted = Error(1, ErrorCode.COMPACTED, "gone", {"oldest": 9})
    h.run([(h.token(0), compacted)])
    h.run([(h.token(0), frame(0, [], 6))])
    assert not h.plan.feeds[0].compacted


def test_plan_leaves_a_silent_stream_and_suspects_its_node() -> None:
    h = Harness({0: 0})
    h.run()
    address = h.opened[0].address
    h.now = IDLE_TIMEOUT + 1
    h.run([])
    assert h.cancelled and address in h.suspects
    assert h.opened[-1].address != address


def test_a_fatal_stream_error_reaches_the_caller() -> None:
    h = Harness({0: 0})
    h.run()
    with pytest.raises(InvalidRequest):
        h.run([(h.token(0), Error(1, ErrorCode.BAD_REQUEST, "bad range", {}))])
