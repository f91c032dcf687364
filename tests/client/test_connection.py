"""`Connection` alone, over memory streams: what leaves, and when a waiter gives up."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from prkdb.client.attempt import hello_frame, hello_node_id
from prkdb.client.connection import AttemptExpired, AttemptState, Connection
from prkdb.wire import NEED_DATA, FrameDecoder, encode_message, from_wire, to_wire
from prkdb.wire.messages import GetOk, Hello, HelloOk, Status, WireMessage
from tests.client.fake import WrappedStream


class _GatedStream(WrappedStream):
    """Records what the client sends; after the hello, sends wait for `gate`."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.gate = trio.Event()
        self.sent: list[WireMessage] = []
        self._decoder = FrameDecoder()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(bytes(data))
        while (item := self._decoder.next_frame()) is not NEED_DATA:
            msg = from_wire(item)
            if not isinstance(msg, Hello):
                await self.gate.wait()
            self.sent.append(msg)
        await self.inner.send_all(data)


async def _open(nursery: trio.Nursery) -> tuple[Connection, _GatedStream, trio.abc.Stream]:
    client_end, server_end = trio.testing.memory_stream_pair()
    gated = _GatedStream(client_end)

    async def factory(host: str, port: int) -> trio.abc.Stream:
        return gated

    async def answer_hello() -> None:
        decoder = FrameDecoder()
        while (item := decoder.next_frame()) is NEED_DATA:
            decoder.receive_data(await server_end.receive_some())
        assert isinstance(from_wire(item), Hello)
        await server_end.send_all(encode_message(HelloOk(1, "c")))

    nursery.start_soon(answer_hello)
    conn = await Connection.open(
        "n1:1", "n1", 1, hello_frame("c"), lambda a, m: hello_node_id(a, m)[0], factory
    )
    return conn, gated, server_end


def _status(request_id: int) -> list:
    return to_wire(Status(request_id))


async def test_request_abandoned_before_it_left_is_never_sent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn, stream, server = await _open(nursery)
    first, second = AttemptState(), AttemptState()
    answers: list[WireMessage] = []

    async def ask_first() -> None:
        answers.append(await conn.request(_status, first))

    nursery.start_soon(ask_first)
    await trio.testing.wait_all_tasks_blocked()
    assert first.sent and conn.in_flight == 1  # the writer holds it, stuck in send_all

    with pytest.raises(AttemptExpired):
        await conn.request(_status, second, deadline=trio.current_time() + 1.0)
    assert not second.sent and second.abandoned
    stream.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert [type(m) for m in stream.sent] == [Hello, Status]  # the second never left
    assert stream.sent[1].request_id == 1

    await server.send_all(encode_message(GetOk(1, None, 0, 0, 0)))
    await trio.testing.wait_all_tasks_blocked()
    assert answers == [GetOk(1, None, 0, 0, 0)] and conn.in_flight == 0
    conn.close()


async def test_cancelled_waiter_leaves_and_late_answer_is_ignored(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn, stream, server = await _open(nursery)
    stream.gate.set()
    state = AttemptState()
    with trio.move_on_after(1.0):
        await conn.request(_status, state)
    assert state.sent and state.abandoned and conn.in_flight == 0
    await server.send_all(encode_message(GetOk(1, None, 0, 0, 0)))  # too late: dropped
    await trio.testing.wait_all_tasks_blocked()
    assert not conn.broken
    conn.close()
