"""`PrkDbClient`: the trio front end of the SDK.

Theory of operation
-------------------
Routing, retries, deadlines, sessions and the topology live in the sans-IO
`prkdb.client.core.ClientCore`; every call here makes one of its plans and
drives it (`_drive`): a `Send` goes out on the node's shared, multiplexed
`Connection` (dialled on first use under a cancel scope bounded by the
attempt's deadline), a `Sleep` is a `trio.sleep`. The asyncio front end
(prkdb.client.aio) and the blocking one (prkdb.client.sync) drive the very
same plans, so all three behave alike.

Cost: the common attempt (known target, live connection) does not await
anything but its answer and opens no cancel scope; only a dial runs under
``trio.move_on_at``. A load generator on the same cores as the servers
measures this path (scripts/bench_clients.py).

All waiting uses trio time (`trio.current_time`), so tests drive it with
`MockClock`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final

import trio

from prkdb.client.api import AsyncApi, Connecting
from prkdb.client.attempt import AttemptExpired
from prkdb.client.connection import Connection, StreamFactory, tls_stream_factory
from prkdb.client.core import (
    BACKUP_CHUNK,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Plan,
    Send,
    drive_async,
)
from prkdb.client.lease import AsyncKeptLease
from prkdb.client.results import UNSET, BackupFailed, GetResult, WriteResult
from prkdb.client.routing import split_address
from prkdb.client.security import Credentials, TlsOptions
from prkdb.client.watch import OpenStream, WatchInbox, cancel_array
from prkdb.errors import InvalidRequest
from prkdb.wire.messages import WireMessage

__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "UNSET",
    "BackupFailed",
    "GetResult",
    "KeptLease",
    "PrkDbClient",
    "WriteResult",
]

T = TypeVar("T")



@final
class PrkDbClient(AsyncApi):
    """A PrkDB client for trio programs; safe to share between many tasks.

    Create it with `connect`. Every method takes ``timeout=`` (seconds, the
    whole call including retries); None means the client's default.
    """

    def __init__(
        self,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        tls: TlsOptions | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """Build an unconnected client; prefer `connect`, which also loads the topology.

        Raises:
            InvalidRequest: no seeds, a malformed seed, or a non-positive timeout.
            TlsError: a file of `tls` cannot be used.
        """
        self.core = ClientCore(seeds, clock=trio.current_time, cluster_id=cluster_id,
                               timeout=timeout, attempt_timeout=attempt_timeout, rng=rng,
                               credentials=credentials)
        self._factory: StreamFactory = stream_factory or trio.open_tcp_stream
        if tls is not None:
            self._factory = tls_stream_factory(self._factory, tls)
        # address -> live connection; replaced lazily when broken.
        self._connections: dict[str, Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._closed = False
        # The nursery the client owns for background tasks (kept leases), in a
        # system task: started on first use, cancelled by aclose.
        self._background: trio.Nursery | None = None
        self._background_ready: trio.Event | None = None
        self._timer: _WatchTimer | None = None  # wakes waiting watches (`_watch_timer`)

    # --- life cycle ----------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        tls: TlsOptions | None = None,
        credentials: Credentials | None = None,
    ) -> Connecting[PrkDbClient]:
        """Connect to a cluster and learn its topology from any seed.

        Usage: ``client = await PrkDbClient.connect([...])`` (then
        ``await client.aclose()``), or ``async with PrkDbClient.connect([...]) as client``.

        Args:
            seeds: ``"host:port"`` addresses (``"http://host:port"`` is accepted).
            cluster_id: the nodes' cluster id, checked at every connection;
                None: learned from the first node that answers, then pinned.
            timeout: default per-call deadline in seconds; also bounds connect.
            rng: randomness for jitter and client ids (tests pass a seeded one).
            stream_factory: ``async (host, port) -> Stream``; default TCP.
            attempt_timeout: seconds one node gets per attempt (see
                `DEFAULT_ATTEMPT_TIMEOUT`).
            tls: connect with TLS: trust `TlsOptions.ca_file`, present a
                client certificate if given (on top of `stream_factory`).
            credentials: log in as this user (a cluster with ``[auth]`` on):
                once at connect, then each new connection presents the token
                right after its hello; on UNAUTHENTICATED (an expired token)
                the client logs in again once and retries the request.

        Raises:
            TlsError: a TLS file cannot be used, or a node's TLS handshake
                failed for good (certificate refused, or no TLS there).
            WrongCluster: a seed belongs to another cluster.
            AuthFailed: `credentials` were refused (wrong password, rate limited).
            Timeout: no seed answered a Status within `timeout`.
            InvalidRequest: bad arguments.
        """

        async def open_() -> PrkDbClient:
            client = cls(
                seeds,
                cluster_id=cluster_id,
                timeout=timeout,
                rng=rng,
                stream_factory=stream_factory,
                attempt_timeout=attempt_timeout,
                tls=tls,
                credentials=credentials,
            )
            try:
                await client.refresh_topology()
            except BaseException:
                await client.aclose()
                raise
            return client

        return Connecting(open_)

    async def __aenter__(self) -> PrkDbClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; in-flight calls fail. Idempotent."""
        self._closed = True
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        if self._background is not None:
            self._background.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()

    # --- leases kept alive in the background ------------------------------------------

    def lease(self, ttl: float, *, key: bytes = b"",
              nursery: trio.Nursery | None = None) -> KeptLease:
        """A lease kept alive in the background while ``async with`` holds it.

        Grants at entry, renews every ttl/3 in a task of `nursery` (default:
        a nursery this client owns, closed by `aclose`), revokes at exit.
        See prkdb.client.lease.
        """
        return KeptLease(self, ttl, key, nursery)

    async def background_nursery(self) -> trio.Nursery:
        """The nursery this client owns for background tasks (a system task; see `lease`).

        Raises:
            InvalidRequest: the client is closed.
        """
        if self._closed:
            raise InvalidRequest("the client is closed")
        if self._background_ready is None:
            self._background_ready = trio.Event()
            trio.lowlevel.spawn_system_task(self._host_background, self._background_ready,
                                            name="prkdb-client-background")
        await self._background_ready.wait()
        assert self._background is not None
        return self._background

    async def _host_background(self, ready: trio.Event) -> None:
        # A system task: anything it raised would end the program, so its
        # children (kept leases) catch their own errors.
        async with trio.open_nursery() as nursery:
            self._background = nursery
            ready.set()
            if self._closed:
                nursery.cancel_scope.cancel()
            await trio.sleep_forever()

    # --- internals: I/O for the core's plans ----------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        return await drive_async(plan, self._send, trio.sleep, self._gather)

    async def _gather(self, plans: list[Plan[Any]]) -> list[Any]:
        """Drive `plans` in tasks of one nursery; the first failure stops the rest."""
        results: list[Any] = [None] * len(plans)
        failures: list[Exception] = []

        async def one(index: int, plan: Plan[Any]) -> None:
            try:
                results[index] = await self._drive(plan)
            except Exception as exc:  # judged by the caller's plan, not as a group
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for index, plan in enumerate(plans):
                nursery.start_soon(one, index, plan)
        if failures:
            raise failures[0]
        return results

    def _watch_io(self) -> TrioWatchIO:
        return TrioWatchIO(self)

    async def _watch_timer(self) -> _WatchTimer:
        """The client's `_WatchTimer`, started in the background nursery on first use."""
        if self._timer is None:
            nursery = await self.background_nursery()
            if self._timer is None:  # (another watch may have started it meanwhile)
                self._timer = _WatchTimer()
                nursery.start_soon(self._timer.run, name="prkdb-watch-timer")
        return self._timer

    async def _send(self, action: Send) -> WireMessage:
        conn = self._connections.get(action.address)
        if conn is None or conn.broken:
            # Only a dial can block before the request is queued; the
            # request's own wait ends at the deadline too.
            with trio.move_on_at(action.deadline) as scope:
                conn = await self._connection(action.address)
            if scope.cancelled_caught:
                raise AttemptExpired()
            assert conn is not None
        return await conn.request(action.build, action, action.deadline)

    async def _connection(self, address: str) -> Connection:
        if self._closed:
            raise InvalidRequest("the client is closed")
        conn = self._connections.get(address)
        if conn is not None and not conn.broken:
            return conn
        lock = self._connect_locks.setdefault(address, trio.Lock())
        async with lock:  # one dial per address, however many tasks need it
            conn = self._connections.get(address)
            if conn is not None and not conn.broken:
                return conn
            host, port = split_address(address)
            core = self.core
            conn = await Connection.open(address, host, port, core.hello_frame(),
                                         core.accept_hello, self._factory)
            if self._closed:
                conn.close()
                raise InvalidRequest("the client is closed")
            self._connections[address] = conn
            return conn


