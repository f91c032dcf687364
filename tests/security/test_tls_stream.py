"""`TlsStream` over real sockets: order, partial writes, cancellation, close, failures."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from prkdb.security.certs import CertAuthority
from prkdb.security.stream import TlsStream


@pytest.fixture(scope="module")
def contexts() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    d = Path(tempfile.mkdtemp(prefix="prk-T-stream-"))
    ca = CertAuthority("stream CA")
    ca_file = ca.write(d)
    node = ca.issue_node(1).write(d, "n1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(node.cert_file, node.key_file)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca_file)
    yield server, client


async def _pair(server_ctx: ssl.SSLContext,
                client_ctx: ssl.SSLContext) -> tuple[TlsStream, TlsStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    raw_client = await trio.open_tcp_stream("127.0.0.1", port)
    raw_server = await listeners[0].accept()
    await listeners[0].aclose()
    server = TlsStream(raw_server, server_ctx, server_side=True)
    client = TlsStream(raw_client, client_ctx, server_side=False, server_hostname="node-1")
    async with trio.open_nursery() as n:
        n.start_soon(server.do_handshake)
        n.start_soon(client.do_handshake)
    return server, client


async def _read_exactly(s: TlsStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await s.receive_some(65536)
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def test_both_directions_at_once_beyond_the_socket_buffers(contexts) -> None:
    server, client = await _pair(*contexts)
    assert client.getpeercert()["subject"][0][0] == ("commonName", "node-1")
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    a = os.urandom(3_000_000)
    b = os.urandom(2_000_000)
    got: dict[str, bytes] = {}

    async def one_way(src: TlsStream, dst: TlsStream, data: bytes, name: str) -> None:
        async def send() -> None:
            for i in range(0, len(data), 70_000):  # many writes, several kernel-buffer stalls
                await src.send_all(data[i:i + 70_000])

        async with trio.open_nursery() as n:
            n.start_soon(send)
            got[name] = await _read_exactly(dst, len(data))

    async with trio.open_nursery() as n:  # each stream sends and receives at once
        n.start_soon(one_way, client, server, a, "a")
        n.start_soon(one_way, server, client, b, "b")
    assert got == {"a": a, "b": b}
    await client.aclose()
    assert await server.receive_some(10) == b""  # close_notify: a clean EOF
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    await server.aclose()


async def test_a_cancelled_send_keeps_the_stream_usable(contexts) -> None:
    server, client = await _pair(*contexts)
    data = os.urandom(8_000_000)  # far beyond what the kernel buffers while nobody reads
    with trio.move_on_after(0.2) as scope:
        await client.send_all(data)
    assert scope.cancelled_caught
    async with trio.open_nursery() as n:  # the rest goes out with the next send
        n.start_soon(client.send_all, b"tail")
        assert await _read_exactly(server, len(data) + 4) == data + b"tail"
    await client.aclose()
    await server.aclose()


async def test_a_refused_handshake_sends_the_alert(contexts, tmp_path: Path) -> None:
    """The client refuses the server's certificate; the server learns why (its alert)."""
    server_ctx, _ = contexts
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.load_verify_locations(CertAuthority("other").write(tmp_path))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    raw_client = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
    raw_server = await listeners[0].accept()
    await listeners[0].aclose()
    server = TlsStream(raw_server, server_ctx, server_side=True)
    client = TlsStream(raw_client, stranger, server_side=False, server_hostname="node-1")
    failures: dict[str, BaseException] = {}

    async def shake(name: str, s: TlsStream) -> None:
        try:
            await s.do_handshake()
        except trio.BrokenResourceError as e:
            failures[name] = e.__cause__ or e
            await s.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(shake, "server", server)
        n.start_soon(shake, "client", client)
    assert isinstance(failures["client"], ssl.SSLCertVerificationError)
    assert "UNKNOWN_CA" in str(failures["server"]).upper().replace(" ", "_")


async def test_eof_without_close_notify_is_broken(contexts) -> None:
    server, client = await _pair(*contexts)
    await client.transport_stream.aclose()  # cut, no close_notify
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(10)
    await server.aclose()


async def test_write_nowait_then_send_all_keeps_the_order(contexts) -> None:
    """The fast path: what the socket does not take is written by the next send_all."""
    server, client = await _pair(*contexts)
    chunks = [os.urandom(50_000) for _ in range(60)]  # 3 MB: the socket fills up
    backlog = False
    for c in chunks[:30]:
        backlog = client.write_nowait(c) or backlog
    assert backlog and client.backlog_bytes > 0
    async with trio.open_nursery() as n:
        async def rest() -> None:
            await client.send_all(b"")  # the backlog first
            for c in chunks[30:]:
                await client.send_all(c)
        n.start_soon(rest)
        assert await _read_exactly(server, 3_000_000) == b"".join(chunks)
    assert client.backlog_bytes == 0
    await client.aclose()
    await server.aclose()


async def test_a_plain_fin_without_close_notify_is_broken_not_a_busy_loop(contexts) -> None:
    server, client = await _pair(*contexts)
    await client.send_all(b"last")
    assert await _read_exactly(server, 4) == b"last"
    client.transport_stream.socket.shutdown(socket.SHUT_WR)  # FIN, no close_notify
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
        await server.receive_some(10)
    await client.aclose()
    await server.aclose()
