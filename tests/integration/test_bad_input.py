"""Bad input to a live node: every case gets an error frame or a close, and the
node keeps serving well-behaved clients (asserted after each case)."""

from __future__ import annotations

import random
import socket
import struct
import time

import cbor2
import pytest

from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.wire import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_message,
    from_wire,
)
from prkdb.wire.messages import Error, Get, GetOk, Hello, Put, WriteOk
from tests.integration.cluster import CLUSTER_ID, LocalCluster, WireConn

pytestmark = pytest.mark.slow


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


class _Replies:
    """Frames the node sends back on one raw socket (None once it closed)."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.d = FrameDecoder()

    def next(self) -> object | None:
        while True:
            f = self.d.next_frame()
            if f is CLOSED:
                return None
            if f is not NEED_DATA:
                return from_wire(f)
            try:
                data = self.s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return None
            self.d.receive_data(data)


def _read_reply(s: socket.socket) -> object | None:
    return _Replies(s).next()


def _connect_patiently(port: int, within: float = 30.0) -> WireConn:
    """A hello answered within `within` s: after a flood a loaded node may be slow to
    answer, and what the tests prove is that it still serves, not how fast."""
    deadline = time.monotonic() + within
    while True:
        try:
            return WireConn(port)
        except (TimeoutError, ConnectionError):
            if time.monotonic() > deadline:
                raise


def _still_serves(c: LocalCluster, port: int, n: int) -> None:
    conn = _connect_patiently(port)
    try:
        key = b"alive-%d" % n
        p = partition_for(key, c.partitions)
        # Stale reads are served by any node; a write must go to the leader.
        leader = c.leaders()[p]
        lconn = _connect_patiently(c.client_ports[leader - 1])
        assert isinstance(lconn.call(Put(1, key, b"v", 99, n)), WriteOk)
        lconn.close()
        got = conn.call(Get(2, key, 2, p))
        assert isinstance(got, GetOk)
    finally:
        conn.close()


def test_garbage_and_malformed_frames_never_take_the_node_down(cluster3: LocalCluster) -> None:
    port = cluster3.client_ports[0]
    rng = random.Random(1)
    hello = encode_message(Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0))
    cases = {
        "random bytes": bytes(rng.getrandbits(8) for _ in range(200)),
        "length over max": struct.pack(">I", 0xFFFFFFF0) + b"x" * 10,
        "not cbor": struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff",
        "wrong shape first frame": encode_message(Get(1, b"k", 0, 0)),
        "cbor of wrong shape": struct.pack(">I", 3) + cbor2.dumps([1, 2])[:3],
        "hello then wrong shape": hello + (lambda b: struct.pack(">I", len(b)) + b)(
            cbor2.dumps([11, 1, "not bytes", b"v", 1, 1])
        ),
        "hello then unknown type": hello + (lambda b: struct.pack(">I", len(b)) + b)(
            cbor2.dumps([999, 1])
        ),
    }
    for n, (name, payload) in enumerate(cases.items()):
        s = _raw(port)
        s.sendall(payload)
        replies = _Replies(s)
        reply = replies.next()
        if name.startswith("hello then"):
            assert reply is not None and type(reply).__name__ == "HelloOk", name
            reply = replies.next()
            assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST, (name, reply)
        assert reply is None or isinstance(reply, Error), (name, reply)
        s.close()
        _still_serves(cluster3, port, n + 1)


def test_wrong_cluster_and_version_are_refused(cluster3: LocalCluster) -> None:
    port = cluster3.client_ports[1]
    for hello, code in (
        (Hello(PROTOCOL_VERSION, "someone-else", "client", 0), ErrorCode.WRONG_CLUSTER),
        (Hello(77, CLUSTER_ID, "client", 0), ErrorCode.BAD_VERSION),
        (Hello(PROTOCOL_VERSION, CLUSTER_ID, "peer", 3), ErrorCode.BAD_REQUEST),
    ):
        s = _raw(port)
        s.sendall(encode_message(hello))
        reply = _read_reply(s)
        assert isinstance(reply, Error) and reply.code == code, reply
        s.close()
    _still_serves(cluster3, port, 100)


def test_half_frames_and_connection_churn(cluster3: LocalCluster) -> None:
    port = cluster3.client_ports[2]
    hello = encode_message(Hello(PROTOCOL_VERSION, CLUSTER_ID, "client", 0))
    for i in range(1000):
        s = _raw(port)
        if i % 3 == 0:
            s.sendall(hello[: len(hello) // 2])  # half a frame, then gone
        elif i % 3 == 1:
            s.sendall(hello + encode_message(Put(1, b"k", b"v", 5, 1))[:7])
        s.close()
    _still_serves(cluster3, port, 200)
    # And the peer port refuses strangers without falling over.
    s = _raw(cluster3.peer_ports[0])
    s.sendall(encode_message(Hello(PROTOCOL_VERSION, "intruder", "peer", 9)))
    reply = _read_reply(s)
    assert reply is None or isinstance(reply, Error)
    s.close()
    assert cluster3.wait_ready(10)
