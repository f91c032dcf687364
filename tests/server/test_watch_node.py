"""Watches served by a real node (issue 17), over the real wire.

A single-node Node runs in-process (it leads every partition); the watcher
and the writer are blocking wire clients in worker threads, so the node's
trio loop runs meanwhile (as tests/server/test_keyapi.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from prkdb.errors import ErrorCode
from prkdb.server.watch import PROGRESS_INTERVAL_S, SINK_HIGH_WATER
from prkdb.wire import encode_message
from prkdb.wire.messages import (
    PROTOCOL_VERSION,
    Error,
    EventKind,
    Hello,
    Watch,
    WatchCancel,
    WatchEvents,
    WriteOk,
)
from tests.integration.cluster import CLUSTER_ID, WireConn
from tests.server.helpers import eventually
from tests.server.test_keyapi import Client, serving


async def _recv(conn: WireConn) -> object:
    return await trio.to_thread.run_sync(conn.recv)


async def _watcher(client: Client) -> WireConn:
    return await trio.to_thread.run_sync(WireConn, client.node.client_port)


def _watcher_that_never_reads(client: Client, p: int, *, prev_values: bool) -> socket.socket:
    """A raw connection (small receive buffer) watching all of partition p, never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", client.node.client_port))
    sock.sendall(encode_message(Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0)))
    sock.sendall(encode_message(Watch(1, p, b"", None, 0, prev_values)))
    return sock


