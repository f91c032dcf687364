"""Watches over the fake cluster (trio `PrkDbClient`): order, resume, overflow, COMPACTED.

The fake serves `Watch` streams from its event list (tests/client/fake.py);
faults are a dropped connection, a crashed node, a server-side end of the
stream (WATCH_OVERFLOW), and a cursor older than `oldest`. Time is
`autojump_clock`, so a frozen node's silence costs no real time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prkdb.client import PrkDbClient
from prkdb.client.api import AsyncWatch
from prkdb.client.results import WatchEvent
from prkdb.client.watch import WatchCursor
from prkdb.errors import Compacted, ErrorCode
from prkdb.wire.messages import EventKind, Watch, WatchCancel
from tests.client.fake import FakeCluster, connect


async def collect(watch: AsyncWatch, n: int, into: list[WatchEvent]) -> None:
    async for event in watch:
        into.append(event)
        if len(into) >= n:
            return


def by_partition(events: list[WatchEvent]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for e in events:
        out.setdefault(e.partition, []).append(e.revision)
    return out


def check_exact(events: list[WatchEvent], cluster: FakeCluster, prefix: bytes,
                after: int = 0) -> None:
    """The events are the cluster's changes of `prefix` after `after`: no gap, no duplicate."""
    want = [(e.key, e.revision, e.kind) for e in cluster.events
            if e.key.startswith(prefix) and e.revision > after]
    got = [(e.key, e.revision, e.kind) for e in events]
    assert sorted(got, key=lambda t: t[1]) == want
    for revisions in by_partition(events).values():
        assert revisions == sorted(revisions)