@final
@dataclass(frozen=True, slots=True)
class _StreamHandle:
    conn: Connection
    request_id: int
    token: object


@final
class TrioWatchIO:
    """One watch's streams on the client's shared connections (see `AsyncWatch`)."""

    def __init__(self, client: PrkDbClient) -> None:
        self._client = client
        self._event = trio.Event()
        self._timer_at = math.inf  # the deadline registered with the client's _WatchTimer
        self.inbox = WatchInbox(self._wake)

    def _wake(self) -> None:
        self._event.set()

    async def open(self, action: OpenStream) -> object:
        client = self._client
        conn = client._connections.get(action.address)
        if conn is None or conn.broken:
            with trio.move_on_at(action.deadline) as scope:
                conn = await client._connection(action.address)
            if scope.cancelled_caught:
                raise AttemptExpired()
            assert conn is not None
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
            await trio.lowlevel.checkpoint()
            return
        self._event = trio.Event()
        if deadline < self._timer_at:
            self._timer_at = deadline
            timer = await self._client._watch_timer()
            timer.wake_at(deadline, self._timer_fired)
        await self._event.wait()

    def _timer_fired(self, at: float) -> None:
        # Early is fine (the plan waits again); the next wait registers anew.
        if at == self._timer_at:
            self._timer_at = math.inf
        self._event.set()