async def test_backlog_then_live_events_in_order_then_idle_progress(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        p = 0
        a1, a2, a3, b1 = client.keys_of(p, 4, b"a")[:3] + client.keys_of(p, 1, b"b")
        first = await client.put(a1, b"1")
        await client.put(a2, b"2")
        await client.put(b1, b"x")  # out of the range
        conn = await _watcher(client)
        conn.send(Watch(1, p, b"a", b"b", first.revision - 1, True))
        backlog = await _recv(conn)
        assert isinstance(backlog, WatchEvents) and backlog.request_id == 1
        assert [(e.kind, e.key, e.value) for e in backlog.events] == [
            (EventKind.PUT, a1, b"1"), (EventKind.PUT, a2, b"2")]
        applied = client.node.drivers[p].applied_index
        assert backlog.progress == applied
        w3 = await client.put(a3, b"3")
        await client.put(a1, b"1b")
        seen = []
        progress = backlog.progress
        while len(seen) < 2:
            frame = await _recv(conn)
            assert isinstance(frame, WatchEvents)
            assert all(e.revision > progress for e in frame.events)
            assert frame.progress >= max([progress, *(e.revision for e in frame.events)])
            progress = frame.progress
            seen += frame.events
        assert [(e.key, e.value, e.prev_value) for e in seen] == [(a3, b"3", None),
                                                                  (a1, b"1b", b"1")]
        assert seen[0].revision == w3.revision
        # Idle: a progress notice comes within about a second, with no events.
        before = trio.current_time()
        notice = await _recv(conn)
        assert isinstance(notice, WatchEvents) and notice.events == ()
        assert notice.progress >= progress
        assert trio.current_time() - before < PROGRESS_INTERVAL_S + 1.0
        conn.close()


async def test_a_cursor_older_than_the_history_gets_compacted_with_oldest(
        tmp_path: Path) -> None:
    async with serving(tmp_path, history_events=3) as client:
        p = 1
        keys = client.keys_of(p, 10)
        for k in keys:
            await client.put(k, b"v")
        oldest = client.node.drivers[p].sm.events.oldest
        assert oldest > 0
        conn = await _watcher(client)
        conn.send(Watch(5, p, b"", None, 0, False))
        err = await _recv(conn)
        assert isinstance(err, Error) and err.request_id == 5
        assert err.code == ErrorCode.COMPACTED and err.details["oldest"] == oldest
        # From the oldest on, the rest is served.
        conn.send(Watch(6, p, b"", None, oldest, False))
        frame = await _recv(conn)
        assert isinstance(frame, WatchEvents) and frame.events
        assert all(e.revision > oldest for e in frame.events)
        assert len(client.node.drivers[p].watches) == 1
        conn.close()


async def test_cancel_and_close_free_the_registration(tmp_path: Path) -> None:
    async with serving(tmp_path, max_watches_per_connection=2) as client:
        conn = await _watcher(client)
        d0, d1 = client.node.drivers[0], client.node.drivers[1]
        conn.send(Watch(1, 0, b"", None, 0, False))
        conn.send(Watch(2, 1, b"", None, 0, False))
        for _ in range(2):
            assert isinstance(await _recv(conn), WatchEvents)
        conn.send(Watch(3, 1, b"", None, 0, False))  # over the limit
        err = await _recv(conn)
        assert isinstance(err, Error) and err.request_id == 3
        assert err.code == ErrorCode.BAD_REQUEST and "max_watches_per_connection" in err.message
        assert (len(d0.watches), len(d1.watches)) == (1, 1)
        conn.send(WatchCancel(1))
        conn.send(WatchCancel(99))  # unknown: ignored
        await eventually(lambda: len(d0.watches) == 0)
        assert len(d1.watches) == 1
        conn.close()
        await eventually(lambda: len(d1.watches) == 0)
        # The server still answers.
        assert isinstance(await client.put(b"k", b"v"), WriteOk)


async def test_a_stalled_reader_overflows_while_writes_go_on(tmp_path: Path) -> None:
    buffer_bytes = 256 * 1024
    async with serving(tmp_path, watch_buffer_bytes=buffer_bytes) as client:
        p = 2
        driver = client.node.drivers[p]
        sock = _watcher_that_never_reads(client, p, prev_values=True)
        await eventually(lambda: len(driver.watches) == 1)
        value = b"x" * 60_000
        keys = client.keys_of(p, 8)
        n = 0
        while driver.watches.overflows == 0:
            reply = await client.put(keys[n % len(keys)], value)
            assert isinstance(reply, WriteOk)
            n += 1
            assert n < 2000, "the stalled watch never overflowed"
        assert len(driver.watches) == 0
        # The bound decided, well before the writes had filled much memory:
        # what was produced is at most the buffer, the connection's high-water
        # mark and the kernel's socket buffers.
        produced = n * len(value) * 2  # values and previous values
        assert buffer_bytes < produced < buffer_bytes + SINK_HIGH_WATER + 8 * 1024 * 1024
        for k in keys:  # writes go on
            assert isinstance(await client.put(k, b"after"), WriteOk)
        sock.close()


async def test_a_client_that_reads_nothing_is_cut_off_by_its_silence(tmp_path: Path) -> None:
    """Small events at a modest rate: the buffers (10,000 events, 1 MiB unsent, and a
    kernel send buffer autotuned up to 4 MiB) would take minutes to fill; the silence
    of the client's TCP acknowledgments ends the watch after STALLED_S instead."""
    async with serving(tmp_path) as client:
        p = 1
        driver = client.node.drivers[p]
        sock = _watcher_that_never_reads(client, p, prev_values=False)
        await eventually(lambda: len(driver.watches) == 1)
        keys = client.keys_of(p, 8)
        produced = 0
        with trio.fail_after(60):  # a hang guard, not a timing
            while driver.watches.overflows == 0:
                assert isinstance(await client.put(keys[produced % 8], b"v" * 100), WriteOk)
                produced += 1
                await trio.sleep(0.005)
        assert len(driver.watches) == 0
        assert produced * 200 < 1024 * 1024, "ended by a buffer filling, not by the silence"
        sock.close()


async def test_a_restarted_partition_rehooks_and_sends_no_duplicate(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        p = 0
        driver = client.node.drivers[p]
        keys = client.keys_of(p, 5)
        assert driver.sm.on_events is None  # nobody watches: no events are built
        conn = await _watcher(client)
        conn.send(Watch(1, p, b"", None, 0, False))
        assert isinstance(await _recv(conn), WatchEvents)
        assert driver.sm.on_events is not None
        revs = [(await client.put(k, b"1")).revision for k in keys[:3]]
        seen: list[int] = []
        while len(seen) < 3:
            frame = await _recv(conn)
            assert isinstance(frame, WatchEvents)
            seen += [e.revision for e in frame.events]
        driver.restart_core()  # as after a bug: a new machine re-applies the log
        assert driver.sm.on_events is not None
        await eventually(lambda: driver.is_leader)
        revs += [(await client.put(k, b"2")).revision for k in keys[3:]]
        while len(seen) < 5:
            frame = await _recv(conn)
            assert isinstance(frame, WatchEvents)
            seen += [e.revision for e in frame.events]
        assert seen == revs
        conn.send(WatchCancel(1))
        await eventually(lambda: driver.sm.on_events is None)
        conn.close()


async def test_a_revision_too_large_for_a_frame_ends_the_watch_not_the_partition(
        tmp_path: Path) -> None:
    async with serving(tmp_path, max_value_size=40_000, max_key_size=1000,
                       max_frame=43_000) as client:
        p = 0
        key = client.keys_of(p, 1)[0]
        await client.put(key, b"a" * 40_000)
        conn = await _watcher(client)
        conn.send(Watch(1, p, b"", None, client.node.drivers[p].applied_index, True))
        assert isinstance(await _recv(conn), WatchEvents)
        await client.put(key, b"b" * 40_000)  # value + previous value: over the frame limit
        err = await _recv(conn)
        assert isinstance(err, Error) and err.request_id == 1
        assert err.code == ErrorCode.TOO_LARGE
        assert len(client.node.drivers[p].watches) == 0
        assert client.node.raft_loop.restarts == 0
        assert isinstance(await client.put(key, b"c"), WriteOk)
        conn.close()


async def test_previous_values_only_when_asked(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        p = 1
        key = client.keys_of(p, 1)[0]
        first = await client.put(key, b"old")
        conn = await _watcher(client)
        conn.send(Watch(1, p, b"", None, first.revision, False))
        conn.send(Watch(2, p, b"", None, first.revision, True))
        for _ in range(2):
            assert isinstance(await _recv(conn), WatchEvents)
        await client.put(key, b"new")
        frames = {}
        while len(frames) < 2:
            f = await _recv(conn)
            assert isinstance(f, WatchEvents)
            if f.events:
                frames[f.request_id] = f.events
        assert [(e.value, e.prev_value) for e in frames[1]] == [(b"new", None)]
        assert [(e.value, e.prev_value) for e in frames[2]] == [(b"new", b"old")]
        conn.close()
