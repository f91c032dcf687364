"""One multiplexed TCP connection to one node.

Theory of operation
-------------------
`Connection.open` dials, sends `Hello`, waits for `HelloOk` and then starts
three system tasks: a reader, a writer and an expiry timer. Any number of
tasks then call `Connection.request` at once: each request gets a fresh
``request_id``, registers its `AttemptState` in ``_waiters``, queues its frame
in the outbox and parks until the reader hands it the response with that id.
Responses may come in any order. The writer sends everything queued since its
last write in one ``send_all`` (trio streams forbid concurrent ``send_all``,
and one system call per batch is cheaper than one per request).

Per-request cost matters: the load generator shares the CPU with the
servers. So a request is one dict entry and one parked task, woken with
`trio.lowlevel.reschedule` by whoever removes it from ``_waiters`` first
(the reader with its reply, the timer at its deadline, `_mark_broken`, or
trio's abort when the caller is cancelled): no Event and no CancelScope per
request. The deadline of a request is enforced by the timer task, which
sleeps until the earliest deadline in ``_waiters`` and fails those that have
passed with `AttemptExpired`; a request only has to wake it when its own
deadline is earlier than the one the timer sleeps towards.

Streams (a `Watch`): `open_stream` queues the request like `request`
but registers a *sink* (a plain callable) instead of a parked task; the
reader calls the sink with every frame of that request id, in order, without
unregistering it, until an `Error` of that id (passed on, then the stream is
gone) or `cancel_stream`. A broken connection calls every sink once more
with the `ConnectionLost`. Sinks must not block (they file into an inbox).

Failure: the first error on the stream (EOF, reset, a protocol violation,
a connection-level `Error`, a send that was interrupted) marks the
connection *broken*, fails every waiter with `ConnectionLost` and closes the
stream. A broken connection is never reused; the client dials again lazily.
Whether a failed request may have reached the server is recorded in the
caller's `AttemptState.sent`, set just before the bytes go to the stream,
so the retry loop can tell "surely not applied" from "maybe applied". For
that answer to stay true, a request whose caller stopped waiting (deadline,
cancellation) before the writer took it is dropped from the outbox, never
sent late.

Why system tasks: ``await PrkDbClient.connect(...)`` must return a usable
client without the caller handing us a nursery. They catch every
``Exception`` (a system task must not crash the run) and their cancel scopes
are cancelled when the connection breaks or closes, so they never outlive it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, final

import trio
from outcome import Error as _Raise
from outcome import Value as _Return
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from prkdb.client.attempt import (
    AttemptExpired,
    AttemptState,
    ConnectFailed,
    ConnectionLost,
    HelloCheck,
    error_from_frame,
    request_frame,
)
from prkdb.client.security import TlsOptions
from prkdb.errors import PrkdbError, ProtocolError
from prkdb.netio import SocketReader
from prkdb.security.client_tls import ClientTls, tls_failure
from prkdb.security.stream import TlsStream
from prkdb.wire import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    RemoteProtocolError,
    from_wire,
    next_message,
)
from prkdb.wire.messages import RESPONSE_TYPES, Error, GetOk, WireMessage, WriteOk

__all__ = [
    "AttemptExpired",
    "AttemptState",
    "ConnectFailed",
    "Connection",
    "ConnectionLost",
    "StreamFactory",
    "error_from_frame",
    "tls_handshake",
    "tls_stream_factory",
]

StreamFactory = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""``(host, port) -> connected stream``; `trio.open_tcp_stream` by default, memory in tests."""


def tls_stream_factory(factory: StreamFactory, options: TlsOptions) -> StreamFactory:
    """`factory`'s streams with a TLS handshake on top (prkdb.security.tls.ClientTls).

    Raises (the factory it returns):
        TlsError: the handshake failed for good (a certificate refused, no TLS there).
        trio.BrokenResourceError / OSError: a network failure (retried like any).
    """
    tls = ClientTls(options)  # raises TlsError now for a file that cannot be used

    async def open_tls(host: str, port: int) -> trio.abc.Stream:
        raw = await factory(host, port)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return await tls_handshake(raw, tls, address, host)

    return open_tls


async def tls_handshake(stream: trio.abc.Stream, tls: ClientTls, address: str,
                        host: str) -> trio.abc.Stream:
    """TLS on a dialed stream to `address` (`host` as dialed, for the name check).

    A socket gets the lean `TlsStream` (prkdb/security/stream.py); another
    stream (a test's, from a custom `StreamFactory`) trio's `SSLStream`.

    Raises:
        TlsError: refused for good (see `tls_failure`).
        trio.BrokenResourceError / OSError: a network failure (retry).
    """
    name = tls.server_name(host)
    ssl_stream: TlsStream | trio.SSLStream[trio.abc.Stream] = (
        TlsStream(stream, tls.context, server_side=False, server_hostname=name)
        if isinstance(stream, trio.SocketStream)
        else trio.SSLStream(stream, tls.context, server_hostname=name))
    try:
        await ssl_stream.do_handshake()  # a TlsStream sends the alert if it fails
    except Exception as exc:
        await trio.aclose_forcefully(ssl_stream)
        failure = tls_failure(address, exc)
        if failure is not None:
            raise failure from None
        raise
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    return ssl_stream

