"""`SyncClient`: the same API, blocking, for threads and scripts (no event loop at all).

Theory of operation
-------------------
Each call makes the same plan as the trio and asyncio clients
(prkdb.client.core) and runs it on the calling thread: a `Send` takes a
connection to the node from a small pool (or dials one), writes the frame
and reads its answer with the socket's timeout set to the attempt's
deadline; a `Sleep` is `time.sleep`. Any number of threads may share one
SyncClient: each in-flight call holds its own connection, and the core's
session slots keep overlapping writes exactly-once.

Usable anywhere, a trio or asyncio program included (it blocks that loop
for the call, as any blocking library would; use `PrkDbClient` or
`prkdb.client.aio.AsyncClient` there).
"""

from __future__ import annotations

import contextlib
import random
import selectors
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar, final

from prkdb.client.attempt import ConnectionLost, request_frame
from prkdb.client.blocking import BlockingConnection, Pool
from prkdb.client.core import (
    BACKUP_CHUNK,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Plan,
    Send,
    drive_blocking,
)
from prkdb.client.lease import KeepAliveState, KeptLeaseView, keep_alive_loop
from prkdb.client.results import (
    UNSET,
    GetResult,
    KeyValue,
    Lease,
    LeaseStatus,
    ScanPage,
    TxnResult,
    Unset,
    WatchEvent,
    WriteResult,
)
from prkdb.client.routing import Topology
from prkdb.client.scan import DEFAULT_PAGE_SIZE, KeyRange, key_range
from prkdb.client.security import Credentials, TlsOptions
from prkdb.client.txn import Compare, TxnOpLike
from prkdb.client.watch import (
    AwaitFrames,
    CancelStream,
    OpenStream,
    WatchCursor,
    WatchDriver,
    WatchInbox,
    current_cursor,
    new_watch_plan,
    watch_start,
)
from prkdb.errors import InvalidRequest, LeaseNotFound, PrkdbError, TooLarge
from prkdb.security.client_tls import ClientTls
from prkdb.wire import DEFAULT_MAX_FRAME
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BackupChunk,
    BatchOp,
    Error,
    Perm,
    ReadConsistency,
    RoleAdd,
    RoleDelete,
    RoleGrant,
    RoleInfo,
    RoleList,
    RoleListOk,
    RoleRevoke,
    StatusOk,
    UserAdd,
    UserDelete,
    UserGrant,
    UserInfo,
    UserList,
    UserListOk,
    UserPasswd,
    UserRevoke,
    WireMessage,
)
from prkdb.wire.messages import Compare as WireCompare

__all__ = ["SyncClient", "SyncKeptLease", "SyncWatch"]

T = TypeVar("T")


