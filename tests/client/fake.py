"""A fake PrkDB cluster for SDK tests: the real wire protocol, a dict for a store.

Each `FakeNode` accepts client connections (over memory streams from
`FakeCluster.stream_factory`, or real TCP via `serve_tcp`), checks the Hello
with the real `check_hello`, and serves every request in its own task so
responses can leave out of order. The "replicas" share one store, so routing
is visible only in `FakeCluster.received` (who got what) and in the
NOT_LEADER answers a node gives for partitions it does not lead (according
to its own `view`, which tests may make stale).

Faults are injected with `FakeCluster.hook`: an async function called for
every request with ``(node, msg)`` that returns None (serve normally) or an
action: an `Error` to send, `DROP_BEFORE` / `DROP_AFTER` (close the
connection without answering, before / after applying), `HANG` (never
answer), or `Delay(seconds)` (answer later).

Writes are de-duplicated per (partition, client_id) like
prkdb.state.sessions: same seq -> the cached result, lower seq -> an error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import trio

from prkdb.client import PrkDbClient
from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.raft.types import Role
from prkdb.wire import NEED_DATA, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import (
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
    Snapshot,
    Status,
    StatusOk,
    TransferLeader,
    WireMessage,
    WriteOk,
    check_hello,
)

DROP_BEFORE = "drop_before"
DROP_AFTER = "drop_after"
HANG = "hang"


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass
class FakeNode:
    node_id: int
    address: str
    cluster: FakeCluster
    up: bool = True
    #: partition -> leader as this node believes; None = the cluster's truth.
    view: dict[int, int] | None = None
    connections: int = 0
    open_streams: list[trio.abc.Stream] = field(default_factory=list)

    def leader_view(self, partition: int) -> int:
        if self.view is not None and partition in self.view:
            return self.view[partition]
        return self.cluster.leaders[partition]

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it closes."""
        self.connections += 1
        self.open_streams.append(stream)
        decoder = FrameDecoder()
        send_lock = trio.Lock()

        async def send(msg: WireMessage) -> None:
            async with send_lock:
                await stream.send_all(encode_message(msg))

        try:
            async with trio.open_nursery() as nursery:
                hello = await _next(stream, decoder)
                assert isinstance(hello, Hello), hello
                err = check_hello(hello, cluster_id=self.cluster.cluster_id, role="client")
                if err is not None:
                    await send(err)
                    return
                await send(HelloOk(self.node_id, self.cluster.cluster_id))
                while True:
                    msg = await _next(stream, decoder)
                    if msg is None:
                        break
                    nursery.start_soon(self._handle, msg, send, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.open_streams.remove(stream)
            await trio.aclose_forcefully(stream)

    async def _handle(self, msg: Any, send: Any, conn_scope: trio.CancelScope) -> None:
        cluster = self.cluster
        cluster.received.append((self.node_id, msg))
        action = await cluster.hook(self, msg) if cluster.hook is not None else None
        if isinstance(action, Delay):
            await trio.sleep(action.seconds)
            action = None
        if action == HANG:
            await trio.sleep_forever()
        if action == DROP_BEFORE:
            conn_scope.cancel()
            return
        if isinstance(action, Error):
            await send(Error(msg.request_id, action.code, action.message, action.details))
            return
        reply = self._execute(msg)
        if action == DROP_AFTER:
            conn_scope.cancel()
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await send(reply)

    def _not_leader(self, msg: Any, partition: int) -> Error | None:
        leader = self.leader_view(partition)
        if leader == self.node_id:
            return None
        details: dict[str, Any] = {"partition": partition, "leader_id": leader}
        if leader:
            details["leader_address"] = self.cluster.nodes[leader].address
        return Error(msg.request_id, ErrorCode.NOT_LEADER, "not the leader", details)

    def _execute(self, msg: Any) -> WireMessage:
        cluster = self.cluster
        match msg:
            case Status():
                return cluster.status_from(self, msg.request_id)
            case Get():
                if msg.partition != partition_for(msg.key, cluster.partitions):
                    return Error(msg.request_id, ErrorCode.BAD_REQUEST, "wrong partition")
                if msg.consistency == ReadConsistency.LINEARIZABLE:
                    err = self._not_leader(msg, msg.partition)
                    if err is not None:
                        return err
                value, version, mod = cluster.store.get(msg.key, (None, 0, 0))
                return GetOk(msg.request_id, value, version, mod, cluster.revision)
            case Put() | Delete() | Cas() | Batch():
                partition = (
                    msg.partition
                    if isinstance(msg, Batch)
                    else partition_for(msg.key, cluster.partitions)
                )
                err = self._not_leader(msg, partition)
                if err is not None:
                    return err
                return cluster.apply_write(msg, partition)
            case TransferLeader():
                err = self._not_leader(msg, msg.partition)
                if err is not None:
                    return err
                target = msg.to_node or next(n for n in cluster.nodes if n != self.node_id)
                cluster.leaders[msg.partition] = target
                return AdminOk(msg.request_id, {"new_leader": target})
            case Snapshot():
                cluster.snapshots.append((self.node_id, msg.partition))
                return AdminOk(msg.request_id, {"node": self.node_id})
            case BackupBegin():
                err = self._not_leader(msg, msg.partition)
                if err is not None:
                    return err
                data = cluster.backup_files[msg.partition]
                return BackupBeginOk(msg.request_id, msg.partition, self.node_id, 10, 1,
                                     len(data), hashlib.sha256(data).digest())
            case BackupRead():
                data = cluster.backup_files[msg.partition]
                chunk = data[msg.offset : msg.offset + msg.length]
                return BackupChunk(msg.request_id, msg.offset, chunk, len(data))
        return Error(msg.request_id, ErrorCode.BAD_REQUEST, f"unexpected {type(msg).__name__}")


class FakeCluster:
    """N fake nodes sharing one store; see the module docstring."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        nodes: int = 3,
        partitions: int = 4,
        cluster_id: str = "prkdb",
    ) -> None:
        self.nursery = nursery
        self.cluster_id = cluster_id
        self.partitions = partitions
        self.nodes = {i: FakeNode(i, f"node{i}.test:{7000 + i}", self) for i in range(1, nodes + 1)}
        # Leaders spread round-robin: partition p led by node p % n + 1.
        self.leaders = {p: p % nodes + 1 for p in range(partitions)}
        self.store: dict[bytes, tuple[bytes, int, int]] = {}
        self.revision = 0
        self.sessions: dict[tuple[int, int], tuple[int, WriteOk]] = {}
        #: (node_id, request) for every request any node received, in order.
        self.received: list[tuple[int, Any]] = []
        #: (client_id, seq) of every write actually applied (not replayed).
        self.applied: list[tuple[int, int]] = []
        self.replayed: list[tuple[int, int]] = []
        self.snapshots: list[tuple[int, int | None]] = []
        #: partition -> the "snapshot file" BackupBegin/BackupRead serve.
        self.backup_files: dict[int, bytes] = {}
        self.hook: Any = None

    @property
    def seeds(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def node_at(self, address: str) -> FakeNode | None:
        return next((n for n in self.nodes.values() if n.address == address), None)

    async def stream_factory(self, host: str, port: int) -> trio.abc.Stream:
        """Dial a fake node over an in-memory stream (deterministic with MockClock)."""
        await trio.lowlevel.checkpoint()
        node = self.node_at(f"{host}:{port}")
        if node is None or not node.up:
            raise OSError(errno.ECONNREFUSED, f"connection refused: {host}:{port}")
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(node.serve, server_side)
        return client_side

    async def crash(self, node_id: int) -> None:
        """Take a node down: refuse new connections and break open ones."""
        node = self.nodes[node_id]
        node.up = False
        for stream in list(node.open_streams):
            await trio.aclose_forcefully(stream)

    def writes_received(self, node_id: int | None = None) -> list[tuple[int, Any]]:
        return [
            (n, m)
            for n, m in self.received
            if isinstance(m, Put | Delete | Cas | Batch) and (node_id is None or n == node_id)
        ]

    def status_from(self, node: FakeNode, request_id: int) -> StatusOk:
        return StatusOk(
            request_id,
            node.node_id,
            self.cluster_id,
            tuple(
                NodeInfo(n.node_id, n.address, f"peer{n.node_id}.test:9000")
                for n in self.nodes.values()
            ),
            tuple(
                PartitionStatus(
                    p,
                    node.leader_view(p),
                    1,
                    self.revision,
                    self.revision,
                    Role.LEADER if node.leader_view(p) == node.node_id else Role.FOLLOWER,
                )
                for p in range(self.partitions)
            ),
        )

    def apply_write(self, msg: Any, partition: int) -> WireMessage:
        session = (partition, msg.client_id)
        last = self.sessions.get(session)
        if last is not None:
            last_seq, result = last
            if msg.seq == last_seq:
                self.replayed.append((msg.client_id, msg.seq))
                return WriteOk(
                    msg.request_id,
                    result.succeeded,
                    result.revision,
                    result.version,
                    result.prev_version,
                    result.ops,
                )
            if msg.seq < last_seq:
                return Error(msg.request_id, ErrorCode.BAD_REQUEST, "stale sequence")
        self.revision += 1
        result = self._apply(msg)
        self.sessions[session] = (msg.seq, result)
        self.applied.append((msg.client_id, msg.seq))
        return result

    def _apply(self, msg: Any) -> WriteOk:
        rev = self.revision
        rid = msg.request_id
        match msg:
            case Put():
                return self._put(rid, msg.key, msg.value, rev)
            case Delete():
                return self._delete(rid, msg.key, rev)
            case Cas():
                _, version, _ = self.store.get(msg.key, (None, 0, 0))
                value = self.store.get(msg.key, (None, 0, 0))[0]
                ok = (msg.expected_version is None or msg.expected_version == version) and (
                    msg.expected_value is None or msg.expected_value == value
                )
                if not ok:
                    return WriteOk(rid, False, rev, version, version)
                if msg.new_value is None:
                    return self._delete(rid, msg.key, rev)
                return self._put(rid, msg.key, msg.new_value, rev)
            case Batch():
                ops = []
                for op in msg.ops:
                    if op.kind == OpKind.PUT:
                        r = self._put(rid, op.key, op.value, rev)
                    else:
                        r = self._delete(rid, op.key, rev)
                    ops.append(OpResult(r.version, r.prev_version))
                return WriteOk(rid, True, rev, 0, 0, tuple(ops))
        raise AssertionError(msg)

    def _put(self, rid: int, key: bytes, value: bytes, rev: int) -> WriteOk:
        _, prev, _ = self.store.get(key, (None, 0, 0))
        self.store[key] = (value, prev + 1, rev)
        return WriteOk(rid, True, rev, prev + 1, prev)

    def _delete(self, rid: int, key: bytes, rev: int) -> WriteOk:
        _, prev, _ = self.store.pop(key, (None, 0, 0))
        return WriteOk(rid, True, rev, 0, prev)


async def _next(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    while True:
        item = decoder.next_frame()
        if item is NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            decoder.receive_data(data)
            continue
        if not isinstance(item, list):
            return None  # CLOSED
        return from_wire(item)


def error(code: ErrorCode, message: str = "", **details: Any) -> Error:
    """An Error action for `FakeCluster.hook` (the request id is filled in)."""
    return Error(0, code, message or code.name.lower(), details)


async def connect(cluster: FakeCluster, **kwargs: Any) -> PrkDbClient:
    """A client on the fake cluster's memory streams, seeded for repeatable jitter and ids."""
    kwargs.setdefault("rng", random.Random(7))
    kwargs.setdefault("stream_factory", cluster.stream_factory)
    seeds = kwargs.pop("seeds", cluster.seeds[:1])
    return await PrkDbClient.connect(seeds, **kwargs)


def key_in(partition: int, partitions: int, prefix: str = "k") -> bytes:
    """The first key ``{prefix}{i}`` that maps to `partition`."""
    for i in range(10_000):
        key = f"{prefix}{i}".encode()
        if partition_for(key, partitions) == partition:
            return key
    raise AssertionError(f"no key for partition {partition}")


class WrappedStream(trio.abc.Stream):
    """A stream that passes everything to `inner`: subclasses watch `send_all`."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
