"""The client-facing service: hello, then pipelined requests answered by id.

Each connection has one reader (this task) and one writer (`FramedStream`).
Requests run concurrently (bounded per connection) and their responses go
out in completion order, coalesced per write. Bad bytes get an error frame
and a closed connection; a well-framed request with bad fields gets an error
response and the connection stays up. Nothing a client sends can crash the
node: every failure is either a `PrkdbError` turned into an Error frame, or
a bug logged with its traceback and answered INTERNAL.

Data requests (Get, Put, Delete, Cas, Batch, Scan, Txn and the lease
requests) do not get a task: `_dispatch` hands them to their partition with
a callback. Scans are served like Gets (ReadIndex on the leader, or asked of
the leader by a follower, or local for STALE). A Txn, a Batch (a Txn without
compares) and a lease grant or revoke are proposed like a Put. Keep-alives,
time-to-live and lease lists go to the leader, which first confirms its
leadership with a ReadIndex round (a deposed leader must not renew a lease
its successor may already have expired), then asks its `PartitionLeases` (prkdb/server/leases.py).

Watches (`Watch`, `WatchCancel`) are handled by the reading task at once,
with no task and no in-flight slot: any replica serves them from its applied
state (prkdb/server/watch.py). A connection's `WatchConnection` is the sink
of its watches: the Raft loop queues their WatchEvents frames on this
connection's `FramedStream` (never waiting for the socket) and they leave
with the pass's replies; the connection's close unregisters them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from prkdb import __version__
from prkdb.config import NodeConfig
from prkdb.errors import (
    ErrorCode,
    InternalError,
    InvalidRequest,
    LeaseNotFound,
    NotLeader,
    PrkdbError,
    TooLarge,
    TooManyLeases,
    Unavailable,
)
from prkdb.logging import NodeLogger
from prkdb.partitioning import KeyRule, partition_for
from prkdb.raft import RaftStatus
from prkdb.security.tls import LogLimiter
from prkdb.server.auth import AuthService, ConnectionAuth
from prkdb.server.backup import BackupFiles, describe
from prkdb.server.framed import FramedStream, ReplyOutbox, StreamClosed
from prkdb.server.pending import Callback, Waiter
from prkdb.server.tcpinfo import send_progress
from prkdb.server.watch import SharedBatch, WatchSink
from prkdb.server.watch import Watch as Registration
from prkdb.state import (
    UNCHECKED,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    InvalidCommand,
    KeyRecord,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    ResultCode,
    ScanItem,
    TxnCommand,
    TxnOp,
    WriteResult,
    encode_command,
    lease_partition,
    validate_command,
)
from prkdb.state import Limits as StateLimits
from prkdb.storage import SnapshotStore
from prkdb.wire import LocalProtocolError, RemoteProtocolError, from_wire
from prkdb.wire.messages import (
    AUTH_ADMIN_TYPES,
    ROLE_CLIENT,
    AdminOk,
    Authenticate,
    BackupBegin,
    BackupBeginOk,
    BackupChunk,
    BackupRead,
    Batch,
    Cas,
    Delete,
    Error,
    Get,
    GetOk,
    Hello,
    HelloOk,
    KeyValue,
    LeaseGrant,
    LeaseInfo,
    LeaseKeepAlive,
    LeaseKeepAliveOk,
    LeaseList,
    LeaseListOk,
    LeaseOk,
    LeaseRevoke,
    LeaseTimeToLive,
    Login,
    NodeInfo,
    OpKind,
    OpResult,
    PartitionStatus,
    Put,
    ReadConsistency,
    RebuildFence,
    ReplicaProgress,
    RoleList,
    Scan,
    ScanOk,
    Snapshot,
    Status,
    StatusOk,
    TransferLeader,
    Txn,
    TxnOk,
    TxnOpKind,
    TxnOpResult,
    UserList,
    Watch,
    WatchCancel,
    WatchEvents,
    WireMessage,
    WriteOk,
    check_hello,
    encode_event_list,
    error_for,
    watch_events_frame,
)


class Partition(Protocol):
    """What the service needs of one partition (a `PartitionDriver`)."""

    partition: int
    leader_id: int

    @property
    def is_leader(self) -> bool: ...
    @property
    def applied_index(self) -> int: ...
    def status(self) -> RaftStatus: ...
    def read(self, key: bytes) -> KeyRecord | None: ...
    def scan(self, start: bytes, end: bytes | None, limit: int, keys_only: bool
             ) -> list[ScanItem]: ...
    def count(self, start: bytes, end: bytes | None) -> int: ...
    def lease_keys(self, lease_id: int) -> list[bytes] | None: ...
    def not_leader_error(self) -> NotLeader: ...
    def submit_write(self, data: bytes, deadline: float, callback: Callback) -> None: ...
    def submit_lease_grant(self, data: bytes, deadline: float, callback: Callback) -> None: ...
    def submit_read(self, deadline: float, callback: Callback) -> None: ...
    def keep_alive(self, lease_ids: Sequence[int], now: float) -> list[int]: ...
    def lease_status(self, lease_id: int, now: float, with_keys: bool
                     ) -> tuple[int, int, list[bytes]] | None: ...
    def lease_list(self, now: float) -> list[tuple[int, int, int]]: ...
    async def transfer_leadership(self, to: int) -> int: ...
    async def wait_not_leader(self) -> None: ...
    async def snapshot_now(self) -> int: ...
    def open_watch(self, sink: WatchSink, rid: int, start: bytes, end: bytes | None,
                   after: int, prev_values: bool) -> Registration: ...
    def close_watch(self, watch: Registration) -> None: ...


class ServedNode(Protocol):
    """What the service needs of its node (a `Node`), and nothing more."""

    cfg: NodeConfig
    log: NodeLogger
    reply_outbox: ReplyOutbox
    snapshots: SnapshotStore

    @property
    def drivers(self) -> Sequence[Partition]: ...
    async def fence_peer(self, node_id: int) -> None: ...

MAX_IN_FLIGHT = 1024  # concurrent requests per connection before we stop reading
HELLO_TIMEOUT = 10.0
# Until the hello is done a peer has proven nothing: keep its frames small.
HELLO_MAX_FRAME = 64 * 1024

_FAST_REQUESTS = (Get, Put, Delete, Cas, Batch, Scan, Txn, LeaseGrant, LeaseRevoke,
                  LeaseKeepAlive, LeaseTimeToLive, LeaseList)
_TOO_LARGE_CODES = {ResultCode.KEY_TOO_LARGE, ResultCode.VALUE_TOO_LARGE,
                    ResultCode.BATCH_TOO_LARGE}
Reply = Callable[[Any], None]
Fail = Callable[[BaseException], None]


class WatchConnection:
    """The watches of one client connection, and their `WatchSink` (watch.py)."""

    def __init__(self, service: ClientService, framed: FramedStream) -> None:
        self.service = service
        self.framed = framed
        #: Open watches by request id, with the partition serving each.
        self.watches: dict[int, tuple[Partition, Registration]] = {}
        stream = getattr(framed.stream, "transport_stream", framed.stream)  # under TLS
        self._sock = getattr(stream, "socket", None)
        # `stalled_for`: the last acknowledged count seen, since when, as of when.
        self._acked = -1
        self._progress_at = 0.0
        self._checked_at = -1.0

    @property
    def unsent_bytes(self) -> int:
        return self.framed.unsent_bytes

    def stalled_for(self, now: float) -> float:
        """Seconds the client has taken none of the bytes waiting for it (0: it reads).

        By TCP's acknowledgments (prkdb/server/tcpinfo.py), not by buffers
        filling; 0 when nothing waits or the kernel cannot tell. Every
        partition's watches ask at their ticks: one look per `now`.
        """
        if now == self._checked_at:
            return now - self._progress_at
        self._checked_at = now
        progress = send_progress(self._sock) if self._sock is not None else None
        if progress is None:
            self._progress_at = now
            return 0.0
        acked, queued = progress
        if acked != self._acked or not (queued or self.framed.unsent_bytes):
            self._acked = acked
            self._progress_at = now
        return now - self._progress_at

    def send_events(self, watch: Registration, events: Sequence[Any], progress: int,
                    shared: SharedBatch | None = None) -> bool:
        if self.framed.closed:
            return False
        # The history's events go out as they are (prkdb.state.events.Event is
        # the wire's Event; the registry copied them without prev_value if not asked).
        try:
            if shared is not None:  # encoded once for every watch of the range
                if shared.encoded is None:
                    shared.encoded = encode_event_list(events) or b""
                if shared.encoded:
                    return self.framed.send_bytes_nowait(watch_events_frame(
                        watch.rid, watch.partition, shared.encoded, progress,
                        self.framed.max_frame))
            frame = WatchEvents(watch.rid, watch.partition, tuple(events), progress)
            return self.framed.send_nowait(frame)
        except LocalProtocolError as e:  # one revision larger than a frame
            self.end_watch(watch, TooLarge(
                f"partition {watch.partition}: the events of one revision make a frame "
                f"larger than limits.max_frame ({e}); watch without prev_values, or "
                "raise limits.max_frame"))
            return False

    def end_watch(self, watch: Registration, error: PrkdbError) -> None:
        entry = self.watches.get(watch.rid)
        if entry is not None and entry[1] is watch:
            del self.watches[watch.rid]
        self.service.log.info("watch_ended", partition=watch.partition, rid=watch.rid,
                              code=ErrorCode(error.code).name, remote=self.framed.remote_address)
        self.service.send(self.framed, error_for(error, watch.rid))

    def open(self, req: Watch) -> None:
        """Start the stream of `req` (its first frame is queued now); raises PrkdbError."""
        limit = self.service.cfg.limits.max_watches_per_connection
        if req.request_id in self.watches:
            raise InvalidRequest(f"request id {req.request_id} is already an open watch on "
                                 "this connection")
        if len(self.watches) >= limit:
            raise InvalidRequest(f"this connection has {len(self.watches)} open watches, the "
                                 f"limit (limits.max_watches_per_connection = {limit}); "
                                 "cancel some or open another connection")
        driver = self.service.driver(req.partition)
        w = driver.open_watch(self, req.request_id, req.start, req.end, req.after,
                              req.prev_values)
        if not w.closed:  # (it may have ended at once: a closed connection)
            self.watches[req.request_id] = (driver, w)

    def cancel(self, rid: int) -> None:
        entry = self.watches.pop(rid, None)
        if entry is not None:
            entry[0].close_watch(entry[1])

    def close_all(self) -> None:
        watches, self.watches = self.watches, {}
        for driver, w in watches.values():
            driver.close_watch(w)


class ClientService:
    def __init__(self, node: ServedNode) -> None:
        self.node = node
        self.cfg = node.cfg
        #: How keys map to partitions here (the data dir's rule; Node sets it).
        self.key_rule: KeyRule = "crc32" if self.cfg.key_rule == "crc32" else "hashtag"
        self.log = node.log
        lim = self.cfg.limits
        self.limits = StateLimits(lim.max_key_size, lim.max_value_size, lim.max_batch_ops,
                                  lim.max_leases)
        self.connections = 0
        #: Replies that could not be queued (connection closed or not reading).
        self.dropped_replies = 0
        self._backups: BackupFiles | None = None  # made on first use (node.snapshots)
        #: Users, tokens and permission checks (prkdb/server/auth.py).
        self.auth = AuthService(node)
        self.auth.on_change = self._recheck_watches
        #: With auth on: the connections that opened watches, and who is on each.
        self._watching: dict[WatchConnection, ConnectionAuth] = {}
        self._log_limiter = LogLimiter()  # port mix-ups: one line per remote host a minute

    def send(self, framed: FramedStream, msg: Any) -> None:
        """Queue a reply; one that cannot be queued is counted, and logged once per connection."""
        if framed.send_nowait(msg):
            return
        self.dropped_replies += 1
        if framed.dropped == 1:
            self.log.warning(
                "reply_dropped", remote=framed.remote_address, reply=type(msg).__name__,
                reason="the connection is closing" if framed.closed
                else "the client is not reading its replies (send queue full)")

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        framed = FramedStream(stream, HELLO_MAX_FRAME, outbox=self.node.reply_outbox)
        watches = WatchConnection(self, framed)
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(framed.run_writer)
                try:
                    await self._serve(framed, nursery, watches)
                finally:
                    self._watching.pop(watches, None)
                    watches.close_all()
                    # Answer what is queued (e.g. the error that ends this
                    # connection), then close; requests still running are cut.
                    nursery.cancel_scope.deadline = trio.current_time() + 2
                    await framed.aclose(flush_timeout=1.0)
                    nursery.cancel_scope.cancel()
        except Exception as e:
            self.log.exception("client_connection_failed", error=repr(e))
        finally:
            self.connections -= 1

    async def _serve(self, framed: FramedStream, nursery: trio.Nursery,
                     watches: WatchConnection) -> None:
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                hello = from_wire(await framed.receive())
        except (StreamClosed, trio.TooSlowError):
            return
        except RemoteProtocolError as e:
            if e.details.get("http") == "request":
                # A port mix-up, not an attack: say so once, in HTTP they can read.
                self.log.warning("http_on_client_port", remote=framed.remote_address,
                                 reason="an HTTP request reached the PrkDB client port; "
                                 "answered 400 and closed")
                await framed.refuse_http("client")
                return
            if e.details.get("tls") == "client_hello":
                # TLS to this plaintext port: the Error frame is not TLS, which
                # the client's TLS library reports (prkdb.security.tls.tls_failure).
                host = framed.remote_address.rsplit(":", 1)[0]
                if self._log_limiter.allow("tls_on_plaintext_port", host) is not None:
                    self.log.warning("tls_on_plaintext_port", remote=framed.remote_address,
                                     reason="a client opened a TLS handshake, but this "
                                     "client port has no [tls]; closed")
                with trio.move_on_after(1):
                    await framed.send_now(error_for(e, 0))
                return
            await self._fatal(framed, error_for(e, 0))
            return
        if not isinstance(hello, Hello):
            await self._fatal(framed, Error(0, ErrorCode.BAD_REQUEST,
                                            "the first frame must be a hello"))
            return
        err = check_hello(hello, cluster_id=self.cfg.cluster_id, role=ROLE_CLIENT)
        if err is not None:
            await self._fatal(framed, err)
            return
        framed.decoder.max_frame = framed.max_frame = self.cfg.limits.max_frame
        self.send(framed, HelloOk(self.cfg.node_id, self.cfg.cluster_id))
        limiter = trio.Semaphore(MAX_IN_FLIGHT)
        auth = self.auth
        conn = auth.new_connection(framed.remote_address, framed.peer_common_name)
        checked = auth.enabled
        while not framed.broken:
            try:
                obj = await framed.receive()
            except StreamClosed:
                return
            except RemoteProtocolError as e:
                await self._fatal(framed, error_for(e, 0))
                return
            try:
                req = from_wire(obj)
            except RemoteProtocolError as e:
                self.send(framed, error_for(e))
                if not e.request_id:
                    return
                continue
            if checked or type(req) is Authenticate or type(req) is Login:
                # Auth (prkdb/server/auth.py): who is on the connection, and may they?
                kind = type(req)
                if type(req) is Authenticate:
                    try:  # here, not in a task: requests after it run as its user
                        self.send(framed, auth.authenticate(conn, req))
                    except PrkdbError as e:
                        self.send(framed, error_for(e, req.request_id))
                    continue
                if type(req) is Login:
                    # Awaited here (scrypt in a thread, ~50 ms): like Authenticate, the
                    # requests pipelined after a Login run as its user.
                    await limiter.acquire()
                    await self._login(framed, conn, req, limiter)
                    continue
                if kind is not Status and kind is not WatchCancel:
                    try:
                        self._authorize(conn, req)
                    except PrkdbError as e:
                        if e.code == ErrorCode.UNAUTHENTICATED:
                            auth.unauthenticated(conn, e)
                        self.send(framed, error_for(e, getattr(req, "request_id", 0)))
                        continue
                    if kind is Watch:
                        self._watching[watches] = conn
            if type(req) is Watch or type(req) is WatchCancel:
                self._watch_request(watches, req)
                continue
            await limiter.acquire()
            if isinstance(req, _FAST_REQUESTS):
                self._start(framed, req, limiter)
            else:
                nursery.start_soon(self._run_request, framed, req, limiter)

    def _authorize(self, conn: ConnectionAuth, req: Any) -> None:
        """Raise UNAUTHENTICATED or PERMISSION_DENIED unless `conn`'s user may send `req`."""
        auth = self.auth
        match req:
            case Get():
                auth.require_key(conn, req.key, False, "get")
            case Put() | Delete() | Cas():
                auth.require_key(conn, req.key, True, type(req).__name__.lower())
            case Batch():
                for op in req.ops:
                    auth.require_key(conn, op.key, True, "batch")
                auth.check_user(conn)  # (an empty batch)
            case Scan():
                auth.require(conn, req.start, req.end, False, "scan")
            case Watch():
                auth.require(conn, req.start, req.end, False, "watch")
            case Txn():
                for c in req.compares:
                    auth.require_key(conn, c.key, False, "txn compare")
                for txn_op in (*req.success, *req.failure):
                    auth.require_key(conn, txn_op.key, txn_op.kind != TxnOpKind.GET, "txn")
                auth.check_user(conn)
            case LeaseRevoke() | LeaseTimeToLive(with_keys=True):
                # A revoke deletes the attached keys: READWRITE on each; listing them
                # needs READ on each (as applied here).
                write = type(req) is LeaseRevoke
                p = lease_partition(req.lease_id)
                drivers = self.node.drivers
                keys = drivers[p].lease_keys(req.lease_id) if p < len(drivers) else None
                what = "lease revoke" if write else "lease time-to-live with keys"
                for key in keys or ():
                    auth.require_key(conn, key, write, f"{what} (an attached key)")
                auth.check_user(conn)
            case LeaseGrant() | LeaseKeepAlive() | LeaseTimeToLive() | LeaseList():
                auth.check_user(conn)
            case RebuildFence() if auth.may_fence(conn, req.node_id):
                pass  # a rebuilding member fencing itself, with its node certificate
            case _:  # admin requests: the transfer, snapshot, backup, fence, users and roles
                auth.require_root(conn, type(req).__name__)

    def _recheck_watches(self) -> None:
        """Users or roles changed: end the open watches their users may no longer read."""
        for watches, conn in list(self._watching.items()):
            for rid, (_, w) in list(watches.watches.items()):
                try:
                    self.auth.require(conn, w.start, w.end, False, "watch")
                except PrkdbError as e:
                    watches.cancel(rid)
                    self.send(watches.framed, error_for(e, rid))
                    watches.framed.flush()

    async def _login(self, framed: FramedStream, conn: ConnectionAuth, req: Login,
                     limiter: trio.Semaphore) -> None:
        try:
            resp: Any = await self.auth.login(conn, req)
        except PrkdbError as e:
            resp = error_for(e, req.request_id)
        except Exception as e:
            self.log.exception("request_failed", request="Login", error=repr(e))
            resp = error_for(InternalError(f"internal error: {type(e).__name__}"),
                             req.request_id)
        finally:
            limiter.release()
        self.send(framed, resp)
        framed.flush()

    def _watch_request(self, watches: WatchConnection, req: Watch | WatchCancel) -> None:
        """Open or cancel a watch of this connection (no task: module doc)."""
        if type(req) is WatchCancel:
            watches.cancel(req.request_id)
            return
        assert type(req) is Watch
        try:
            watches.open(req)
        except PrkdbError as e:
            self.send(watches.framed, error_for(e, req.request_id))
        except Exception as e:
            self.log.exception("request_failed", request="Watch", error=repr(e))
            self.send(watches.framed, error_for(
                InternalError(f"internal error: {type(e).__name__}"), req.request_id))

    async def _fatal(self, framed: FramedStream, err: Error) -> None:
        self.log.info("rejected_client", code=ErrorCode(err.code).name, reason=err.message)
        with trio.move_on_after(1):
            await framed.send_now(err)

    def _start(self, framed: FramedStream, req: Any, limiter: trio.Semaphore) -> None:
        """Hand a data request to its partition without a task of its own.

        The partition driver calls `reply` when the request is done (or
        expired): the response is queued on this connection's writer. This
        saves two task switches per request on the hot path.
        """
        rid = req.request_id

        def reply(resp: Any) -> None:
            limiter.release()
            self.send(framed, resp)

        def fail(e: BaseException) -> None:
            if isinstance(e, PrkdbError):
                reply(error_for(e, rid))
            else:
                self.log.error("request_failed", request=type(req).__name__, error=repr(e))
                reply(error_for(InternalError(f"internal error: {type(e).__name__}"), rid))

        try:
            self._dispatch(req, reply, fail)
        except Exception as e:  # raised before the request reached a partition
            fail(e)

    async def _run_request(self, framed: FramedStream, req: Any, limiter: trio.Semaphore) -> None:
        rid = getattr(req, "request_id", 0)
        try:
            resp = await self.handle(req)
        except PrkdbError as e:
            resp = error_for(e, rid)
        except Exception as e:
            self.log.exception("request_failed", request=type(req).__name__, error=repr(e))
            resp = error_for(InternalError(f"internal error: {type(e).__name__}"), rid)
        finally:
            limiter.release()
        self.send(framed, resp)
        framed.flush()

    # -- requests -----------------------------------------------------------
    def _dispatch(self, req: Any, reply: Callable[[Any], None],
                  fail: Callable[[BaseException], None]) -> None:
        """Start a data request (`_FAST_REQUESTS`); `reply` or `fail` is called exactly once."""
        match req:
            case Get():
                self._get(req, reply, fail)
            case Put():
                self._write(req, req.key, PutCommand(req.key, req.value), reply, fail)
            case Delete():
                self._write(req, req.key, DeleteCommand(req.key), reply, fail)
            case Cas():
                cmd = CompareAndSetCommand(
                    req.key,
                    new_value=req.new_value,
                    expected_value=(
                        UNCHECKED if req.expected_value is None else req.expected_value
                    ),
                    expected_version=req.expected_version,
                )
                self._write(req, req.key, cmd, reply, fail)
            case Batch():
                self._batch(req, reply, fail)
            case Scan():
                self._scan(req, reply, fail)
            case Txn():
                self._txn(req, reply, fail)
            case LeaseGrant():
                self._lease_grant(req, reply, fail)
            case LeaseRevoke():
                self._lease_revoke(req, reply, fail)
            case LeaseKeepAlive():
                self._lease_keep_alive(req, reply, fail)
            case LeaseTimeToLive():
                self._lease_time_to_live(req, reply, fail)
            case LeaseList():
                self._lease_list(req, reply, fail)

    async def handle(self, req: WireMessage) -> WireMessage:
        """Serve an administrative request (in a task of its own: they may wait)."""
        match req:
            case Status():
                return self._status(req)
            case RebuildFence():
                if req.node_id == self.cfg.node_id or self.cfg.peer(req.node_id) is None:
                    raise InvalidRequest(
                        f"node {req.node_id} is not another member of this cluster")
                await self.node.fence_peer(req.node_id)
                return self._status(req)
            case TransferLeader():
                return await self._transfer(req)
            case Snapshot():
                return await self._snapshot(req)
            case BackupBegin():
                return await self._backup_begin(req)
            case BackupRead():
                return await self._backup_read(req)
            case UserList() | RoleList():
                return await self.auth.admin(req)
            case _ if type(req) in AUTH_ADMIN_TYPES:
                return await self.auth.admin(req)
            case _:
                raise InvalidRequest(f"{type(req).__name__} is not a client request")

    def _deadline(self) -> float:
        return trio.current_time() + self.cfg.limits.request_timeout

    def driver(self, partition: int) -> Any:
        """The driver of `partition`; InvalidRequest if the cluster has no such partition."""
        return self._driver(partition)

    def _driver(self, partition: int) -> Any:
        if not 0 <= partition < len(self.node.drivers):
            raise InvalidRequest(
                f"partition {partition} does not exist (this cluster has "
                f"{len(self.node.drivers)})"
            )
        return self.node.drivers[partition]

    def _partition_of(self, key: bytes) -> int:
        return partition_for(key, self.cfg.partitions, self.key_rule)

    def _get(self, req: Get, reply: Callable[[Any], None],
             fail: Callable[[BaseException], None]) -> None:
        p = self._partition_of(req.key)
        if req.partition != p:
            raise InvalidRequest(
                f"key maps to partition {p}, request says {req.partition} "
                f"(this cluster has {self.cfg.partitions} partitions)"
            )
        driver = self._driver(p)

        def answer() -> None:
            rec = driver.read(req.key)
            applied = driver.applied_index
            if rec is None:
                reply(GetOk(req.request_id, None, 0, 0, applied))
            else:
                value, version, mod_revision, _, _ = rec
                reply(GetOk(req.request_id, value, version, mod_revision, applied))

        def confirmed(result: Any, error: PrkdbError | None) -> None:
            if error is not None:
                fail(error)
            else:
                answer()

        if req.consistency == ReadConsistency.STALE:
            answer()
            return
        if req.consistency == ReadConsistency.LINEARIZABLE and not driver.is_leader:
            raise driver.not_leader_error()
        driver.submit_read(self._deadline(), confirmed)

    def _check(self, cmd: Any) -> None:
        try:
            validate_command(cmd, self.limits)
        except InvalidCommand as e:
            if e.code in _TOO_LARGE_CODES:
                raise TooLarge(str(e)) from None
            raise InvalidRequest(str(e)) from None

    def _write(self, req: Any, key: bytes, cmd: Any, reply: Callable[[Any], None],
               fail: Callable[[BaseException], None], partition: int | None = None) -> None:
        self._check(cmd)
        p = self._partition_of(key) if partition is None else partition
        driver = self._driver(p)
        if not driver.is_leader:
            raise driver.not_leader_error()
        data = encode_command(cmd, client_id=req.client_id, seq=req.seq)

        def applied(result: Any, error: PrkdbError | None) -> None:
            try:
                if error is not None:
                    raise error
                reply(_write_ok(req.request_id, result))
            except Exception as e:
                fail(e)

        driver.submit_write(data, self._deadline(), applied)

    def _batch(self, req: Batch, reply: Reply, fail: Fail) -> None:
        """A batch is a transaction without compares (answered WriteOk, as before)."""
        self._check_partition("batch", req.partition, [op.key for op in req.ops])
        ops: list[TxnOp] = [PutCommand(op.key, op.value or b"") if op.kind == OpKind.PUT
                            else DeleteCommand(op.key) for op in req.ops]
        cmd = TxnCommand((), tuple(ops))
        self._write(req, b"", cmd, reply, fail, partition=req.partition)

    def _check_partition(self, what: str, partition: int, keys: Sequence[bytes]) -> None:
        """Every key of a batch or transaction must be of `partition` (they are atomic in one)."""
        self._driver(partition)
        partition_of = self._partition_of
        if all(partition_of(k) == partition for k in keys):
            return
        by_partition: dict[int, list[bytes]] = {}
        for k in keys:
            by_partition.setdefault(partition_of(k), []).append(k)
        named = "; ".join(
            f"partition {p}: " + ", ".join(repr(k[:32]) for k in ks[:3])
            + (f" and {len(ks) - 3} more" if len(ks) > 3 else "")
            for p, ks in sorted(by_partition.items()))
        raise InvalidRequest(
            f"{what} for partition {partition} has keys of partitions "
            f"{sorted(by_partition)} ({named}): a {what} is atomic within one partition only; "
            "give related keys one hash tag, e.g. b'{user:42}:name' and b'{user:42}:mail', "
            "so that they share a partition")

    # -- scans ----------------------------------------------------------------------
    def _scan(self, req: Scan, reply: Reply, fail: Fail) -> None:
        """A page of ``[start, end)`` of one partition, read like a Get at `req.consistency`."""
        driver = self._driver(req.partition)
        lim = self.cfg.limits
        page = req.limit if 0 < req.limit < lim.max_scan_page else lim.max_scan_page
        max_bytes = lim.max_scan_bytes
        rid, start, end, keys_only = req.request_id, req.start, req.end, req.keys_only

        def answer_page() -> None:
            applied = driver.applied_index
            count = driver.count(start, end)
            if req.count_only:
                reply(ScanOk(rid, (), count, False, applied))
                return
            kvs = _page(driver.scan(start, end, page, keys_only), max_bytes)
            # The page is the first len(kvs) keys of the range: more if the range has more.
            reply(ScanOk(rid, kvs, count, len(kvs) < count, applied))

        self._read(driver, req.consistency, answer_page, fail)

    def _read(self, driver: Partition, consistency: ReadConsistency, answer: Callable[[], None],
              fail: Fail) -> None:
        """Call `answer` once the applied state is fresh enough for `consistency` (as `_get`)."""
        if consistency == ReadConsistency.STALE:
            answer()
            return
        if consistency == ReadConsistency.LINEARIZABLE and not driver.is_leader:
            raise driver.not_leader_error()

        def confirmed(result: object, error: PrkdbError | None) -> None:
            if error is not None:
                fail(error)
                return
            try:
                answer()
            except Exception as e:
                fail(e)

        driver.submit_read(self._deadline(), confirmed)

    # -- transactions ---------------------------------------------------------------
    def _txn(self, req: Txn, reply: Reply, fail: Fail) -> None:
        keys = [c.key for c in req.compares]
        keys += [op.key for op in req.success]
        keys += [op.key for op in req.failure]
        self._check_partition("transaction", req.partition, keys)
        cmd = TxnCommand(tuple(map(_compare, req.compares)), tuple(map(_txn_op, req.success)),
                         tuple(map(_txn_op, req.failure)))
        self._propose(req, req.partition, cmd, _txn_ok, reply, fail)

    def _propose(self, req: Txn | LeaseGrant | LeaseRevoke, partition: int, cmd: Any,
                 answer: Callable[[int, WriteResult], WireMessage], reply: Reply, fail: Fail,
                 grant: bool = False) -> None:
        """Replicate `cmd` in `partition` (its leader); reply ``answer(request_id, result)``.

        `_write` does the same for the Put/Delete/Cas/Batch path, which stays as lean as it was.
        """
        self._check(cmd)
        driver = self._driver(partition)
        if not driver.is_leader:
            raise driver.not_leader_error()
        data = encode_command(cmd, client_id=req.client_id, seq=req.seq)
        rid = req.request_id

        def applied(result: object, error: PrkdbError | None) -> None:
            try:
                if error is not None:
                    raise error
                if not isinstance(result, WriteResult):
                    raise InternalError("write applied without a result")
                if result.code != ResultCode.OK:
                    raise _result_error(result)
                reply(answer(rid, result))
            except Exception as e:
                fail(e)

        if grant:
            driver.submit_lease_grant(data, self._deadline(), applied)
        else:
            driver.submit_write(data, self._deadline(), applied)

    # -- leases -----------------------------------------------------------------------
    def _lease_driver(self, lease_id: int) -> Partition:
        p = lease_partition(lease_id)
        if p >= len(self.node.drivers):
            raise LeaseNotFound(
                f"lease {lease_id} names partition {p}, and this cluster has "
                f"{len(self.node.drivers)}: no such lease", details={"lease_id": lease_id})
        return self.node.drivers[p]

    def _lease_grant(self, req: LeaseGrant, reply: Reply, fail: Fail) -> None:
        # Like etcd, a TTL below the floor is raised to it (config.py says why).
        ttl = max(req.ttl_ms, self.cfg.limits.min_lease_ttl_ms)

        def granted(rid: int, result: WriteResult) -> WireMessage:
            return LeaseOk(rid, result.lease_id, ttl, ttl, ())

        self._propose(req, req.partition, LeaseGrantCommand(ttl), granted, reply, fail,
                      grant=True)

    def _lease_revoke(self, req: LeaseRevoke, reply: Reply, fail: Fail) -> None:
        driver = self._lease_driver(req.lease_id)
        self._propose(req, driver.partition, LeaseRevokeCommand(req.lease_id), _revoke_ok,
                      reply, fail)

    def _leader_read(self, driver: Partition, answer: Callable[[float], WireMessage],
                     reply: Reply, fail: Fail) -> None:
        """On the leader only: one ReadIndex round (leadership confirmed), then `answer(now)`."""
        if not driver.is_leader:
            raise driver.not_leader_error()
        self._read(driver, ReadConsistency.LINEARIZABLE,
                   lambda: reply(answer(trio.current_time())), fail)

    def _lease_keep_alive(self, req: LeaseKeepAlive, reply: Reply, fail: Fail) -> None:
        driver = self._driver(req.partition)
        for lease_id in req.lease_ids:
            if lease_partition(lease_id) != req.partition:
                raise InvalidRequest(
                    f"lease {lease_id} is of partition {lease_partition(lease_id)}, the "
                    f"keep-alive is for partition {req.partition}")
        ids = req.lease_ids
        self._leader_read(
            driver,
            lambda now: LeaseKeepAliveOk(req.request_id, tuple(driver.keep_alive(ids, now))),
            reply, fail)

    def _lease_time_to_live(self, req: LeaseTimeToLive, reply: Reply, fail: Fail) -> None:
        driver = self._lease_driver(req.lease_id)

        def answer(now: float) -> WireMessage:
            status = driver.lease_status(req.lease_id, now, req.with_keys)
            if status is None:
                raise LeaseNotFound(f"lease {req.lease_id} not found (expired or revoked)",
                                    details={"lease_id": req.lease_id})
            ttl, remaining, keys = status
            return LeaseOk(req.request_id, req.lease_id, ttl, remaining, tuple(keys))

        self._leader_read(driver, answer, reply, fail)

    def _lease_list(self, req: LeaseList, reply: Reply, fail: Fail) -> None:
        driver = self._driver(req.partition)
        self._leader_read(
            driver,
            lambda now: LeaseListOk(req.request_id, tuple(
                LeaseInfo(i, ttl, remaining) for i, ttl, remaining in driver.lease_list(now))),
            reply, fail)

    def _status(self, req: Status | RebuildFence) -> StatusOk:
        nodes = tuple(NodeInfo(p.id, p.client_addr, p.peer_addr) for p in self.cfg.peers)
        parts = []
        for d in self.node.drivers:
            st = d.status()
            progress = tuple(ReplicaProgress(n, pr.match) for n, pr in sorted(st.progress.items()))
            parts.append(PartitionStatus(d.partition, st.leader, st.term, st.commit,
                                         d.applied_index, st.role, progress))
        return StatusOk(req.request_id, self.cfg.node_id, self.cfg.cluster_id, nodes,
                        tuple(parts), __version__, self.key_rule)

    async def _transfer(self, req: TransferLeader) -> AdminOk:
        driver = self._driver(req.partition)
        if req.to_node and self.cfg.peer(req.to_node) is None:
            raise InvalidRequest(f"node {req.to_node} is not a member of this cluster")
        if req.to_node == self.cfg.node_id and driver.is_leader:
            # Already there: nothing to move (else we would wait for a step-down
            # that never comes and answer UNAVAILABLE at the deadline).
            return AdminOk(req.request_id, {"partition": req.partition, "to": req.to_node,
                                            "leader": req.to_node})
        target = await driver.transfer_leadership(req.to_node)
        # Wait until leadership moved (or the transfer was aborted).
        with trio.move_on_at(self._deadline()):
            await driver.wait_not_leader()
        if driver.is_leader:
            raise Unavailable(f"partition {req.partition}: leadership transfer did not complete")
        # We may not have heard from the new leader yet: report whom we asked.
        return AdminOk(req.request_id, {"partition": req.partition, "to": target,
                                        "leader": driver.leader_id or target})

    async def _snapshot(self, req: Snapshot) -> AdminOk:
        drivers = self.node.drivers if req.partition is None else [self._driver(req.partition)]
        taken = {}
        for d in drivers:
            taken[str(d.partition)] = await d.snapshot_now()
        return AdminOk(req.request_id, {"snapshots": taken})

    @property
    def backups(self) -> BackupFiles:
        if self._backups is None:
            self._backups = BackupFiles(self.node.snapshots)
        return self._backups

    async def _backup_begin(self, req: BackupBegin) -> BackupBeginOk:
        """A snapshot covering every write acknowledged before `req` (prkdb/server/backup.py)."""
        driver = self._driver(req.partition)
        if not driver.is_leader:
            raise driver.not_leader_error()
        # One ReadIndex round, as a linearizable read: confirms we lead and
        # waits until applied >= our commit index as of now.
        w: Waiter[int] = Waiter()
        driver.submit_read(self._deadline(), w.set)
        floor = await w.get()
        for _ in range(5):
            # A snapshot already being written when we asked may end below the
            # floor (its waiters get its index): then ask again.
            index = await driver.snapshot_now()
            if index < floor:
                continue
            held = await self.backups.hold(req.partition, index)
            if held is None:  # retention removed it meanwhile: take a newer one
                continue
            self.log.info("backup_snapshot_handed_out", floor=floor, **describe(held))
            return BackupBeginOk(req.request_id, req.partition, self.cfg.node_id, held.index,
                                 held.term, held.size, held.sha256)
        raise Unavailable(f"partition {req.partition}: no snapshot at or past index {floor} "
                          f"could be taken; retry")

    async def _backup_read(self, req: BackupRead) -> BackupChunk:
        self._driver(req.partition)
        data, size = await self.backups.read(req.partition, req.index, req.term, req.offset,
                                             req.length)
        return BackupChunk(req.request_id, req.offset, data, size)


