"""The client-facing service: hello, then pipelined requests answered by id.

Each connection has one reader (this task) and one writer (`FramedStream`).
Requests run concurrently (bounded per connection) and their responses go
out in completion order, coalesced per write. Bad bytes get an error frame
and a closed connection; a well-framed request with bad fields gets an error
response and the connection stays up. Nothing a client sends can crash the
node: every failure is either a `PrkdbError` turned into an Error frame, or
a bug logged with its traceback and answered INTERNAL.
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
    NotLeader,
    PrkdbError,
    TooLarge,
    Unavailable,
)
from prkdb.logging import NodeLogger
from prkdb.partitioning import partition_for
from prkdb.raft import RaftStatus
from prkdb.server.backup import BackupFiles, describe
from prkdb.server.framed import FramedStream, ReplyOutbox, StreamClosed
from prkdb.server.pending import Callback, Waiter
from prkdb.state import (
    UNCHECKED,
    BatchCommand,
    CompareAndSetCommand,
    DeleteCommand,
    InvalidCommand,
    PutCommand,
    ResultCode,
    encode_command,
    validate_command,
)
from prkdb.state import Limits as StateLimits
from prkdb.storage import SnapshotStore
from prkdb.wire import RemoteProtocolError, from_wire
from prkdb.wire.messages import (
    ROLE_CLIENT,
    AdminOk,
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
    NodeInfo,
    OpKind,
    OpResult,
    PartitionStatus,
    Put,
    ReadConsistency,
    RebuildFence,
    ReplicaProgress,
    Snapshot,
    Status,
    StatusOk,
    TransferLeader,
    WireMessage,
    WriteOk,
    check_hello,
    error_for,
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
    def read(self, key: bytes) -> tuple[bytes, int, int] | None: ...
    def not_leader_error(self) -> NotLeader: ...
    def submit_write(self, data: bytes, deadline: float, callback: Callback) -> None: ...
    def submit_read(self, deadline: float, callback: Callback) -> None: ...
    async def transfer_leadership(self, to: int) -> int: ...
    async def wait_not_leader(self) -> None: ...
    async def snapshot_now(self) -> int: ...


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

_FAST_REQUESTS = (Get, Put, Delete, Cas, Batch)
_TOO_LARGE_CODES = {ResultCode.KEY_TOO_LARGE, ResultCode.VALUE_TOO_LARGE,
                    ResultCode.BATCH_TOO_LARGE}


class ClientService:
    def __init__(self, node: ServedNode) -> None:
        self.node = node
        self.cfg = node.cfg
        self.log = node.log
        lim = self.cfg.limits
        self.limits = StateLimits(lim.max_key_size, lim.max_value_size, lim.max_batch_ops)
        self.connections = 0
        #: Replies that could not be queued (connection closed or not reading).
        self.dropped_replies = 0
        self._backups: BackupFiles | None = None  # made on first use (node.snapshots)

    def _send(self, framed: FramedStream, msg: Any) -> None:
        """Queue a reply; one that cannot be queued is counted, and logged once per connection."""
        if framed.send_nowait(msg):
            return
        self.dropped_replies += 1
        if framed.dropped == 1:
            self.log.warning(
                "reply_dropped", remote=framed.remote_address, reply=type(msg).__name__,
                reason="the connection is closing" if framed.closed
                else "the client is not reading its replies (send queue full)")

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, HELLO_MAX_FRAME, outbox=self.node.reply_outbox)
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(framed.run_writer)
                try:
                    await self._serve(framed, nursery)
                finally:
                    # Answer what is queued (e.g. the error that ends this
                    # connection), then close; requests still running are cut.
                    nursery.cancel_scope.deadline = trio.current_time() + 2
                    await framed.aclose(flush_timeout=1.0)
                    nursery.cancel_scope.cancel()
        except Exception as e:
            self.log.exception("client_connection_failed", error=repr(e))
        finally:
            self.connections -= 1

    async def _serve(self, framed: FramedStream, nursery: trio.Nursery) -> None:
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
        self._send(framed, HelloOk(self.cfg.node_id, self.cfg.cluster_id))
        limiter = trio.Semaphore(MAX_IN_FLIGHT)
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
                self._send(framed, error_for(e))
                if not e.request_id:
                    return
                continue
            await limiter.acquire()
            if isinstance(req, _FAST_REQUESTS):
                self._start(framed, req, limiter)
            else:
                nursery.start_soon(self._run_request, framed, req, limiter)

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
            self._send(framed, resp)

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
        self._send(framed, resp)
        framed.flush()

    # -- requests -----------------------------------------------------------
    def _dispatch(self, req: Any, reply: Callable[[Any], None],
                  fail: Callable[[BaseException], None]) -> None:
        """Start a Get/Put/Delete/Cas/Batch; `reply` or `fail` is called exactly once."""
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
            case _:
                raise InvalidRequest(f"{type(req).__name__} is not a client request")

    def _deadline(self) -> float:
        return trio.current_time() + self.cfg.limits.request_timeout

    def _driver(self, partition: int) -> Any:
        if not 0 <= partition < len(self.node.drivers):
            raise InvalidRequest(
                f"partition {partition} does not exist (this cluster has "
                f"{len(self.node.drivers)})"
            )
        return self.node.drivers[partition]

    def _partition_of(self, key: bytes) -> int:
        return partition_for(key, self.cfg.partitions)

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

    def _batch(self, req: Batch, reply: Callable[[Any], None],
               fail: Callable[[BaseException], None]) -> None:
        ops = []
        for op in req.ops:
            if self._partition_of(op.key) != req.partition:
                raise InvalidRequest(
                    f"batch for partition {req.partition} has key {op.key[:32]!r} of partition "
                    f"{self._partition_of(op.key)}: a batch is atomic within one partition only"
                )
            ops.append(PutCommand(op.key, op.value or b"") if op.kind == OpKind.PUT
                       else DeleteCommand(op.key))
        cmd = BatchCommand(tuple(ops))
        self._write(req, ops[0].key if ops else b"", cmd, reply, fail, partition=req.partition)

    def _status(self, req: Status | RebuildFence) -> StatusOk:
        nodes = tuple(NodeInfo(p.id, p.client_addr, p.peer_addr) for p in self.cfg.peers)
        parts = []
        for d in self.node.drivers:
            st = d.status()
            progress = tuple(ReplicaProgress(n, pr.match) for n, pr in sorted(st.progress.items()))
            parts.append(PartitionStatus(d.partition, st.leader, st.term, st.commit,
                                         d.applied_index, st.role, progress))
        return StatusOk(req.request_id, self.cfg.node_id, self.cfg.cluster_id, nodes,
                        tuple(parts), __version__)

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
    if result.code in _TOO_LARGE_CODES:
        raise TooLarge(result.message)
    raise InvalidRequest(result.message or ResultCode(result.code).name)