async def test_watch_delivers_puts_and_deletes_in_revision_order(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        await db.put(b"other", b"x")
        got: list[WatchEvent] = []
        async with db.watch(b"app/", prev_values=True) as watch, trio.open_nursery() as nursery:
            nursery.start_soon(collect, watch, 4, got)
            await trio.sleep(0.1)
            await db.put(b"app/a", b"1")
            await db.put(b"app/b", b"2")
            await db.put(b"app/a", b"3")
            await db.put(b"nope/a", b"3")
            await db.delete(b"app/b")
        assert [(e.kind, e.key, e.value, e.prev_value) for e in got] == [
            (EventKind.PUT, b"app/a", b"1", None),
            (EventKind.PUT, b"app/b", b"2", None),
            (EventKind.PUT, b"app/a", b"3", b"1"),
            (EventKind.DELETE, b"app/b", None, b"2"),
        ]
        assert all(e.partition == cluster.partition_of(e.key) for e in got)
        cursor = watch.cursor
        assert cursor[got[-1].partition] >= got[-1].revision
        # Streams go to followers, one per partition.
        streams = cluster.received_of(Watch)
        assert sorted(m.partition for m in streams) == list(range(cluster.partitions))
        for node_id, m in cluster.received:
            if isinstance(m, Watch):
                assert node_id != cluster.leaders[m.partition]
        await trio.sleep(0.1)
        assert len(cluster.received_of(WatchCancel)) == cluster.partitions  # closed on exit


async def test_hash_tagged_prefix_uses_one_partition(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        got: list[WatchEvent] = []
        async with db.watch(b"user:{42}:") as watch, trio.open_nursery() as nursery:
            nursery.start_soon(collect, watch, 2, got)
            await trio.sleep(0.1)
            await db.put(b"user:{42}:name", b"ann")
            await db.put(b"user:{42}:mail", b"a@x")
        streams = cluster.received_of(Watch)
        assert [m.partition for m in streams] == [cluster.partition_of(b"{42}")]
        assert [e.key for e in got] == [b"user:{42}:name", b"user:{42}:mail"]


async def test_resume_from_cursor_after_close(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        cursor = await db.watch_cursor(b"r/")
        for i in range(6):
            await db.put(b"r/%d" % i, b"v")
        got: list[WatchEvent] = []
        async with db.watch(b"r/", cursor=cursor) as watch:
            await collect(watch, 3, got)
            saved = watch.cursor.encode()  # after the 3rd event
        more: list[WatchEvent] = []
        async with db.watch(b"r/", cursor=saved) as watch:
            await collect(watch, 3, more)
        check_exact(got + more, cluster, b"r/")


async def resume_scenario(cluster: FakeCluster, db: PrkDbClient, writes: int,
                          fault_at: set[int], fault: Callable[[int], object]) -> None:
    got: list[WatchEvent] = []
    with trio.fail_after(60):
        async with db.watch(b"w/") as watch, trio.open_nursery() as nursery:
            nursery.start_soon(collect, watch, writes, got)
            await trio.sleep(0.1)
            for i in range(writes):
                await db.put(b"w/%d" % (i % 7), b"%d" % i)
                if i in fault_at:
                    await fault(i)  # type: ignore[misc]
    check_exact(got, cluster, b"w/")


async def test_resume_after_dropped_connections_no_gap_no_duplicate(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        async def drop(i: int) -> None:
            for node_id in cluster.nodes:
                await cluster.drop_connections(node_id)

        await resume_scenario(cluster, db, 30, {3, 4, 11, 20}, drop)
        assert len(cluster.received_of(Watch)) > cluster.partitions


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sets(st.integers(0, 19), max_size=5), st.sampled_from(["drop", "overflow", "crash"]))
def test_resume_at_any_fault_point(fault_at: set[int], kind: str) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cluster = FakeCluster(nursery)
            db = await connect(cluster, seeds=cluster.seeds)
            crashed: list[int] = []

            async def fault(i: int) -> None:
                if kind == "drop":
                    await cluster.drop_connections(1 + i % 3)
                elif kind == "overflow":
                    cluster.end_watches(ErrorCode.WATCH_OVERFLOW)
                else:  # kill a node the watch may sit on; bring the last one back
                    if crashed:
                        cluster.nodes[crashed.pop()].up = True
                    node = 2 + i % 2
                    crashed.append(node)
                    for partition, leader in cluster.leaders.items():
                        if leader == node:  # a leader election elsewhere
                            cluster.leaders[partition] = 1
                    await cluster.crash(node)

            await resume_scenario(cluster, db, 20, fault_at, fault)
            await db.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_frozen_node_is_left_after_silence(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    for partition in cluster.leaders:
        cluster.leaders[partition] = 1
    async with await connect(cluster, seeds=cluster.seeds) as db:
        got: list[WatchEvent] = []
        with trio.fail_after(30):
            async with db.watch(b"f/") as watch, trio.open_nursery() as nursery:
                nursery.start_soon(collect, watch, 4, got)
                await trio.sleep(0.1)
                await db.put(b"f/1", b"1")
                await trio.sleep(0.1)
                cluster.nodes[2].frozen = cluster.nodes[3].frozen = True  # SIGSTOP
                start = trio.current_time()
                await db.put(b"f/2", b"2")
                await db.put(b"f/3", b"3")
                await db.put(b"f/4", b"4")
        assert trio.current_time() - start < 10  # left after the idle timeout, not stuck
        check_exact(got, cluster, b"f/")
        reopened = [n for n, m in cluster.received if isinstance(m, Watch) and n == 1]
        assert reopened  # the only live node, although it leads


async def test_overflow_resumes(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        async def overflow(i: int) -> None:
            assert cluster.end_watches(ErrorCode.WATCH_OVERFLOW) > 0

        await resume_scenario(cluster, db, 12, {2, 7}, overflow)


async def test_compacted_raises_with_partition_and_oldest(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        p = cluster.partition_of(b"{t}")
        cluster.oldest[p] = 50
        with pytest.raises(Compacted) as info:
            async with db.watch(b"{t}/", cursor=WatchCursor({p: 10})) as watch:
                async for _ in watch:
                    pass
        assert info.value.partition == p and info.value.oldest == 50


async def test_compacted_during_resume_raises(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        got: list[WatchEvent] = []
        failures: list[BaseException] = []

        async def watch_until_error(watch: AsyncWatch) -> None:
            try:
                await collect(watch, 10, got)
            except Compacted as exc:
                failures.append(exc)

        async with db.watch(b"{c}/") as watch, trio.open_nursery() as nursery:
            nursery.start_soon(watch_until_error, watch)
            await trio.sleep(0.1)
            await db.put(b"{c}/1", b"1")
            await trio.sleep(0.1)
            p = cluster.partition_of(b"{c}")
            cluster.oldest[p] = cluster.revision + 5
            for node_id in cluster.nodes:
                await cluster.drop_connections(node_id)
        assert [e.key for e in got] == [b"{c}/1"]
        assert len(failures) == 1 and failures[0].partition == p  # type: ignore[attr-defined]


async def test_idle_cursor_moves_with_progress_notices(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    async with await connect(cluster) as db:
        got: list[WatchEvent] = []
        async with db.watch(b"idle/") as watch, trio.open_nursery() as nursery:
            nursery.start_soon(collect, watch, 1, got)
            await trio.sleep(0.1)
            for i in range(5):
                await db.put(b"busy/%d" % i, b"x")
            await trio.sleep(2.5)
            assert all(r == cluster.revision for r in watch.cursor.values())
            await db.put(b"idle/x", b"1")
        assert [e.key for e in got] == [b"idle/x"]


async def test_txn_revision_is_delivered_whole(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    from prkdb.client.txn import Put

    async with await connect(cluster) as db:
        got: list[WatchEvent] = []
        cursors: list[WatchCursor] = []
        async with db.watch(b"{x}") as watch:
            async def run() -> None:
                async for e in watch:
                    got.append(e)
                    cursors.append(watch.cursor)
                    if len(got) == 2:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await trio.sleep(0.1)
                await db.txn([], [Put(b"{x}a", b"1"), Put(b"{x}b", b"2")])
        p = cluster.partition_of(b"{x}")
        assert got[0].revision == got[1].revision
        assert cursors[0][p] < got[0].revision  # the revision is not whole yet
        assert cursors[1][p] == got[1].revision
