"""News of a commit index alone waits for a frame to ride on, but not for long.

A lone writer's next append carries the news for free; sending it on its own
cost every follower a pass per write (the RaftLoop, COMMIT_NEWS_DELAY_S).
But when no frame comes, the news must still leave within the delay, or
followers would apply (and serve stale reads) only at the next heartbeat.

The loop runs here with fake partitions and a fake transport on trio's
mock clock, so the times asserted are exact.
"""

from __future__ import annotations

import structlog
import trio
import trio.testing

from prkdb.config import NodeConfig
from prkdb.raft import Message, MsgType
from prkdb.server.inbox import InboxItem, PeerMessage
from prkdb.server.raftloop import COMMIT_NEWS_DELAY_S, RaftLoop


class FakeTransport:
    """Records when lazy news leaves alone, and when it rides with a frame."""

    def __init__(self) -> None:
        self.news = False  # commit news waiting
        self.urgent = False  # a frame (say, an append) waiting
        self.alone: list[float] = []  # times the news left on its own
        self.carried: list[float] = []  # times it rode along with a frame

    @property
    def lazy_pending(self) -> bool:
        return self.news

    def flush(self, lazy: bool = False) -> None:
        if self.urgent:
            self.urgent = False
            if self.news:
                self.news = False
                self.carried.append(trio.current_time())
        elif lazy and self.news:
            self.news = False
            self.alone.append(trio.current_time())


COMMIT = PeerMessage(0, Message(MsgType.HEARTBEAT, to=1, from_=2, term=1))  # news only
APPEND = PeerMessage(0, Message(MsgType.APP, to=1, from_=2, term=1))  # a frame to send


class FakePartition:
    """A partition whose input produces commit news (`COMMIT`) or a frame (`APPEND`)."""

    partition = 0
    busy = False
    touched = False
    has_snapshot_work = False

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    def has_ready(self) -> bool:
        return False

    def handle(self, item: InboxItem) -> None:
        assert isinstance(item, PeerMessage)
        if item.msg.type == MsgType.HEARTBEAT:
            self.transport.news = True
        else:
            self.transport.urgent = True

    def expire(self, now: float) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def flush_queued(self) -> None:
        pass


class _Replies:
    def flush(self) -> None:
        pass


async def _start(nursery: trio.Nursery) -> tuple[RaftLoop, FakePartition, FakeTransport]:
    transport = FakeTransport()
    loop = RaftLoop(NodeConfig.default(), None, structlog.get_logger(),  # type: ignore[arg-type]
                    transport, _Replies())  # type: ignore[arg-type]
    part = FakePartition(transport)
    loop.partitions = [part]  # type: ignore[list-item]
    await nursery.start(loop.run)
    return loop, part, transport


async def test_commit_news_alone_leaves_after_the_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    loop, _part, transport = await _start(nursery)
    t0 = trio.current_time()
    await loop.inbox.send(COMMIT)
    await trio.sleep(COMMIT_NEWS_DELAY_S / 2)
    assert transport.alone == [] and transport.news  # still waiting for a frame
    await trio.sleep(COMMIT_NEWS_DELAY_S)
    assert transport.alone == [t0 + COMMIT_NEWS_DELAY_S]
    assert not transport.news


async def test_commit_news_rides_with_the_next_frame(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    loop, _part, transport = await _start(nursery)
    await loop.inbox.send(COMMIT)
    await trio.sleep(COMMIT_NEWS_DELAY_S / 2)
    t1 = trio.current_time()
    await loop.inbox.send(APPEND)  # the lone writer's next write
    await trio.sleep(10 * COMMIT_NEWS_DELAY_S)
    assert transport.carried == [t1]
    assert transport.alone == []  # and no leftover timer sends anything later


async def test_news_after_a_timed_flush_gets_a_fresh_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    loop, _part, transport = await _start(nursery)
    t0 = trio.current_time()
    await loop.inbox.send(COMMIT)
    await trio.sleep(2 * COMMIT_NEWS_DELAY_S)
    t1 = trio.current_time()
    await loop.inbox.send(COMMIT)
    await trio.sleep(2 * COMMIT_NEWS_DELAY_S)
    assert transport.alone == [t0 + COMMIT_NEWS_DELAY_S, t1 + COMMIT_NEWS_DELAY_S]
