"""One multiplexed TCP connection to one node.

Theory of operation
-------------------
`Connection.open` dials, sends `Hello`, waits for `HelloOk` and then starts a
reader task. Any number of tasks then call `Connection.request` at once:
each request gets a fresh ``request_id``, registers a `_Waiter`, writes its
frame under a send lock (trio streams forbid concurrent ``send_all``) and
sleeps until the reader hands it the response with that id. Responses may
come in any order.

Failure: the first error on the stream (EOF, reset, a protocol violation,
a connection-level `Error`, a send that was interrupted) marks the
connection *broken*, fails every waiter with `ConnectionLost` and closes the
stream. A broken connection is never reused; the client dials again lazily.
Whether a failed request may have reached the server is recorded in the
caller's `AttemptState.sent`, set just before the bytes go to the stream,
so the retry loop can tell "surely not applied" from "maybe applied".

Why a system task for the reader: ``await PrkDbClient.connect(...)`` must
return a usable client without the caller handing us a nursery. The reader
catches every ``Exception`` (a system task must not crash the run) and its
cancel scope is cancelled by `aclose`, so it never outlives the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

from prkdb.errors import (
    ErrorCode,
    PrkdbError,
    ProtocolError,
    TooLarge,
    WrongCluster,
    error_from_code,
)
from prkdb.wire import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    PROTOCOL_VERSION,
    FrameDecoder,
    LocalProtocolError,
    RemoteProtocolError,
    encode_message,
    from_wire,
)
from prkdb.wire.messages import (
    ROLE_CLIENT,
    AdminOk,
    Error,
    GetOk,
    Hello,
    HelloOk,
    StatusOk,
    WireMessage,
    WriteOk,
)

__all__ = [
    "AttemptState",
    "ConnectFailed",
    "Connection",
    "ConnectionLost",
    "StreamFactory",
    "error_from_frame",
]

StreamFactory = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""``(host, port) -> connected stream``; `trio.open_tcp_stream` by default, memory in tests."""

_RESPONSES = (GetOk, WriteOk, StatusOk, AdminOk, Error)
_RECEIVE_SIZE = 64 * 1024
# What a broken transport raises; anything else escaping a stream is a bug.
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class ConnectFailed(Exception):
    """Could not establish a connection (nothing was sent): always safe to retry."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        super().__init__(f"{address}: cannot connect: {cause}")
        self.address = address


class ConnectionLost(Exception):
    """An established connection broke; in-flight requests got no answer."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        reason = cause.reason if isinstance(cause, ConnectionLost) else str(cause)
        reason = reason or type(cause).__name__
        super().__init__(f"{address}: connection lost: {reason}")
        self.address = address
        self.reason = reason