class _WatchTimer:
    """Wakes waiting watches at their deadlines: one task per client.

    A cancel scope per wait cost a watcher ~10 us per event (a deadline
    registered and removed each time); a watch now registers a deadline only
    when it is earlier than the one it has, which is rare (its deadlines move
    forward with every frame), and is woken early at worst.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = 0
        self._scope: trio.CancelScope | None = None

    def wake_at(self, deadline: float, wake: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, wake))
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                at, _, wake = heapq.heappop(heap)
                wake(at)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            self._scope = None


@final
class KeptLease(AsyncKeptLease):
    """`PrkDbClient.lease`: the keep-alive runs in a task of a trio nursery.

    `start` and `aclose` may be called from different tasks (the task lives
    in the client's nursery, or the one given), which an election needs.
    """

    def __init__(self, client: PrkDbClient, ttl: float, key: bytes,
                 nursery: trio.Nursery | None) -> None:
        super().__init__(client, ttl, key)
        self._trio_client = client
        self._nursery = nursery
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._lost = trio.Event()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def _start_keeper(self, plan: Plan[None]) -> None:
        try:
            nursery = self._nursery or await self._trio_client.background_nursery()
            nursery.start_soon(self._run, plan, name=f"prkdb-keep-lease-{self.id}")
        except BaseException:
            self._stopped.set()  # no keeper to wait for
            raise

    async def _run(self, plan: Plan[None]) -> None:
        try:
            with self._scope:
                await self._keep(plan)
        finally:
            self._stopped.set()

    async def _stop_keeper(self) -> None:
        self._scope.cancel()
        with trio.CancelScope(shield=True):  # the body may be cancelled: still stop cleanly
            await self._stopped.wait()

    async def _revoke(self, lease_id: int) -> None:
        with trio.CancelScope(shield=True):  # bounded by the client's timeout
            await self.client.revoke_lease(lease_id)

    def _notify_lost(self) -> None:
        self._lost.set()