def _write_ok(request_id: int, result: Any) -> WriteOk:
    """The response for an applied write (a failed CAS is a normal outcome)."""
    if result is None:
        raise InternalError("write applied without a result")
    if result.code == ResultCode.OK or result.code == ResultCode.CAS_FAILED:
        return WriteOk(
            request_id,
            result.code == ResultCode.OK,
            result.revision,
            result.version,
            result.prev_version,
            tuple(OpResult(o.version, o.prev_version) for o in result.ops),
        )
    raise _result_error(result)


def _result_error(result: WriteResult) -> PrkdbError:
    """The error for a write the state machine refused (applied as a no-op)."""
    code = result.code
    message = result.message or ResultCode(code).name
    if code in _TOO_LARGE_CODES:
        return TooLarge(message)
    if code == ResultCode.LEASE_NOT_FOUND:
        return LeaseNotFound(message)
    if code == ResultCode.LEASE_LIMIT:
        return TooManyLeases(message)
    return InvalidRequest(message)


def _compare(c: Any) -> Compare:
    """A wire Compare as the state machine's (the wire checked that the right operand is set)."""
    operand: bytes | int | None = c.value if c.target == CompareTarget.VALUE else c.number
    if operand is None:
        raise InvalidRequest(f"compare of {c.key[:32]!r}: no operand for {c.target.name}")
    return Compare(c.key, CompareTarget(c.target), CompareOp(c.op), operand)