# The protocol's response types (the hot two first: isinstance tries them in order).
_RESPONSES = (GetOk, WriteOk, *sorted(RESPONSE_TYPES - {GetOk, WriteOk}, key=lambda c: c.__name__))
_RECEIVE_SIZE = 64 * 1024
# What a broken transport raises; anything else escaping a stream is a bug.
_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


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
        self._reader = SocketReader(stream)  # no failed recv per answer (prkdb.netio)
        self._decoder = decoder
        # Frames waiting for the writer task: requests queued while it writes
        # leave together in its next write (one system call, not one each).
        self._outbox: list[tuple[bytes, AttemptState]] = []
        self._writer_parked: Task | None = None  # the writer, while it waits for frames
        self._writer_scope = trio.CancelScope()
        # request_id -> its waiting attempt. Invariant: an entry is removed
        # exactly when its task is rescheduled (or aborted), never twice.
        self._waiters: dict[int, AttemptState] = {}
        # request_id -> the sink of an open stream (see the module doc).
        self._streams: dict[int, Callable[[object], object]] = {}
        self._next_request_id = 1
        self._broken: BaseException | None = None
        self._reader_scope = trio.CancelScope()
        self._timer_scope = trio.CancelScope()
        # The deadline the timer sleeps towards (inf: none), and the scope it
        # sleeps in; a request with an earlier deadline moves it forward.
        self._next_expiry = math.inf
        self._expiry_sleep = trio.CancelScope()
        self.max_frame = DEFAULT_MAX_FRAME

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    @classmethod
    async def open(
        cls, address: str, host: str, port: int, hello: bytes, check: HelloCheck,
        factory: StreamFactory,
    ) -> Connection:
        """Dial, send `hello`, let `check` judge the answer, start the reader.

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
            await stream.send_all(hello)
            decoder = FrameDecoder()
            item = await _receive_one(stream, decoder)
            if item is CLOSED:
                raise ConnectFailed(address, "closed during the hello")
            node_id = check(address, from_wire(item))
        except _TRANSPORT_ERRORS as exc:
            await trio.aclose_forcefully(stream)
            # TLS 1.3: a server refuses our certificate after our side of the
            # handshake is done, so its alert comes with the first read.
            refused = tls_failure(address, exc)
            if refused is not None:
                raise refused from None
            raise ConnectFailed(address, exc) from exc
        except RemoteProtocolError as exc:
            await trio.aclose_forcefully(stream)
            raise RemoteProtocolError(f"{address}: {exc.message}") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conn = cls(address, stream, decoder, node_id)
        trio.lowlevel.spawn_system_task(conn._read_loop, name=f"prkdb-client-reader[{address}]")
        trio.lowlevel.spawn_system_task(conn._write_loop, name=f"prkdb-client-writer[{address}]")
        trio.lowlevel.spawn_system_task(conn._expiry_loop, name=f"prkdb-client-timer[{address}]")
        return conn

    async def request(
        self,
        build: Callable[[int], Any],
        state: AttemptState,
        deadline: float = math.inf,
    ) -> WireMessage:
        """Send one request and wait for its response (an `Error` frame is returned, not raised).

        Args:
            build: makes, for a given request_id, the request's plain wire
                array (what `to_wire` returns) or its finished frame (the
                hot-path encoders of `prkdb.wire`, e.g. `encode_put_request`).
            state: ``state.sent`` is set once the bytes may reach the server.
            deadline: trio time after which to stop waiting (`AttemptExpired`).

        Raises:
            ConnectionLost: the connection broke before an answer came.
            AttemptExpired: no answer before `deadline`.
            TooLarge: the request does not fit in a frame (nothing sent).
        """
        if self._broken is not None:
            raise ConnectionLost(self.address, self._broken)
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = request_frame(build, request_id, self.max_frame)
        state.task = current_task()
        state.deadline = deadline
        self._waiters[request_id] = state
        self._outbox.append((frame, state))
        writer = self._writer_parked
        if writer is not None:
            self._writer_parked = None
            reschedule(writer)
        if deadline < self._next_expiry:
            self._next_expiry = deadline
            self._expiry_sleep.deadline = deadline

        def abort(_: object) -> Abort:
            # Cancelled while waiting: nobody may wake this task any more.
            del self._waiters[request_id]
            state.abandoned = True
            return Abort.SUCCEEDED

        msg: WireMessage = await wait_task_rescheduled(abort)
        return msg

    def open_stream(self, build: Callable[[int], Any],
                    sink: Callable[[object], object]) -> int:
        """Send a stream request; every frame of its id goes to `sink`. Returns the id.

        Raises:
            ConnectionLost: the connection is broken (nothing sent).
            TooLarge: the request does not fit in a frame (nothing sent).
        """
        if self._broken is not None:
            raise ConnectionLost(self.address, self._broken)
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = request_frame(build, request_id, self.max_frame)
        self._streams[request_id] = sink
        self._queue(frame, AttemptState())
        return request_id

    def cancel_stream(self, request_id: int, build: Callable[[int], Any]) -> None:
        """Stop routing the stream's frames and send the cancel `build` makes (if still open)."""
        if self._streams.pop(request_id, None) is not None and self._broken is None:
            self._queue(request_frame(build, request_id, self.max_frame), AttemptState())

    def _queue(self, frame: bytes, state: AttemptState) -> None:
        self._outbox.append((frame, state))
        writer = self._writer_parked
        if writer is not None:
            self._writer_parked = None
            reschedule(writer)

    async def _write_loop(self) -> None:
        """Write queued frames, everything queued at once in one write."""

        def abort(_: object) -> Abort:
            self._writer_parked = None
            return Abort.SUCCEEDED

        try:
            with self._writer_scope:
                while self._broken is None:
                    if not self._outbox:
                        self._writer_parked = current_task()
                        await wait_task_rescheduled(abort)  # `request` wakes us
                        continue
                    batch, self._outbox = self._outbox, []
                    frames = []
                    for frame, state in batch:
                        if not state.abandoned:  # else its caller was told "not sent"
                            state.sent = True  # from now on the server may execute it
                            frames.append(frame)
                    if frames:
                        await self._stream.send_all(b"".join(frames))
        except Exception as exc:  # transport errors, or a bug: the connection is done
            # A half-written frame poisons the stream for everyone (STYLE §8.11).
            self._mark_broken(exc)

    async def _expiry_loop(self) -> None:
        """Fail requests whose deadline passed, sleeping until the earliest one."""
        with self._timer_scope:
            while True:
                with self._expiry_sleep:
                    await trio.sleep_forever()  # until _next_expiry (or cancelled)
                self._expiry_sleep = trio.CancelScope()
                now = trio.current_time()
                earliest = math.inf
                for request_id, state in list(self._waiters.items()):
                    if state.deadline <= now:
                        del self._waiters[request_id]
                        state.abandoned = True
                        assert state.task is not None
                        reschedule(state.task, _Raise(AttemptExpired()))
                    elif state.deadline < earliest:
                        earliest = state.deadline
                self._next_expiry = earliest
                self._expiry_sleep.deadline = earliest

    def close(self) -> None:
        """Break the connection (idempotent); the reader closes the stream."""
        self._mark_broken(ConnectionLost(self.address, "closed by the client"))

    def _mark_broken(self, cause: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = cause
        waiters, self._waiters = self._waiters, {}
        for state in waiters.values():
            assert state.task is not None
            reschedule(state.task, _Raise(ConnectionLost(self.address, cause)))
        streams, self._streams = self._streams, {}
        for sink in streams.values():
            sink(ConnectionLost(self.address, cause))
        self._reader_scope.cancel()
        self._writer_scope.cancel()
        self._timer_scope.cancel()

    def _dispatch(self, msg: WireMessage) -> None:
        if not isinstance(msg, _RESPONSES):
            raise RemoteProtocolError(f"{type(msg).__name__} is not a response")
        if isinstance(msg, Error) and msg.request_id == 0:
            # About the connection, not a request: the server closes after it.
            raise error_from_frame(msg)
        state = self._waiters.pop(msg.request_id, None)  # type: ignore[union-attr]
        if state is None:
            if self._streams:
                request_id: int = msg.request_id  # type: ignore[union-attr]
                sink = self._streams.get(request_id)
                if sink is not None:
                    if isinstance(msg, Error):
                        del self._streams[request_id]  # the server ended the stream
                    sink(msg)
            return  # else its caller gave up (cancelled or expired), or a cancelled stream
        assert state.task is not None
        reschedule(state.task, _Return(msg))

    async def _read_loop(self) -> None:
        read = self._reader.read
        decoder = self._decoder
        try:
            with self._reader_scope:
                while True:
                    # Dispatch every whole frame already buffered before reading again.
                    msg = next_message(decoder)
                    while msg is not NEED_DATA:
                        if msg is CLOSED:
                            self._mark_broken(ConnectionLost(self.address, "closed by the server"))
                            return
                        self._dispatch(msg)
                        msg = next_message(decoder)
                    decoder.receive_data(await read(_RECEIVE_SIZE))
        except (*_TRANSPORT_ERRORS, ProtocolError, PrkdbError) as exc:
            self._mark_broken(exc)
        except Exception as exc:  # a bug; a system task must not crash the whole run
            self._mark_broken(exc)
        finally:
            self._mark_broken(ConnectionLost(self.address, "reader stopped"))
            self._reader.detach()  # before the close: the fd number may be reused
            await trio.aclose_forcefully(self._stream)


async def _receive_one(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    """The next decoded frame item, or CLOSED at a clean EOF."""
    while True:
        item = decoder.next_frame()
        if item is not NEED_DATA:
            return item
        decoder.receive_data(await stream.receive_some(_RECEIVE_SIZE))
