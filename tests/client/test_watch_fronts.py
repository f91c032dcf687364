"""Watches on every front end (trio, asyncio, sync) over the fake cluster on real TCP:
a cursor taken before the writes, resume after the server ends the streams and after
dropped connections, the cursor carried to a new watch, COMPACTED."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from prkdb.client.results import WatchEvent
from prkdb.client.watch import WatchCursor
from prkdb.errors import Compacted, ErrorCode
from prkdb.wire.messages import EventKind
from tests.client.fronts import Client, Front, TcpFake


def take(front: Front, watch: Any, n: int) -> list[WatchEvent]:
    """The next `n` events of `watch`, in the front's own world."""
    if front.kind == "sync":
        return [next(watch) for _ in range(n)]

    async def run() -> list[WatchEvent]:
        out: list[WatchEvent] = []
        async for event in watch:
            out.append(event)
            if len(out) == n:
                break
        return out

    return front.call(run)  # type: ignore[no-any-return]


def close(front: Front, watch: Any) -> None:
    if front.kind == "sync":
        watch.close()
    else:
        front.call(watch.aclose)


def drop_all(fake: TcpFake) -> None:
    for node_id in fake.cluster.nodes:
        trio.from_thread.run(fake.cluster.drop_connections, node_id,
                             trio_token=fake._holder["token"])


def changes(fake: TcpFake, prefix: bytes) -> list[tuple[bytes, int]]:
    return [(e.key, e.revision) for e in fake.cluster.events if e.key.startswith(prefix)]


def test_watch_resumes_on_every_front(front: Front, tcp_fake: TcpFake) -> None:
    db: Client = front.connect(tcp_fake.cluster.seeds)
    cursor = db.watch_cursor(b"x/")
    for i in range(5):
        db.put(b"x/%d" % i, b"%d" % i)
    db.put(b"y/0", b"no")
    watch = db.inner.watch(b"x/", cursor=cursor, prev_values=True)
    got = take(front, watch, 3)
    assert tcp_fake.run(tcp_fake.cluster.end_watches, ErrorCode.WATCH_OVERFLOW) > 0
    db.delete(b"x/0")
    got += take(front, watch, 2)
    drop_all(tcp_fake)
    db.put(b"x/0", b"again")
    got += take(front, watch, 2)
    assert sorted((e.key, e.revision) for e in got) == sorted(changes(tcp_fake, b"x/"))
    assert [e.kind for e in got].count(EventKind.DELETE) == 1
    for partition in {e.partition for e in got}:
        revisions = [e.revision for e in got if e.partition == partition]
        assert revisions == sorted(revisions)
    saved = watch.cursor.encode()
    close(front, watch)

    db.put(b"x/9", b"later")
    again = db.inner.watch(b"x/", cursor=WatchCursor.decode(saved))
    (event,) = take(front, again, 1)
    assert (event.key, event.value) == (b"x/9", b"later")
    close(front, again)


def test_compacted_on_every_front(front: Front, tcp_fake: TcpFake) -> None:
    db: Client = front.connect(tcp_fake.cluster.seeds)
    p = tcp_fake.cluster.partition_of(b"{z}")
    tcp_fake.run(tcp_fake.cluster.oldest.__setitem__, p, 100)
    watch = db.inner.watch(b"{z}/", cursor=WatchCursor({p: 3}))
    with pytest.raises(Compacted) as info:
        take(front, watch, 1)
    assert (info.value.partition, info.value.oldest) == (p, 100)
    close(front, watch)