def _txn_op(op: Any) -> TxnOp:
    """A wire TxnOp as the state machine's op (the wire checked its shape)."""
    if op.kind == TxnOpKind.PUT:
        return PutCommand(op.key, op.value, op.lease)
    if op.kind == TxnOpKind.DELETE:
        return DeleteCommand(op.key)
    return GetOp(op.key)


def _txn_ok(request_id: int, result: WriteResult) -> TxnOk:
    return TxnOk(request_id, result.succeeded, result.revision, tuple(
        TxnOpResult(o.version, o.prev_version, o.value, o.mod_revision, o.create_revision,
                    o.lease) for o in result.ops))


def _revoke_ok(request_id: int, result: WriteResult) -> WriteOk:
    """A revoke's answer: version = the number of keys deleted with the lease."""
    return WriteOk(request_id, True, result.revision, result.version, 0, ())


def _page(items: list[ScanItem], max_bytes: int) -> tuple[KeyValue, ...]:
    """The items as KeyValues, cut before `max_bytes` of keys and values (at least one)."""
    size = 0
    n = 0
    for item in items:
        size += len(item[0]) + len(item[1])
        if size > max_bytes and n:
            break
        n += 1
    return tuple(KeyValue(*item) for item in (items if n == len(items) else items[:n]))
