"""Watches on a real 3-node cluster (processes), over the raw wire (issue 17).

The watcher attaches to a follower: it must send every committed write of its
range, in revision order, and nothing the follower has not applied; a resume
from the cursor on another node continues with no gap and no duplicate.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.wire import NEED_DATA, PROTOCOL_VERSION, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import (
    Delete,
    Error,
    EventKind,
    Hello,
    HelloOk,
    Put,
    Watch,
    WatchCancel,
    WatchEvents,
    WriteOk,
)
from tests.integration.cluster import CLUSTER_ID, LocalCluster, WireConn

pytestmark = pytest.mark.slow

PARTITIONS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("watch"), 3, partitions=PARTITIONS, tick_ms=20,
                     extra="[limits]\nhistory_events = 50\nwatch_buffer_bytes = 262144\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


def _keys(partition: int, prefix: bytes, n: int) -> list[bytes]:
    out = []
    for i in itertools.count():
        k = prefix + b"%04d" % i
        if partition_for(k, PARTITIONS, "hashtag") == partition:
            out.append(k)
            if len(out) == n:
                return out
    raise AssertionError


_CLIENT_IDS = itertools.count(99)


class Writer:
    def __init__(self, cluster: LocalCluster, leader: int) -> None:
        self.conn = WireConn(cluster.client_ports[leader - 1])
        self.client_id = next(_CLIENT_IDS)
        self.rid = itertools.count(1)
        self.seq = itertools.count(1)

    def put(self, key: bytes, value: bytes) -> int:
        reply = self.conn.call(Put(next(self.rid), key, value, self.client_id, next(self.seq)))
        assert isinstance(reply, WriteOk), reply
        return reply.revision

    def delete(self, key: bytes) -> int:
        reply = self.conn.call(Delete(next(self.rid), key, self.client_id, next(self.seq)))
        assert isinstance(reply, WriteOk), reply
        return reply.revision


def _collect(conn: WireConn, rid: int, until: int, progress: int,
             timeout: float = 20.0) -> tuple[list[tuple[EventKind, bytes, int]], int]:
    """Events of stream `rid` until its progress reaches `until`; checks the frame rules."""
    events = []
    deadline = time.monotonic() + timeout
    while progress < until:
        assert time.monotonic() < deadline, f"progress {progress} never reached {until}"
        frame = conn.recv()
        assert isinstance(frame, WatchEvents), frame
        assert frame.request_id == rid
        for e in frame.events:
            assert e.revision > progress, (e, progress)
            assert e.revision <= frame.progress
        progress = frame.progress
        events += [(e.kind, e.key, e.revision) for e in frame.events]
    return events, progress


def test_a_follower_watch_then_a_resume_on_the_leader(cluster: LocalCluster) -> None:
    p = 0
    leader = cluster.wait_ready()[p]
    follower = next(i for i in cluster.ids if i != leader)
    writer = Writer(cluster, leader)
    keys = _keys(p, b"w/", 30)
    watcher = WireConn(cluster.client_ports[follower - 1])
    start = writer.put(keys[0], b"before")
    watcher.send(Watch(1, p, b"w/", b"w0", start - 1, False))
    expected = [(EventKind.PUT, keys[0], start)]
    for i, k in enumerate(keys[1:]):
        expected.append((EventKind.PUT, k, writer.put(k, b"v%d" % i)))
    expected.append((EventKind.DELETE, keys[3], writer.delete(keys[3])))
    writer.put(_keys(p, b"x/", 1)[0], b"outside the range")
    got, progress = _collect(watcher, 1, expected[-1][2], start - 1)
    assert got == expected
    # What the follower sent, it had applied.
    assert progress <= cluster.status(follower).partitions[p].applied
    watcher.send(WatchCancel(1))
    watcher.close()

    # Resume from the middle of what was delivered, on the leader: exactly the rest.
    cursor = expected[10][2]
    more = [(EventKind.PUT, k, writer.put(k, b"again")) for k in keys[:5]]
    resumed = WireConn(cluster.client_ports[leader - 1])
    resumed.send(Watch(7, p, b"w/", b"w0", cursor, False))
    got, _ = _collect(resumed, 7, more[-1][2], cursor)
    assert got == expected[11:] + more
    resumed.close()


def test_compacted_then_relist(cluster: LocalCluster) -> None:
    p = 1
    leader = cluster.wait_ready()[p]
    writer = Writer(cluster, leader)
    for k in _keys(p, b"c/", 60):  # more than the history keeps (50 events)
        last = writer.put(k, b"v")
    conn = WireConn(cluster.client_ports[leader - 1])
    conn.send(Watch(1, p, b"c/", b"c0", 0, False))
    err = conn.recv()
    assert isinstance(err, Error) and err.code == ErrorCode.COMPACTED
    oldest = err.details["oldest"]
    assert 0 < oldest < last
    conn.send(Watch(2, p, b"c/", b"c0", last, False))  # "relisted" up to `last`
    frame = conn.recv()
    assert isinstance(frame, WatchEvents) and frame.events == () and frame.progress >= last
    conn.close()


def test_a_stalled_watcher_is_cut_off_and_writes_go_on(cluster: LocalCluster) -> None:
    p = 0
    leader = cluster.wait_ready()[p]
    follower = next(i for i in cluster.ids if i != leader)
    writer = Writer(cluster, leader)
    first = writer.put(_keys(p, b"s/", 1)[0], b"start")
    # A watcher (on a follower) that reads nothing, with a tiny receive buffer.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", cluster.client_ports[follower - 1]))
    sock.sendall(encode_message(Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0)))
    sock.sendall(encode_message(Watch(1, p, b"s/", b"s0", first, False)))
    # Far more than the watch buffer (256 KiB), the server's high-water mark
    # (1 MiB) and the kernel's socket buffers together.
    value = b"x" * 60_000
    keys = _keys(p, b"s/", 10)
    revs = [writer.put(keys[i % len(keys)], value) for i in range(200)]
    assert cluster.status(leader).partitions[p].commit >= revs[-1]  # still answering
    # Now read: a prefix of the writes, in order and without a gap, then the overflow.
    decoder = FrameDecoder()
    got = []
    progress = first
    while True:
        frame = decoder.next_frame()
        if frame is NEED_DATA:
            data = sock.recv(1 << 16)
            assert data, "closed before the overflow error"
            decoder.receive_data(data)
            continue
        msg = from_wire(frame)
        if isinstance(msg, HelloOk):
            continue
        if isinstance(msg, Error):
            assert msg.request_id == 1 and msg.code == ErrorCode.WATCH_OVERFLOW, msg
            break
        assert isinstance(msg, WatchEvents)
        assert all(e.revision > progress for e in msg.events)
        progress = msg.progress
        got += [e.revision for e in msg.events]
    assert got == revs[:len(got)] and len(got) < len(revs)
    sock.close()
