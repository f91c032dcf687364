"""send_progress: acknowledged bytes grow only when the peer takes data."""

from __future__ import annotations

import socket
import time

from prkdb.server.tcpinfo import send_progress


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _settled(sock: socket.socket) -> tuple[int, int]:
    """send_progress once loopback delivered and acknowledged what it will (stable)."""
    last = send_progress(sock)
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.05)
        now = send_progress(sock)
        assert now is not None
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def test_acknowledged_bytes_stop_when_the_peer_stops_reading() -> None:
    client, server = _pair()
    try:
        assert send_progress(server) == (0, 0)
        server.sendall(b"x" * 1000)
        assert _settled(server) == (1000, 0)  # in the peer's receive buffer: acknowledged
        server.setblocking(False)
        sent = 1000
        try:
            while True:  # fill the peer's receive buffer and our send buffer
                sent += server.send(b"x" * 65536)
        except BlockingIOError:
            pass
        acked, queued = _settled(server)
        assert queued > 0 and acked + queued == sent
        assert _settled(server)[0] == acked  # nobody reads: nothing more is acknowledged
        client.setblocking(False)
        try:
            while client.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        assert _settled(server)[0] > acked  # it read: acknowledgments again
    finally:
        client.close()
        server.close()
    assert send_progress(server) is None  # closed: unknown