@final
class SyncClient:
    """Blocking PrkDB client; thread-safe; a context manager.

    Arguments as `PrkDbClient.connect`. The constructor connects (loads the
    topology from a seed) and raises what `PrkDbClient.connect` raises.
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
        self.core = ClientCore(seeds, clock=time.monotonic, cluster_id=cluster_id,
                               timeout=timeout, attempt_timeout=attempt_timeout, rng=rng,
                               credentials=credentials)
        self._tls = ClientTls(tls) if tls is not None else None  # TlsError: a bad file
        self._pool = Pool()
        self._closed = False
        try:
            self._run(self.core.refresh_topology(None))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the idle connections; calls made afterwards fail. Idempotent."""
        self._closed = True
        self._pool.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def cluster_id(self) -> str | None:
        return self.core.cluster_id

    @property
    def topology(self) -> Topology:
        return self.core.topology

    @property
    def client_id(self) -> int:
        return self.core.client_id

    # --- the API, blocking (see PrkDbClient for each method's contract) --------------

    def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:
        return self._run(self.core.get(key, ReadConsistency.LINEARIZABLE, timeout)).value

    def get_with_consistency(
        self, key: bytes, consistency: ReadConsistency, *, timeout: float | None = None
    ) -> bytes | None:
        return self._run(self.core.get(key, consistency, timeout)).value

    def get_entry(
        self,
        key: bytes,
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> GetResult:
        return self._run(self.core.get(key, consistency, timeout))

    def put(self, key: bytes, value: bytes, *, lease: int | Lease = 0,
            timeout: float | None = None) -> WriteResult:
        if lease:
            return self._run(self.core.put_leased(key, value, lease, timeout))
        return self._run(self.core.put(key, value, timeout))

    def delete(self, key: bytes, *, timeout: float | None = None) -> WriteResult:
        return self._run(self.core.delete(key, timeout))

    def cas(
        self,
        key: bytes,
        *,
        expected_value: bytes | Unset | None = UNSET,
        expected_version: int | None = None,
        new_value: bytes | None,
        timeout: float | None = None,
    ) -> WriteResult:
        return self._run(
            self.core.cas(key, expected_value, expected_version, new_value, timeout))

    def batch(
        self, ops: Iterable[tuple[Any, ...] | BatchOp], *, timeout: float | None = None
    ) -> WriteResult:
        return self._run(self.core.batch(ops, timeout))

    def scan(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> list[KeyValue]:
        return self._run(self.core.scan(
            key_range(prefix, start, end), limit, keys_only, consistency, page_size, timeout))

    def scan_iter(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Iterator[KeyValue]:
        """`scan`, lazily (a generator): pages are read as the loop needs them."""
        cursor = self._run(self.core.scan_cursor(
            key_range(prefix, start, end), limit, keys_only, consistency, page_size, timeout))
        while batch := self._run(cursor.next_batch()):
            yield from batch

    def scan_page(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        token: bytes | str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> ScanPage:
        given = prefix is not None or start is not None or end is not None
        return self._run(self.core.scan_page(
            key_range(prefix, start, end) if given or token is None else None, limit,
            keys_only, consistency, token, page_size, timeout))

    def count(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> int:
        return self._run(self.core.count(key_range(prefix, start, end), consistency, timeout))

    def txn(
        self,
        compares: Iterable[Compare | WireCompare],
        success: Iterable[TxnOpLike],
        failure: Iterable[TxnOpLike] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._run(self.core.txn(compares, success, failure, timeout))

    def grant_lease(self, ttl: float, *, key: bytes = b"",
                    timeout: float | None = None) -> Lease:
        return self._run(self.core.grant_lease(ttl, key, timeout))

    def keep_alive_once(self, lease_id: int | Lease, *, timeout: float | None = None) -> float:
        return self._run(self.core.keep_alive_once(lease_id, timeout))

    def keep_alive_many(self, lease_ids: Iterable[int | Lease], *,
                        timeout: float | None = None) -> dict[int, float]:
        return self._run(self.core.keep_alive(lease_ids, timeout))

    def revoke_lease(self, lease_id: int | Lease, *, timeout: float | None = None) -> int:
        return self._run(self.core.revoke_lease(lease_id, timeout))

    def lease_ttl(self, lease_id: int | Lease, *, keys: bool = False,
                  timeout: float | None = None) -> LeaseStatus:
        return self._run(self.core.lease_ttl(lease_id, keys, timeout))

    def leases(self, *, timeout: float | None = None) -> list[LeaseStatus]:
        return self._run(self.core.leases(timeout))

    def lease(self, ttl: float, *, key: bytes = b"") -> SyncKeptLease:
        """A lease kept alive by a daemon thread while ``with`` holds it (prkdb.client.lease)."""
        return SyncKeptLease(self, ttl, key)

    def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        return self._run(self.core.status(node_id, timeout))

    def refresh_topology(self, *, timeout: float | None = None) -> None:
        self._run(self.core.refresh_topology(timeout))

    # --- users and roles (root only; issue 18) -----------------------------------------

    def user_add(self, name: str, password: str | None = None, roles: Iterable[str] = (),
                       *, timeout: float | None = None) -> AdminOk:
        """Create user `name` (password None: it logs in with a client certificate only)."""
        given = tuple(roles)  # (an iterator is read once; every attempt sends the same)
        return self._run(self.core.auth_admin(
            lambda rid, c, s: UserAdd(rid, name, password, given, c, s),
            f"user add {name!r}",
            AdminOk, timeout))

    def user_delete(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Delete user `name` (not root); its tokens stop working on every node."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: UserDelete(rid, name, c, s),
            f"user delete {name!r}", AdminOk, timeout))

    def user_passwd(self, name: str, password: str, *,
                          timeout: float | None = None) -> AdminOk:
        """Set a user's password; every token issued before is void."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: UserPasswd(rid, name, password, c, s),
            f"user passwd {name!r}", AdminOk,
            timeout))

    def user_grant(self, name: str, role: str, *,
                         timeout: float | None = None) -> AdminOk:
        """Give user `name` the role `role` (an existing role, or root)."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: UserGrant(rid, name, role, c, s),
            f"user grant {name!r} {role!r}", AdminOk,
            timeout))

    def user_revoke(self, name: str, role: str, *,
                          timeout: float | None = None) -> AdminOk:
        """Take the role `role` from user `name`."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: UserRevoke(rid, name, role, c, s), f"user revoke {name!r} {role!r}",
            AdminOk, timeout))

    def users(self, *, timeout: float | None = None) -> list[UserInfo]:
        """Every user with its roles, by name."""
        reply = self._run(self.core.auth_admin(UserList, "user list", UserListOk,
                                                       timeout, write=False))
        return list(reply.users)

    def role_add(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Create role `name` (no permissions yet)."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: RoleAdd(rid, name, c, s), f"role add {name!r}", AdminOk, timeout))

    def role_delete(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Delete role `name`; users that had it lose it."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: RoleDelete(rid, name, c, s),
            f"role delete {name!r}", AdminOk, timeout))

    def role_grant(self, role: str, start: bytes, end: bytes | None, perm: Perm, *,
                         timeout: float | None = None) -> AdminOk:
        """Give `role` READ or READWRITE on the keys in ``[start, end)`` (end None: no end)."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: RoleGrant(rid, role, start, end, Perm(perm), c, s),
            f"role grant {role!r}", AdminOk, timeout))

    def role_revoke(self, role: str, start: bytes, end: bytes | None, *,
                          timeout: float | None = None) -> AdminOk:
        """Take back the permission `role` has on exactly ``[start, end)``."""
        return self._run(self.core.auth_admin(
            lambda rid, c, s: RoleRevoke(rid, role, start, end, c, s),
            f"role revoke {role!r}", AdminOk,
            timeout))

    def roles(self, *, timeout: float | None = None) -> list[RoleInfo]:
        """Every role with its permissions, by name (root first: it allows everything)."""
        reply = self._run(self.core.auth_admin(RoleList, "role list", RoleListOk,
                                                       timeout, write=False))
        return list(reply.roles)

    def transfer_leader(
        self, partition: int, to_node: int = 0, *, timeout: float | None = None
    ) -> AdminOk:
        return self._run(self.core.transfer_leader(partition, to_node, timeout))

    def snapshot(
        self,
        partition: int | None = None,
        *,
        node_id: int | None = None,
        timeout: float | None = None,
    ) -> AdminOk:
        return self._run(self.core.snapshot(partition, node_id, timeout))

    def backup_begin(self, partition: int, *, timeout: float | None = None) -> BackupBeginOk:
        return self._run(self.core.backup_begin(partition, timeout))

    def backup_read(self, begin: BackupBeginOk, offset: int, length: int = BACKUP_CHUNK,
                    *, timeout: float | None = None) -> BackupChunk:
        return self._run(self.core.backup_read(begin, offset, length, timeout))

    def backup_partition(
        self,
        partition: int,
        out: IO[bytes],
        *,
        attempts: int = 3,
        chunk_size: int = BACKUP_CHUNK,
        timeout: float | None = None,
        begin_timeout: float | None = None,
    ) -> BackupBeginOk:
        return self._run(self.core.backup_partition(
            partition, out, attempts, chunk_size, timeout, begin_timeout))

    # --- watches -----------------------------------------------------------------------

    def watch(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        cursor: WatchCursor | str | bytes | None = None,
        prev_values: bool = False,
        timeout: float | None = None,
    ) -> SyncWatch:
        """Changes of the keys, as a blocking iterator (see `PrkDbClient.watch`)."""
        return SyncWatch(self, key_range(prefix, start, end), cursor, prev_values, timeout)

    def watch_cursor(self, prefix: bytes | None = None, *, start: bytes | None = None,
                     end: bytes | None = None, timeout: float | None = None) -> WatchCursor:
        """A cursor at "now" for a range (see `PrkDbClient.watch_cursor`)."""
        return self._run(current_cursor(self.core, key_range(prefix, start, end), timeout))

    # --- internals -----------------------------------------------------------------

    def drive(self, plan: Plan[T], *, sleep: Callable[[float], None] = time.sleep) -> T:
        """Run a `ClientCore` plan on this thread; its result (the SDK's extension point).

        Args:
            sleep: how to wait between attempts; a background thread passes
                one that raises when it must stop (a kept lease does).
        """
        if self._closed:
            plan.close()
            raise InvalidRequest("the client is closed")
        return drive_blocking(plan, self._send, sleep)

    def _run(self, plan: Plan[T]) -> T:
        if self._closed:
            plan.close()
            raise InvalidRequest("the client is closed")
        return drive_blocking(plan, self._send, time.sleep)

    def _send(self, action: Send) -> WireMessage:
        conn = self._pool.take(action.address)
        if conn is None:
            if self._closed:
                raise InvalidRequest("the client is closed")
            core = self.core
            conn = BlockingConnection.open(action.address, core.hello_frame(),
                                           core.accept_hello, action.deadline, time.monotonic,
                                           self._tls)
        reply = conn.request(action.build, action, action.deadline, time.monotonic)
        self._pool.give(conn)
        return reply


@final
class SyncWatch:
    """A blocking iterator of `WatchEvent`s: what `SyncClient.watch` returns.

    Each partition stream has a connection of its own, read by the thread
    that iterates (with `selectors`), so no thread runs in the background;
    ``cursor`` says what was delivered; ``close`` (or leaving ``with``)
    cancels the streams. Use it from one thread at a time.
    """

    def __init__(self, client: SyncClient, key_range: KeyRange, cursor: object,
                 prev_values: bool, timeout: float | None) -> None:
        self._client = client
        self._range = key_range
        self._given = cursor
        self._prev_values = prev_values
        self._timeout = timeout
        self._driver: WatchDriver | None = None
        self._inbox = WatchInbox(lambda: None)
        self._selector = selectors.DefaultSelector()
        # connection -> (its stream's request id, the plan's token)
        self._streams: dict[BlockingConnection, tuple[int, object]] = {}
        self._closed = False

    @property
    def cursor(self) -> WatchCursor:
        """Partition -> the revision up to which every event was delivered."""
        if self._driver is not None:
            return self._driver.plan.cursor
        return WatchCursor() if self._given is None else WatchCursor.parse(self._given)

    @property
    def streams(self) -> dict[int, str]:
        """Partition -> the node (host:port) its stream is open at now; a partition
        between streams (reconnecting) is absent. For logs and debugging."""
        return self._driver.plan.streams if self._driver is not None else {}

    def __iter__(self) -> SyncWatch:
        return self

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __next__(self) -> WatchEvent:
        if self._closed:
            raise StopIteration
        driver = self._driver
        if driver is None:
            core = self._client.core
            start = self._client._run(watch_start(core, self._range, self._given, self._timeout))
            driver = self._driver = WatchDriver(
                new_watch_plan(core, self._range, start, self._prev_values))
        while True:
            event = driver.next_event()
            if event is not None:
                return event
            action = driver.action
            if action is None:
                raise StopIteration
            if isinstance(action, OpenStream):
                try:
                    handle = self._open(action)
                except Exception as exc:
                    driver.fail(exc)
                else:
                    driver.answer(handle)
            elif isinstance(action, CancelStream):
                self._cancel(action.handle, action.cancel)
                driver.answer(None)
            else:
                assert isinstance(action, AwaitFrames)
                self._wait(action.deadline)
                driver.answer(self._inbox.take())

    def close(self) -> None:
        """Cancel the streams and close their connections; the iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._driver is not None:
            for cancel in self._driver.close():
                self._cancel(cancel.handle, cancel.cancel)
        for conn in list(self._streams):
            self._drop(conn)
        self._selector.close()

    # --- internals -----------------------------------------------------------------

    def _open(self, action: OpenStream) -> BlockingConnection:
        if self._client._closed:
            raise InvalidRequest("the client is closed")
        core = self._client.core
        conn = BlockingConnection.open(action.address, core.hello_frame(), core.accept_hello,
                                       action.deadline, time.monotonic, self._client._tls)
        try:
            request_id = conn.send_stream(action.build)
        except BaseException:
            conn.close()
            raise
        self._streams[conn] = (request_id, action.token)
        self._selector.register(conn, selectors.EVENT_READ)
        return conn

    def _cancel(self, handle: object, build: Callable[[int], Any]) -> None:
        assert isinstance(handle, BlockingConnection)
        stream = self._streams.get(handle)
        if stream is not None:
            request_id, token = stream
            with contextlib.suppress(ConnectionLost, TooLarge):
                handle.send_frame(request_frame(build, request_id, DEFAULT_MAX_FRAME))
            self._inbox.forget(token)
        self._drop(handle)

    def _drop(self, conn: BlockingConnection) -> None:
        if self._streams.pop(conn, None) is not None:
            self._selector.unregister(conn)
        conn.close()

    def _wait(self, deadline: float) -> None:
        """Read every stream that has data, waiting for one until `deadline`."""
        inbox = self._inbox
        while not inbox:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._streams:
                time.sleep(left)
                return
            for key, _ in self._selector.select(left):
                conn = key.fileobj
                assert isinstance(conn, BlockingConnection)
                request_id, token = self._streams[conn]
                try:
                    frames = conn.read_available()
                except ConnectionLost as exc:
                    inbox.push(token, exc)
                    self._drop(conn)
                    continue
                for msg in frames:
                    if getattr(msg, "request_id", None) != request_id:
                        continue  # an answer to nothing: a dedicated connection has no other
                    ended = isinstance(msg, Error)
                    if not inbox.push(token, msg):
                        ended = True  # the caller fell behind: the inbox ended the stream
                    if ended:
                        self._drop(conn)
                        break


class _Stopped(BaseException):
    """Raised by a kept lease's sleep when it is closed (a BaseException: no plan catches it)."""


@final
class SyncKeptLease(KeptLeaseView):
    """`SyncClient.lease`: the keep-alive runs in a daemon thread; ``with`` it.

    Also usable as ``kept.start()`` ... ``kept.close()``. See prkdb.client.lease.
    """

    def __init__(self, client: SyncClient, ttl: float, key: bytes) -> None:
        super().__init__(ttl, key)
        self.client = client
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost (True) or `timeout` seconds pass (False)."""
        return self._lost.wait(timeout)

    def start(self) -> Lease:
        """Grant the lease and start the keep-alive thread."""
        if self._state is not None:
            raise InvalidRequest("the lease is already started")
        sent_at = self.client.core.clock()
        lease = self.client.grant_lease(self._ttl, key=self._key)
        self._state = KeepAliveState(lease, sent_at)
        self._thread = threading.Thread(target=self._keep, args=(self._state,),
                                        name=f"prkdb-keep-lease-{lease.id}", daemon=True)
        self._thread.start()
        return lease

    def close(self, *, revoke: bool = True) -> None:
        """Stop the keep-alive thread and (if `revoke` and not lost) revoke. Idempotent.

        Raises:
            PrkdbError: the revoke failed (the lease then expires within its TTL).
        """
        state = self._state
        if self._closed or state is None:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            # A keep-alive in flight ends within its own timeout (< ttl/3); the
            # revoke below does not need to wait for it.
            self._thread.join(state.interval)
        lost = state.lost
        state.stopped = True
        if revoke and not lost:
            with contextlib.suppress(LeaseNotFound):
                self.client.revoke_lease(state.lease.id)

    def __enter__(self) -> SyncKeptLease:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        except PrkdbError:
            if exc_type is None:
                raise  # else the body's error wins; the lease expires by itself

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped()

    def _keep(self, state: KeepAliveState) -> None:
        try:
            self.client.drive(keep_alive_loop(self.client.core, state), sleep=self._sleep)
        except _Stopped:
            return
        except Exception as exc:  # a broken client: the lease is as good as lost
            state.lose(f"lease {state.lease.id}: keep-alive stopped: {exc!r}")
        if state.lost:
            self._lost.set()