@final
class AttemptState:
    """What one attempt did, readable after it was cancelled or failed."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        #: True once the request's bytes were handed to the stream: from then
        #: on the server may have executed it.
        self.sent = False


def error_from_frame(err: Error) -> PrkdbError:
    """`error_from_code` for an Error frame, robust to details named like its parameters."""
    details = {k: v for k, v in err.details.items() if k not in ("code", "message")}
    exc = error_from_code(err.code, err.message, **details)
    exc.details = dict(err.details)
    return exc


@final
class _Waiter:
    __slots__ = ("error", "event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: WireMessage | None = None
        self.error: BaseException | None = None


@final
class Connection:
    """A handshaken connection to one node, shared by every request to it."""

    def __init__(
        self, address: str, stream: trio.abc.Stream, decoder: FrameDecoder, node_id: int
    ) -> None:
        self.address = address
        #: The node id the server announced in HelloOk.
        self.node_id = node_id
        self._stream = stream
        self._decoder = decoder
        # Frames waiting for the writer task: requests queued while it writes
        # leave together in its next write (one system call, not one each).
        self._outbox: list[tuple[bytes, AttemptState]] = []
        self._outbox_ready = trio.Event()
        self._writer_scope = trio.CancelScope()
        self._waiters: dict[int, _Waiter] = {}
        self._next_request_id = 1
        self._broken: BaseException | None = None
        self._reader_scope = trio.CancelScope()
        self.max_frame = DEFAULT_MAX_FRAME

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    @classmethod
    async def open(
        cls, address: str, host: str, port: int, cluster_id: str, factory: StreamFactory
    ) -> Connection:
        """Dial, exchange Hello/HelloOk, start the reader.

        Raises:
            ConnectFailed: the node is unreachable, closed during the hello,
                or answered UNAVAILABLE (retry elsewhere or later).
            WrongCluster: the node belongs to another cluster (fatal).
            ProtocolError: BAD_VERSION or garbage from the node (fatal).
        """
        try:
            stream = await factory(host, port)
        except _TRANSPORT_ERRORS as exc:
            raise ConnectFailed(address, exc) from exc
        try:
            hello = Hello(PROTOCOL_VERSION, cluster_id, ROLE_CLIENT, 0)
            await stream.send_all(encode_message(hello))
            decoder = FrameDecoder()
            item = await _receive_one(stream, decoder)
            if item is CLOSED:
                raise ConnectFailed(address, "closed during the hello")
            msg = from_wire(item)
            if isinstance(msg, Error):
                exc = error_from_frame(msg)
                if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT):
                    raise ConnectFailed(address, exc.message)
                raise exc
            if not isinstance(msg, HelloOk):
                raise RemoteProtocolError(f"{address}: expected HelloOk, got {type(msg).__name__}")
            if msg.cluster_id != cluster_id:
                raise WrongCluster(
                    f"{address} belongs to cluster {msg.cluster_id!r}, not {cluster_id!r}",
                    details={"cluster_id": msg.cluster_id},
                )
        except _TRANSPORT_ERRORS as exc:
            await trio.aclose_forcefully(stream)
            raise ConnectFailed(address, exc) from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conn = cls(address, stream, decoder, msg.node_id)
        trio.lowlevel.spawn_system_task(conn._read_loop, name=f"prkdb-client-reader[{address}]")
        trio.lowlevel.spawn_system_task(conn._write_loop, name=f"prkdb-client-writer[{address}]")
        return conn

    async def request(
        self, build: Callable[[int], WireMessage], state: AttemptState
    ) -> WireMessage:
        """Send one request and wait for its response (an `Error` frame is returned, not raised).

        Args:
            build: makes the message for a given request_id.
            state: ``state.sent`` is set once the bytes may reach the server.

        Raises:
            ConnectionLost: the connection broke before an answer came.
            TooLarge: the request does not fit in a frame (nothing sent).
        """
        if self._broken is not None:
            raise ConnectionLost(self.address, self._broken)
        request_id = self._next_request_id
        self._next_request_id += 1
        try:
            frame = encode_message(build(request_id), max_frame=self.max_frame)
        except LocalProtocolError as exc:
            if exc.code == ErrorCode.TOO_LARGE:
                raise TooLarge(exc.message, details=exc.details) from None
            raise
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            self._outbox.append((frame, state))
            self._outbox_ready.set()
            await waiter.event.wait()
        finally:
            del self._waiters[request_id]
        if waiter.error is not None:
            raise ConnectionLost(self.address, waiter.error)
        assert waiter.reply is not None
        return waiter.reply

    async def _write_loop(self) -> None:
        """Write queued frames, everything queued at once in one write."""
        try:
            with self._writer_scope:
                while self._broken is None:
                    if not self._outbox:
                        await self._outbox_ready.wait()
                        self._outbox_ready = trio.Event()
                        continue
                    batch, self._outbox = self._outbox, []
                    for _, state in batch:
                        state.sent = True  # from now on the server may execute it
                    await self._stream.send_all(b"".join(f for f, _ in batch))
        except Exception as exc:  # transport errors, or a bug: the connection is done
            # A half-written frame poisons the stream for everyone (STYLE §8.11).
            self._mark_broken(exc)

    def close(self) -> None:
        """Break the connection (idempotent); the reader closes the stream."""
        self._mark_broken(ConnectionLost(self.address, "closed by the client"))

    def _mark_broken(self, cause: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = cause
        for waiter in self._waiters.values():
            if not waiter.event.is_set():
                waiter.error = cause
                waiter.event.set()
        self._reader_scope.cancel()
        self._writer_scope.cancel()

    def _dispatch(self, msg: WireMessage) -> None:
        if not isinstance(msg, _RESPONSES):
            raise RemoteProtocolError(f"{type(msg).__name__} is not a response")
        if isinstance(msg, Error) and msg.request_id == 0:
            # About the connection, not a request: the server closes after it.
            raise error_from_frame(msg)
        waiter = self._waiters.get(msg.request_id)
        if waiter is None or waiter.event.is_set():
            return  # its caller gave up (cancelled); the answer is not needed
        waiter.reply = msg
        waiter.event.set()

    async def _read_loop(self) -> None:
        try:
            with self._reader_scope:
                while True:
                    item = await _receive_one(self._stream, self._decoder)
                    if item is CLOSED:
                        self._mark_broken(ConnectionLost(self.address, "closed by the server"))
                        return
                    self._dispatch(from_wire(item))
        except (*_TRANSPORT_ERRORS, ProtocolError, PrkdbError) as exc:
            self._mark_broken(exc)
        except Exception as exc:  # a bug; a system task must not crash the whole run
            self._mark_broken(exc)
        finally:
            self._mark_broken(ConnectionLost(self.address, "reader stopped"))
            await trio.aclose_forcefully(self._stream)


async def _receive_one(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    """The next decoded frame item, or CLOSED at a clean EOF."""
    while True:
        item = decoder.next_frame()
        if item is not NEED_DATA:
            return item
        decoder.receive_data(await stream.receive_some(_RECEIVE_SIZE))
