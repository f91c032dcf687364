"""`AsyncClient`: the PrkDB SDK for asyncio programs (FastAPI, aiohttp, Django async).

```python
from prkdb.client.aio import AsyncClient

async with AsyncClient.connect(["127.0.0.1:8080"]) as db:
    await db.put(b"k", b"v")
    print(await db.get(b"k"))
```

Theory of operation
-------------------
The API, routing, retries and sessions are those of the trio `PrkDbClient`
(prkdb.client.api and prkdb.client.core); only the I/O differs. One
`AioConnection` per node multiplexes every task's requests: a request
registers a future under its request id, queues its frame and waits; frames
queued in one pass of the event loop leave in one write (``call_soon``
flush); the protocol's ``data_received`` decodes frames and resolves the
futures by request id, in any order. Each request has a timer at its
attempt's deadline. A connection that fails in any way fails every waiter
with `ConnectionLost` and is never reused.

Time is `time.monotonic`, which is also asyncio's default loop clock; the
timers are set relative to it (``call_later``), so other loops work too.

TLS (``tls=TlsOptions(...)``) is asyncio's own: the connection is made with
the `ClientTls` context and the server name it names, and a refused
handshake becomes `TlsError` (prkdb.security.tls.tls_failure).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final

from prkdb.client.api import AsyncApi, Connecting
from prkdb.client.attempt import (
    AttemptExpired,
    AttemptState,
    ConnectFailed,
    ConnectionLost,
    HelloCheck,
    request_frame,
)
from prkdb.client.core import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Plan,
    Send,
    drive_async,
)
from prkdb.client.lease import AsyncKeptLease
from prkdb.client.routing import split_address
from prkdb.client.security import Credentials, TlsOptions
from prkdb.client.watch import OpenStream, WatchInbox, cancel_array
from prkdb.errors import InvalidRequest
from prkdb.security.client_tls import HANDSHAKE_TIMEOUT, ClientTls, tls_failure
from prkdb.wire import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    RemoteProtocolError,
    from_wire,
    next_message,
)
from prkdb.wire.messages import Error, WireMessage

__all__ = ["AioConnection", "AioKeptLease", "AsyncClient"]

T = TypeVar("T")


@final
class AioConnection(asyncio.Protocol):
    """A handshaken, multiplexed connection to one node (an asyncio protocol)."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop) -> None:
        self.address = address
        self.node_id = 0
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._hello: asyncio.Future[Any] | None = loop.create_future()
        # request_id -> its attempt (``state.task`` is the future to resolve).
        self._waiters: dict[int, AttemptState] = {}
        # request_id -> the sink of an open stream (a Watch; see prkdb.client.connection).
        self._streams: dict[int, Callable[[object], object]] = {}
        self._outbox: list[tuple[bytes, AttemptState]] = []
        self._flush_scheduled = False
        self._next_request_id = 1
        self._broken: BaseException | None = None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @classmethod
    async def open(cls, address: str, hello: bytes, check: HelloCheck,
                   deadline: float, tls: ClientTls | None = None) -> AioConnection:
        """Dial `address` (with `tls`), send `hello`, let `check` judge the answer; by `deadline`.

        Raises:
            AttemptExpired: the deadline (`time.monotonic`) passed first.
            ConnectFailed: unreachable, refused, or closed during the hello.
            TlsError: the TLS handshake was refused for good.
            WrongCluster / ProtocolError: the node refused us for good.
        """
        loop = asyncio.get_running_loop()
        host, port = split_address(address)
        conn = cls(address, loop)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                if tls is None:
                    await loop.create_connection(lambda: conn, host, port)
                else:
                    await loop.create_connection(
                        lambda: conn, host, port, ssl=tls.context,
                        server_hostname=tls.server_name(host),
                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
                assert conn._transport is not None and conn._hello is not None
                conn._transport.write(hello)
                item = await conn._hello
        except TimeoutError:
            conn.close()
            raise AttemptExpired() from None
        except ConnectionLost as exc:
            conn.close()
            # TLS 1.3: a refused client certificate is an alert at the first read.
            refused = tls_failure(address, conn._broken) if conn._broken else None
            if refused is not None:
                raise refused from None
            raise ConnectFailed(address, exc.reason) from None
        except OSError as exc:
            conn.close()
            refused = tls_failure(address, exc)
            if refused is not None:
                raise refused from None
            raise ConnectFailed(address, exc) from exc
        except RemoteProtocolError as exc:
            conn.close()
            raise RemoteProtocolError(f"{address}: {exc.message}") from None
        except BaseException:
            conn.close()
            raise
        try:
            conn.node_id = check(address, from_wire(item))
        except BaseException:
            conn.close()
            raise
        return conn

    async def request(self, build: Callable[[int], Any], state: AttemptState,
                      deadline: float) -> WireMessage:
        """Send one request and wait for its answer (an `Error` frame is returned, not raised).

        Raises:
            ConnectionLost: the connection broke before an answer came.
            AttemptExpired: no answer before `deadline` (`time.monotonic`).
            TooLarge: the request does not fit in a frame (nothing sent).
        """
        if self._broken is not None:
            raise ConnectionLost(self.address, self._broken)
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = request_frame(build, request_id, DEFAULT_MAX_FRAME)
        loop = self._loop
        future: asyncio.Future[WireMessage] = loop.create_future()
        state.task = future
        state.deadline = deadline
        self._waiters[request_id] = state
        self._outbox.append((frame, state))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, request_id)
        try:
            return await future
        finally:
            timer.cancel()
            if self._waiters.pop(request_id, None) is not None:
                state.abandoned = True  # cancelled: if not sent yet, it never will be

    def open_stream(self, build: Callable[[int], Any],
                    sink: Callable[[object], object]) -> int:
        """Send a stream request; every frame of its id goes to `sink` (as the trio
        `Connection.open_stream`). Returns the request id.

        Raises:
            ConnectionLost: the connection is broken (nothing sent).
        """
        if self._broken is not None:
            raise ConnectionLost(self.address, self._broken)
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = request_frame(build, request_id, DEFAULT_MAX_FRAME)
        self._streams[request_id] = sink
        self._queue(frame)
        return request_id

    def cancel_stream(self, request_id: int, build: Callable[[int], Any]) -> None:
        """Stop routing the stream's frames and send the cancel `build` makes (if still open)."""
        if self._streams.pop(request_id, None) is not None and self._broken is None:
            self._queue(request_frame(build, request_id, DEFAULT_MAX_FRAME))

    def _queue(self, frame: bytes) -> None:
        self._outbox.append((frame, AttemptState()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        """Break the connection (idempotent)."""
        self._mark_broken(ConnectionLost(self.address, "closed by the client"))

    # --- internals -------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._outbox = self._outbox, []
        if self._broken is not None or self._transport is None:
            return
        frames = []
        for frame, state in batch:
            if not state.abandoned:
                state.sent = True  # from now on the server may execute it
                frames.append(frame)
        if frames:
            self._transport.write(b"".join(frames))

    def _expire(self, request_id: int) -> None:
        state = self._waiters.pop(request_id, None)
        if state is not None:
            state.abandoned = True
            if not state.task.done():
                state.task.set_exception(AttemptExpired())

    def _mark_broken(self, cause: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = cause
        lost = ConnectionLost(self.address, cause)
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(lost)
            self._hello.exception()  # retrieved: `open` may be gone (a failed TLS dial)
        waiters, self._waiters = self._waiters, {}
        for state in waiters.values():
            if not state.task.done():
                state.task.set_exception(ConnectionLost(self.address, cause))
        streams, self._streams = self._streams, {}
        for sink in streams.values():
            sink(ConnectionLost(self.address, cause))
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_broken(exc or ConnectionLost(self.address, "closed by the server"))

    def data_received(self, data: bytes) -> None:
        decoder = self._decoder
        try:
            decoder.receive_data(data)
            hello = self._hello
            if hello is not None:  # the first frame answers the Hello (judged by `open`)
                item = decoder.next_frame()
                if item is NEED_DATA:
                    return
                if item is CLOSED:
                    self._mark_broken(ConnectionLost(self.address, "closed by the server"))
                    return
                self._hello = None
                if not hello.done():
                    hello.set_result(item)
            while (msg := next_message(decoder)) is not NEED_DATA:
                if msg is CLOSED:
                    self._mark_broken(ConnectionLost(self.address, "closed by the server"))
                    return
                self._dispatch(msg)
        except Exception as exc:  # garbage from the node: the connection is done
            self._mark_broken(exc)

    def eof_received(self) -> bool | None:
        self._mark_broken(ConnectionLost(self.address, "closed by the server"))
        return None

    def _dispatch(self, msg: WireMessage) -> None:
        if isinstance(msg, Error) and msg.request_id == 0:
            raise ConnectionLost(self.address, msg.message)  # about the connection
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
        if not state.task.done():
            state.task.set_result(msg)



@final
class AsyncClient(AsyncApi):
    """A PrkDB client for asyncio programs; safe to share between many tasks of one loop.

    The same API and errors as the trio `PrkDbClient`; create it with `connect`.
    """

    def __init__(
        self,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        tls: TlsOptions | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """Build an unconnected client; prefer `connect`, which also loads the topology."""
        self.core = ClientCore(seeds, clock=time.monotonic, cluster_id=cluster_id,
                               timeout=timeout, attempt_timeout=attempt_timeout, rng=rng,
                               credentials=credentials)
        self._tls = ClientTls(tls) if tls is not None else None  # TlsError: a bad file
        self._connections: dict[str, AioConnection] = {}
        self._dialing: dict[str, asyncio.Future[AioConnection]] = {}
        self._closed = False

    @classmethod
    def connect(
        cls,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        tls: TlsOptions | None = None,
        credentials: Credentials | None = None,
    ) -> Connecting[AsyncClient]:
        """Connect and learn the topology; arguments and errors as `PrkDbClient.connect`.

        Usage: ``db = await AsyncClient.connect([...])`` (then ``await db.aclose()``),
        or ``async with AsyncClient.connect([...]) as db``.
        """

        async def open_() -> AsyncClient:
            client = cls(seeds, cluster_id=cluster_id, timeout=timeout, rng=rng,
                         attempt_timeout=attempt_timeout, tls=tls, credentials=credentials)
            try:
                await client.refresh_topology()
            except BaseException:
                await client.aclose()
                raise
            return client

        return Connecting(open_)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; in-flight calls fail. Idempotent."""
        self._closed = True
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        await asyncio.sleep(0)

    # --- internals: I/O for the core's plans ----------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        return await drive_async(plan, self._send, asyncio.sleep, self._gather)

    async def _gather(self, plans: list[Plan[Any]]) -> list[Any]:
        """Drive `plans` as tasks; the first failure cancels the rest and is raised."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._drive(plan)) for plan in plans]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()  # no-op for the finished ones
            await asyncio.wait(tasks)  # their plans closed, their slots given back
        failures = [exc for task in tasks if not task.cancelled()
                    and (exc := task.exception()) is not None]  # each retrieved: no warning
        if failures:
            raise failures[0]
        return [task.result() for task in tasks]

    # --- leases kept alive in the background ------------------------------------------

    def lease(self, ttl: float, *, key: bytes = b"") -> AioKeptLease:
        """A lease kept alive by an asyncio task while ``async with`` holds it.

        Grants at entry, renews every ttl/3, revokes at exit. See prkdb.client.lease.
        """
        return AioKeptLease(self, ttl, key)

    async def _send(self, action: Send) -> WireMessage:
        conn = self._connections.get(action.address)
        if conn is None or conn.broken:
            conn = await self._connection(action.address, action.deadline)
        return await conn.request(action.build, action, action.deadline)

    def _watch_io(self) -> AioWatchIO:
        return AioWatchIO(self)

    async def _connection(self, address: str, deadline: float) -> AioConnection:
        if self._closed:
            raise InvalidRequest("the client is closed")
        dialing = self._dialing.get(address)
        if dialing is not None:  # one dial per address, however many tasks need it
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await asyncio.shield(dialing)
            except TimeoutError:
                raise AttemptExpired() from None
        future: asyncio.Future[AioConnection] = asyncio.get_running_loop().create_future()
        self._dialing[address] = future
        try:
            core = self.core
            conn = await AioConnection.open(address, core.hello_frame(), core.accept_hello,
                                            deadline, self._tls)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else AttemptExpired())
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            del self._dialing[address]
        if self._closed:
            conn.close()
            raise InvalidRequest("the client is closed")
        self._connections[address] = conn
        future.set_result(conn)
        return conn


@final
@dataclass(frozen=True, slots=True)
class _StreamHandle:
    conn: AioConnection
    request_id: int
    token: object


@final
class AioWatchIO:
    """One watch's streams on the client's shared connections (see `AsyncWatch`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._event = asyncio.Event()
        self.inbox = WatchInbox(self._event.set)

    async def open(self, action: OpenStream) -> object:
        client = self._client
        conn = client._connections.get(action.address)
        if conn is None or conn.broken:
            conn = await client._connection(action.address, action.deadline)
        inbox, token = self.inbox, action.token
        request_id = 0

        def sink(item: object) -> None:
            if not inbox.push(token, item):
                conn.cancel_stream(request_id, cancel_array)  # the caller fell behind

        request_id = conn.open_stream(action.build, sink)
        return _StreamHandle(conn, request_id, token)

    def cancel(self, handle: object, build: Callable[[int], Any]) -> None:
        assert isinstance(handle, _StreamHandle)
        handle.conn.cancel_stream(handle.request_id, build)
        self.inbox.forget(handle.token)

    async def wait(self, deadline: float) -> None:
        if self.inbox:
            await asyncio.sleep(0)
            return
        self._event.clear()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._event.wait()
        except TimeoutError:
            pass


@final
class AioKeptLease(AsyncKeptLease):
    """`AsyncClient.lease`: the keep-alive runs in an asyncio task."""

    def __init__(self, client: AsyncClient, ttl: float, key: bytes) -> None:
        super().__init__(client, ttl, key)
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def _start_keeper(self, plan: Plan[None]) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._keep(plan), name=f"prkdb-keep-lease-{self.id}")

    async def _stop_keeper(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _revoke(self, lease_id: int) -> None:
        # Shielded: a cancelled body still revokes (bounded by the client's timeout).
        await asyncio.shield(self.client.revoke_lease(lease_id))

    def _notify_lost(self) -> None:
        self._lost.set()
