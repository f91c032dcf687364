"""FramedStream writes: queued until a flush, straight to the socket when idle,
the rest (a reply bigger than the socket buffer) by the writer task, in order,
and whatever is queued at close still leaves."""

from __future__ import annotations

import pytest
import trio

from prkdb.server.framed import FramedStream, ReplyOutbox, StreamClosed
from prkdb.wire import NEED_DATA, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import Error


def _pair(outbox: ReplyOutbox | None) -> tuple[FramedStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return FramedStream(trio.SocketStream(a), 1 << 30, outbox=outbox), trio.SocketStream(b)


async def _read_frames(stream: trio.SocketStream, n: int) -> list[Error]:
    dec = FrameDecoder(max_frame=1 << 30)
    out: list[Error] = []
    with trio.fail_after(10):
        while len(out) < n:
            dec.receive_data(bytes(await stream.receive_some(1 << 20)))
            while (item := dec.next_frame()) is not NEED_DATA:
                out.append(from_wire(item))
    return out


def _msg(i: int, size: int = 10) -> Error:
    return Error(i, 4, "x" * size)


async def test_replies_wait_for_the_flush_then_leave_in_order() -> None:
    outbox = ReplyOutbox()
    framed, peer = _pair(outbox)
    for i in range(1, 4):
        assert framed.send_nowait(_msg(i))
    assert outbox.dirty == [framed]  # registered once, not per frame
    with trio.move_on_after(0.05):
        await peer.receive_some(100)
        raise AssertionError("nothing may leave before the flush")
    outbox.flush()
    assert outbox.dirty == []
    got = await _read_frames(peer, 3)
    assert [m.request_id for m in got] == [1, 2, 3]


async def test_what_the_socket_does_not_take_is_finished_by_the_writer() -> None:
    outbox = ReplyOutbox()
    framed, peer = _pair(outbox)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(framed.run_writer)
        for i in range(1, 601):  # 2.4 MB: far beyond a socket buffer
            framed.send_nowait(_msg(i, 4000))
        outbox.flush()
        framed.send_nowait(_msg(999))  # queued behind the unsent rest: must not jump it
        outbox.flush()
        got = await _read_frames(peer, 601)
        assert [m.request_id for m in got] == [*range(1, 601), 999]
        assert all(len(m.message) == 4000 for m in got[:600])
        nursery.cancel_scope.cancel()


async def test_without_outbox_the_writer_sends_and_close_flushes() -> None:
    framed, peer = _pair(None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(framed.run_writer)
        framed.send_nowait(_msg(1))
        assert [m.request_id for m in await _read_frames(peer, 1)] == [1]
        framed.send_nowait(_msg(2))
        await framed.aclose(flush_timeout=5)
        assert not framed.send_nowait(_msg(3))  # closed: dropped, not queued
    assert [m.request_id for m in await _read_frames(peer, 1)] == [2]


async def test_the_reader_flushes_its_own_replies_before_waiting() -> None:
    outbox = ReplyOutbox()
    framed, peer = _pair(outbox)
    framed.send_nowait(_msg(7))  # e.g. a STALE read answered by the reading task
    async with trio.open_nursery() as nursery:
        received: list[object] = []

        async def read_one() -> None:
            received.append(await framed.receive())

        nursery.start_soon(read_one)
        assert [m.request_id for m in await _read_frames(peer, 1)] == [7]
        await peer.send_all(encode_message(_msg(8)))
    assert from_wire(received[0]).request_id == 8


async def test_reads_decode_frames_in_order_across_any_split_then_eof() -> None:
    framed, peer = _pair(None)
    data = b"".join(encode_message(_msg(i, size=i)) for i in range(1, 41))
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            async def send_in_odd_pieces() -> None:
                for cut in range(0, len(data), 7):  # frames split mid-header and mid-body
                    await peer.send_all(data[cut : cut + 7])
                    if cut % 5 == 0:
                        await trio.sleep(0.001)  # so some reads find nothing and wait
                await peer.send_eof()

            n.start_soon(send_in_odd_pieces)
            got = [from_wire(await framed.receive()).request_id for _ in range(40)]
            assert got == list(range(1, 41))
            with pytest.raises(StreamClosed):
                await framed.receive()


async def test_a_reader_waiting_for_input_is_woken_by_close() -> None:
    framed, _peer = _pair(None)
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            async def close_soon() -> None:
                await trio.sleep(0.05)
                await framed.aclose()

            n.start_soon(close_soon)
            with pytest.raises(StreamClosed):
                await framed.receive()
    with pytest.raises(StreamClosed):  # and later calls fail too, never read another fd
        await framed.receive()
