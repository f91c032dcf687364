"""`SocketReader`: the same bytes as `receive_some`, in order, through every path."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

from prkdb.netio import SocketReader


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_reads_everything_in_order_whether_it_waits_or_not() -> None:
    mine, peer = _pair()
    reader = SocketReader(mine)
    payload = bytes(range(256)) * 400  # 100 KiB: several full 4 KiB reads in a row
    got = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            async def send() -> None:
                for cut in range(0, len(payload), 10_000):
                    await peer.send_all(payload[cut : cut + 10_000])
                    await trio.sleep(0.001)  # so some reads find nothing and must wait
                await peer.send_eof()

            n.start_soon(send)
            while chunk := await reader.read(4096):
                assert len(chunk) <= 4096
                got += chunk
    assert got == payload
    assert await reader.read(4096) == b""  # EOF stays EOF


async def test_a_reset_connection_raises_oserror() -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname())
    server, _ = lsock.accept()
    lsock.close()
    server.setblocking(False)
    mine = trio.SocketStream(trio.socket.from_stdlib_socket(server))
    reader = SocketReader(mine)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: the peer sees a reset, not an EOF
    with trio.fail_after(10), pytest.raises(ConnectionResetError):
        await reader.read(10)
    await mine.aclose()


async def test_after_detach_it_never_touches_the_fd_again() -> None:
    mine, peer = _pair()
    reader = SocketReader(mine)
    await peer.send_all(b"late")
    reader.detach()
    with pytest.raises(trio.ClosedResourceError):
        await reader.read(10)


async def test_a_waiting_read_is_woken_by_close() -> None:
    mine, _peer = _pair()
    reader = SocketReader(mine)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            async def close_soon() -> None:
                await trio.sleep(0.05)
                reader.detach()
                await mine.aclose()

            n.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await reader.read(10)


async def test_streams_that_are_not_sockets_use_receive_some() -> None:
    send, recv = trio.testing.memory_stream_pair()
    reader = SocketReader(recv)
    await send.send_all(b"hello")
    assert await reader.read(100) == b"hello"
    await send.aclose()
    assert await reader.read(100) == b""
