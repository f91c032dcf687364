"""`PartitionWatches` alone: a fake history and a fake connection, no event loop."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from prkdb.errors import Compacted, ErrorCode, PrkdbError, Unavailable, WatchOverflow
from prkdb.server import watch as watch_mod
from prkdb.server.watch import PROGRESS_INTERVAL_S, STALLED_S, PartitionWatches, Watch


@dataclass(frozen=True, slots=True)
class Ev:
    kind: int
    key: bytes
    revision: int
    value: bytes | None
    prev_value: bytes | None = None


class FakeHistory:
    def __init__(self, oldest: int = 0) -> None:
        self.events: list[Ev] = []
        self.oldest = oldest

    def since(self, after: int, start: bytes, end: bytes | None) -> list[Ev]:
        if after < self.oldest:
            raise Compacted(self.oldest)
        return [e for e in self.events if e.revision > after and start <= e.key
                and (end is None or e.key < end)]


@dataclass
class FakeSink:
    unsent_bytes: int = 0
    frames: list[tuple[int, list[Any], int]] = field(default_factory=list)
    ended: list[tuple[int, PrkdbError]] = field(default_factory=list)
    closed: bool = False

    shared: list[tuple[int, Any]] = field(default_factory=list)
    stalled_since: float | None = None  # the client took nothing since then (stalled_for)

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.stalled_since is None else now - self.stalled_since

    def send_events(self, watch: Watch, events: Sequence[Any], progress: int,
                    shared: Any = None) -> bool:
        if self.closed:
            return False
        self.frames.append((watch.rid, list(events), progress))
        if shared is not None:
            assert list(shared.events) == list(events) and shared.progress == progress
            self.shared.append((watch.rid, shared))
        return True

    def end_watch(self, watch: Watch, error: PrkdbError) -> None:
        self.ended.append((watch.rid, error))

    def revisions(self, rid: int) -> list[int]:
        return [e.revision for r, evs, _ in self.frames if r == rid for e in evs]


def put(key: bytes, rev: int, value: bytes = b"v") -> Ev:
    return Ev(0, key, rev, value)


def apply(ws: PartitionWatches, hist: FakeHistory, events: list[Ev], applied: int,
          now: float = 0.0) -> None:
    """What the driver does per Ready: the machine calls the hook per entry, then flush."""
    for e in events:
        hist.events.append(e)
        ws.on_events([e])
    ws.flush(applied, now)


def test_backlog_then_live_in_revision_order() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    for i in range(1, 4):
        hist.events.append(put(b"a%d" % i, i))
    hist.events.append(put(b"b", 4))
    w = ws.open(hist, sink, 7, b"a", b"b", 1, False, applied=4, now=0)
    assert sink.frames == [(7, [put(b"a2", 2), put(b"a3", 3)], 4)]
    apply(ws, hist, [put(b"a9", 5), put(b"zz", 5), put(b"a1", 6)], applied=6)
    apply(ws, hist, [put(b"c", 7)], applied=8)  # out of range: no frame
    assert sink.frames[1] == (7, [put(b"a9", 5), put(b"a1", 6)], 6)
    assert len(sink.frames) == 2
    assert sink.revisions(7) == [2, 3, 5, 6]
    assert w.queued_upto == 6
    ws.close(w)
    assert len(ws) == 0
    apply(ws, hist, [put(b"a1", 9)], applied=9)
    assert len(sink.frames) == 2


def test_compacted_cursor_raises_with_oldest() -> None:
    ws = PartitionWatches(0, 100, 1 << 20)
    with pytest.raises(Compacted) as exc:
        ws.open(FakeHistory(oldest=50), FakeSink(), 1, b"", None, 10, False, 60, 0)
    assert exc.value.oldest == 50
    assert len(ws) == 0


def test_progress_notices_while_idle_and_never_backwards() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"k", b"l", 0, False, applied=3, now=0.0)
    assert sink.frames == [(1, [], 3)]
    ws.tick(5, now=0.5)
    assert len(sink.frames) == 1  # not idle long enough
    ws.tick(5, now=PROGRESS_INTERVAL_S + 0.01)
    assert sink.frames[-1] == (1, [], 5)
    # A restarted partition reports a lower applied index for a moment: progress holds.
    ws.tick(2, now=2 * PROGRESS_INTERVAL_S + 0.1)
    assert sink.frames[-1] == (1, [], 5)


def test_cursor_ahead_of_a_lagging_replica_keeps_its_place() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"", None, 10, False, applied=4, now=0)
    assert sink.frames == [(1, [], 10)]
    apply(ws, hist, [put(b"x", 8)], applied=8)  # already delivered elsewhere
    assert len(sink.frames) == 1
    apply(ws, hist, [put(b"x", 11)], applied=11)
    assert sink.frames[-1] == (1, [put(b"x", 11)], 11)


def test_a_stalled_reader_overflows_at_the_bound_and_others_go_on() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, max_events=10, max_bytes=1 << 20)
    stalled = FakeSink(unsent_bytes=watch_mod.SINK_HIGH_WATER)  # socket full: nothing leaves
    fine = FakeSink()
    ws.open(hist, stalled, 1, b"", None, 0, False, applied=0, now=0)
    ws.open(hist, fine, 2, b"", None, 0, False, applied=0, now=0)
    for rev in range(1, 11):
        apply(ws, hist, [put(b"k", rev)], applied=rev)
    assert stalled.ended == []
    apply(ws, hist, [put(b"k", 11)], applied=11)
    assert [(rid, type(e)) for rid, e in stalled.ended] == [(1, WatchOverflow)]
    assert len(ws) == 1
    for rev in range(12, 40):
        apply(ws, hist, [put(b"k", rev)], applied=rev)
    assert fine.revisions(2) == list(range(1, 40))


def test_a_reader_that_takes_nothing_for_a_while_is_cut_off_before_the_bound() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, max_events=10_000, max_bytes=1 << 30)
    stalled = FakeSink(unsent_bytes=watch_mod.SINK_HIGH_WATER)  # socket full: nothing leaves
    slow = FakeSink(unsent_bytes=watch_mod.SINK_HIGH_WATER)  # full too, but drains now and then
    ws.open(hist, stalled, 1, b"", None, 0, False, applied=0, now=0)
    ws.open(hist, slow, 2, b"", None, 0, False, applied=0, now=0)
    t = 0.0
    for rev in range(1, 60):
        t = rev * 0.1
        slow.unsent_bytes = 0 if rev % 10 == 0 else watch_mod.SINK_HIGH_WATER
        apply(ws, hist, [put(b"k", rev)], applied=rev, now=t)
        if t <= watch_mod.STALLED_S:
            assert stalled.ended == [], t
    # Cut off once it took nothing for STALLED_S with events waiting (far below the bound);
    # the slow reader, which takes a frame every second, goes on.
    assert [(rid, type(e)) for rid, e in stalled.ended] == [(1, WatchOverflow)]
    assert slow.ended == [] and len(ws) == 1
    slow.unsent_bytes = 0
    ws.tick(59, t + 0.1)
    assert slow.revisions(2) == list(range(1, 60))


def test_overflow_by_bytes() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, max_events=1000, max_bytes=1000)
    sink = FakeSink(unsent_bytes=watch_mod.SINK_HIGH_WATER)
    ws.open(hist, sink, 1, b"", None, 0, False, applied=0, now=0)
    apply(ws, hist, [put(b"k", 1, b"x" * 900)], applied=1)
    assert sink.ended == []
    apply(ws, hist, [put(b"k", 2, b"x" * 200)], applied=2)
    assert type(sink.ended[0][1]) is WatchOverflow


def test_queued_batches_leave_when_the_socket_drains_coalesced() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink(unsent_bytes=watch_mod.SINK_HIGH_WATER)
    ws.open(hist, sink, 1, b"", None, 0, False, applied=0, now=0)
    for rev in range(1, 6):
        apply(ws, hist, [put(b"k", rev)], applied=rev)
    assert sink.frames == []
    sink.unsent_bytes = 0
    ws.tick(5, now=0.05)
    # The initial notice and five batches leave as one frame, in order.
    assert sink.frames == [(1, [put(b"k", r) for r in range(1, 6)], 5)]


def test_backlog_is_cut_at_revision_boundaries_and_not_counted() -> None:
    hist = FakeHistory()
    big = b"x" * (watch_mod.FRAME_BYTES // 3)
    for rev in range(1, 8):
        hist.events += [put(b"a", rev, big), put(b"b", rev, big)]  # two events per revision
    ws = PartitionWatches(0, max_events=3, max_bytes=1 << 30)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"", None, 0, False, applied=7, now=0)
    assert sink.ended == []
    frames = [evs for _, evs, _ in sink.frames]
    assert len(frames) > 1
    for evs in frames:  # a revision is never split between frames
        assert len({e.revision for e in evs}) * 2 == len(evs)
    assert sink.revisions(1) == [r for r in range(1, 8) for _ in range(2)]
    assert sink.frames[-1][2] == 7


def test_prev_values_count_only_when_asked() -> None:
    e = Ev(0, b"k", 1, b"12345", b"1234567890")
    assert watch_mod.event_size(e, False) + 10 == watch_mod.event_size(e, True)


def test_reapplied_events_after_a_restart_are_not_sent_twice() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"", None, 0, False, applied=0, now=0)
    apply(ws, hist, [put(b"k", 1), put(b"k", 2)], applied=2)
    ws.on_events([put(b"k", 3)])
    ws.discard_pass()  # the partition failed mid-Ready: its core restarts
    apply(ws, hist, [put(b"k", 1), put(b"k", 2), put(b"k", 3)], applied=3)
    assert sink.revisions(1) == [1, 2, 3]


def test_snapshot_install_ends_watches_that_may_have_missed_events() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"", None, 0, False, applied=5, now=0)
    ws.open(hist, sink, 2, b"", None, 20, False, applied=5, now=0)
    ws.history_reset(10)
    assert [(rid, type(e)) for rid, e in sink.ended] == [(1, Unavailable)]
    assert len(ws) == 1


def test_closed_connection_drops_the_watch() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sink = FakeSink()
    ws.open(hist, sink, 1, b"", None, 0, False, applied=0, now=0)
    sink.closed = True
    apply(ws, hist, [put(b"k", 1)], applied=1)
    assert len(ws) == 0


def test_watches_of_one_range_share_the_match() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    sinks = [FakeSink() for _ in range(3)]
    for i, s in enumerate(sinks):
        ws.open(hist, s, i, b"p/", b"p0", 0, False, applied=0, now=0)
    apply(ws, hist, [put(b"p/1", 1), put(b"q", 1)], applied=1)
    assert [s.revisions(i) for i, s in enumerate(sinks)] == [[1], [1], [1]]
    # One batch object for the range's watches: the sinks encode it once.
    batches = [s.shared[-1][1] for s in sinks]
    assert batches[0] is batches[1] is batches[2]


def test_a_frame_is_shared_only_by_watches_that_get_the_same_events() -> None:
    hist = FakeHistory()
    ws = PartitionWatches(0, 100, 1 << 20)
    plain, with_prev, backed_up = FakeSink(), FakeSink(), FakeSink(unsent_bytes=1 << 30)
    ws.open(hist, plain, 1, b"p/", b"p0", 0, False, applied=0, now=0)
    ws.open(hist, with_prev, 2, b"p/", b"p0", 0, True, applied=0, now=0)
    ws.open(hist, backed_up, 3, b"p/", b"p0", 0, False, applied=0, now=0)
    apply(ws, hist, [Ev(0, b"p/1", 1, b"new", b"old")], applied=1)
    apply(ws, hist, [put(b"p/2", 2)], applied=2)
    first = [next(e for _, evs, _ in sink.frames for e in evs if e.revision == 1)
             for sink in (plain, with_prev)]
    assert first[0].prev_value is None and first[1].prev_value == b"old"
    assert plain.shared[0][1] is not with_prev.shared[0][1]
    # A connection that took nothing gets both passes in one frame of its own.
    backed_up.unsent_bytes = 0
    ws.pump_all(now=1)
    assert backed_up.frames[-1][0] == 3 and backed_up.revisions(3) == [1, 2]
    assert backed_up.shared == []


def test_matching_through_the_range_index_equals_the_plain_scan() -> None:
    rng = random.Random(17)
    for _ in range(50):
        ws = PartitionWatches(0, 10**6, 1 << 30)
        hist = FakeHistory()
        for rid in range(rng.randint(1, 40)):
            a, b = sorted(rng.sample(range(30), 2))
            end = None if rng.random() < 0.2 else b"k%02d" % b
            ws.open(hist, FakeSink(), rid, b"k%02d" % a, end, 0, False, 0, 0)
        events = [put(b"k%02d" % rng.randrange(32), rev // 3 + 1) for rev in range(60)]
        indexed = ws._match(events)
        old = watch_mod.INDEX_FROM
        watch_mod.INDEX_FROM = 10**9
        try:
            plain = ws._match(events)
        finally:
            watch_mod.INDEX_FROM = old
        assert dict(indexed) == dict(plain) and len(indexed) == len(plain)
        # Closing and opening ranges rebuilds the index.
        for w in [w for r in list(ws._by_range)[::2] for w in list(ws._by_range[r])]:
            ws.close(w)
        ws.open(hist, FakeSink(), 999, b"k05", b"k07", 0, False, 0, 0)
        after = dict(ws._match(events))
        expect = {r: m for r in ws._by_range
                  if (m := [e for e in events if r[0] <= e.key and (r[1] is None or e.key < r[1])])}
        assert after == expect


def test_a_connection_whose_client_acknowledges_nothing_ends_its_watches() -> None:
    """By the sink's stall clock (TCP acknowledgments), checked at ticks: every watch of
    the stalled connection ends WATCH_OVERFLOW after STALLED_S, the others go on."""
    hist = FakeHistory()
    ws = PartitionWatches(0, 10_000, 1 << 30)
    stalled, healthy = FakeSink(), FakeSink()
    for rid in (1, 2):
        ws.open(hist, stalled, rid, b"a%d" % rid, None, 0, False, applied=0, now=0)
    ws.open(hist, healthy, 3, b"a", None, 0, False, applied=0, now=0)
    stalled.stalled_since = 10.0
    ws.tick(applied=0, now=10.0 + STALLED_S - 0.05)
    assert stalled.ended == [] and len(ws) == 3  # not yet
    ws.tick(applied=0, now=10.0 + STALLED_S + 0.5)
    assert sorted(rid for rid, _ in stalled.ended) == [1, 2]
    assert all(e.code == ErrorCode.WATCH_OVERFLOW and "took none" in e.message
               for _, e in stalled.ended)
    assert healthy.ended == [] and len(ws) == 1
    apply(ws, hist, [put(b"a5", 1)], applied=1, now=13.0)
    assert healthy.revisions(3) == [1] and stalled.revisions(1) == []
