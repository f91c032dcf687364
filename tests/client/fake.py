"""A fake PrkDB cluster for SDK tests: the real wire protocol, a dict for a store.

Each `FakeNode` accepts client connections (over memory streams from
`FakeCluster.stream_factory`, or real TCP via `serve_tcp`), checks the Hello
with the real `check_hello`, and serves every request in its own task so
responses can leave out of order. The "replicas" share one store, so routing
is visible only in `FakeCluster.received` (who got what) and in the
NOT_LEADER answers a node gives for partitions it does not lead (according
to its own `view`, which tests may make stale).

Watches: every change appends an `Event` to `FakeCluster.events` (one list
for all partitions; revisions are the cluster-wide counter, increasing in
every partition as a real partition's are); a `Watch` is served by a task
that sends the held events after its cursor, then new ones as they are
applied, and a progress notice every second while idle. `oldest` per
partition makes older cursors COMPACTED; `end_watches` ends open watches with
an error (WATCH_OVERFLOW, say); `drop_connections` breaks a node's client
connections while it stays up.

Faults are injected with `FakeCluster.hook`: an async function called for
every request with ``(node, msg)`` that returns None (serve normally) or an
action: an `Error` to send, `DROP_BEFORE` / `DROP_AFTER` (close the
connection without answering, before / after applying), `HANG` (never
answer), or `Delay(seconds)` (answer later).

Writes are de-duplicated per (partition, client_id) like
prkdb.state.sessions: same seq -> the cached result, lower seq -> an error.

Protocol 3 is served too: `Scan` pages (``scan_page_cap`` keys at most, like
the server's ``limits.max_scan_page``), `Txn` (compares, then one branch),
and leases: ids are ``revision << 16 | partition``, deadlines run on trio's
clock (a kept lease with MockClock is deterministic) and lapsed leases are
expired, deleting their keys, when the next request arrives. Keys map to
partitions with ``key_rule`` (hash tags by default).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import trio

from prkdb.client import PrkDbClient
from prkdb.client.attempt import ConnectFailed
from prkdb.client.core import Send, drive_blocking
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
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Error,
    Event,
    EventKind,
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
    NodeInfo,
    OpKind,
    OpResult,
    PartitionStatus,
    Put,
    ReadConsistency,
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
    Watch,
    WatchCancel,
    WatchEvents,
    WireMessage,
    WriteOk,
    check_hello,
    lease_partition,
)

DROP_BEFORE = "drop_before"
DROP_AFTER = "drop_after"
HANG = "hang"


@dataclass(frozen=True)
class Delay:
    seconds: float


class Record(NamedTuple):
    """One key of the fake store (``record[0]`` is the value)."""

    value: bytes
    version: int
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass
class FakeLease:
    ttl_ms: int
    deadline: float  # trio time
    keys: set[bytes] = field(default_factory=set)


WRITES = (Put, Delete, Cas, Batch, Txn, LeaseGrant, LeaseRevoke)


@dataclass(eq=False)
class FakeWatcher:
    """An open watch stream (`FakeCluster.watchers`)."""

    node_id: int
    request: Watch
    sent: int = 0  # events sent so far
    end: Error | None = None  # set by end_watches: the stream sends it and stops


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
    #: Frozen (SIGSTOP): connections stay open, but its watch streams go silent.
    frozen: bool = False

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
                watches: dict[int, trio.CancelScope] = {}
                while True:
                    msg = await _next(stream, decoder)
                    if msg is None:
                        break
                    if isinstance(msg, WatchCancel):
                        self.cluster.received.append((self.node_id, msg))
                        scope = watches.pop(msg.request_id, None)
                        if scope is not None:
                            scope.cancel()
                        continue
                    if isinstance(msg, Watch):
                        watches[msg.request_id] = trio.CancelScope()
                        nursery.start_soon(self._watch, msg, send, watches[msg.request_id],
                                           nursery.cancel_scope)
                        continue
                    nursery.start_soon(self._handle, msg, send, nursery.cancel_scope)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client (or a test) closed the connection
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

    async def _watch(self, msg: Watch, send: Any, scope: trio.CancelScope,
                     conn_scope: trio.CancelScope) -> None:
        """Serve one Watch stream until cancelled, ended, or the connection closes."""
        cluster = self.cluster
        cluster.received.append((self.node_id, msg))
        action = await cluster.hook(self, msg) if cluster.hook is not None else None
        if action == DROP_BEFORE:
            conn_scope.cancel()
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError), scope:
            if isinstance(action, Error):
                await send(Error(msg.request_id, action.code, action.message, action.details))
                return
            oldest = cluster.oldest.get(msg.partition, 0)
            if msg.after < oldest:
                await send(Error(msg.request_id, ErrorCode.COMPACTED, "compacted",
                                 {"oldest": oldest, "partition": msg.partition}))
                return
            watcher = FakeWatcher(self.node_id, msg)
            cluster.watchers.append(watcher)
            try:
                after = msg.after
                while True:
                    if self.frozen:
                        await trio.sleep_forever()
                    if watcher.end is not None:
                        await send(dataclasses.replace(watcher.end, request_id=msg.request_id))
                        return
                    progress = max(after, cluster.revision)
                    events = tuple(
                        e if msg.prev_values else dataclasses.replace(e, prev_value=None)
                        for e in cluster.events
                        if after < e.revision <= progress
                        and cluster.partition_of(e.key) == msg.partition
                        and e.key >= msg.start and (msg.end is None or e.key < msg.end))
                    await send(WatchEvents(msg.request_id, msg.partition, events, progress))
                    watcher.sent += len(events)
                    after = progress
                    with trio.move_on_after(cluster.progress_every):
                        await cluster.changed.wait()
            finally:
                cluster.watchers.remove(watcher)

    def _not_leader(self, msg: Any, partition: int) -> Error | None:
        leader = self.leader_view(partition)
        if leader == self.node_id:
            return None
        details: dict[str, Any] = {"partition": partition, "leader_id": leader}
        if leader:
            details["leader_address"] = self.cluster.nodes[leader].address
        return Error(msg.request_id, ErrorCode.NOT_LEADER, "not the leader", details)

    def execute(self, msg: Any) -> WireMessage:
        """Answer `msg` at once (no hook, no connection): for plans driven without trio."""
        self.cluster.received.append((self.node_id, msg))
        return self._execute(msg)

    def _execute(self, msg: Any) -> WireMessage:
        cluster = self.cluster
        cluster.expire_leases()
        match msg:
            case Status():
                return cluster.status_from(self, msg.request_id)
            case Get():
                if msg.partition != cluster.partition_of(msg.key):
                    return Error(msg.request_id, ErrorCode.BAD_REQUEST, "wrong partition")
                if msg.consistency == ReadConsistency.LINEARIZABLE:
                    err = self._not_leader(msg, msg.partition)
                    if err is not None:
                        return err
                rec = cluster.store.get(msg.key)
                if rec is None:
                    return GetOk(msg.request_id, None, 0, 0, cluster.revision)
                return GetOk(msg.request_id, rec.value, rec.version, rec.mod_revision,
                             cluster.revision)
            case Scan():
                if msg.consistency == ReadConsistency.LINEARIZABLE:
                    err = self._not_leader(msg, msg.partition)
                    if err is not None:
                        return err
                return cluster.scan(msg)
            case Put() | Delete() | Cas() | Batch() | Txn() | LeaseGrant() | LeaseRevoke():
                match msg:
                    case Batch() | Txn() | LeaseGrant():
                        partition = msg.partition
                    case LeaseRevoke():
                        partition = lease_partition(msg.lease_id)
                    case _:
                        partition = cluster.partition_of(msg.key)
                err = self._not_leader(msg, partition)
                if err is not None:
                    return err
                return cluster.apply_write(msg, partition)
            case LeaseKeepAlive():
                err = self._not_leader(msg, msg.partition)
                if err is not None:
                    return err
                now = cluster.clock()
                remaining = []
                for lease_id in msg.lease_ids:
                    lease = cluster.leases.get(lease_id)
                    if lease is None or lease_partition(lease_id) != msg.partition:
                        remaining.append(0)
                        continue
                    lease.deadline = now + lease.ttl_ms / 1000
                    remaining.append(lease.ttl_ms)
                cluster.keep_alives.append(msg.lease_ids)
                return LeaseKeepAliveOk(msg.request_id, tuple(remaining))
            case LeaseTimeToLive():
                err = self._not_leader(msg, lease_partition(msg.lease_id))
                if err is not None:
                    return err
                lease = cluster.leases.get(msg.lease_id)
                if lease is None:
                    return Error(msg.request_id, ErrorCode.LEASE_NOT_FOUND, "no such lease",
                                 {"lease_id": msg.lease_id})
                left = max(0, round((lease.deadline - cluster.clock()) * 1000))
                keys = tuple(sorted(lease.keys)) if msg.with_keys else ()
                return LeaseOk(msg.request_id, msg.lease_id, lease.ttl_ms, left, keys)
            case LeaseList():
                err = self._not_leader(msg, msg.partition)
                if err is not None:
                    return err
                now = cluster.clock()
                return LeaseListOk(msg.request_id, tuple(
                    LeaseInfo(i, lease.ttl_ms, max(0, round((lease.deadline - now) * 1000)))
                    for i, lease in sorted(cluster.leases.items())
                    if lease_partition(i) == msg.partition))
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
        nursery: trio.Nursery | None,
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
        self.store: dict[bytes, Record] = {}
        self.key_rule = "hashtag"
        #: Keys a Scan page holds at most (the server's limits.max_scan_page).
        self.scan_page_cap = 1000
        #: A granted TTL is at least this (the server's limits.min_lease_ttl_ms).
        self.min_lease_ttl_ms = 2000
        self.leases: dict[int, FakeLease] = {}
        #: What lease deadlines are measured with (tests without trio pass their own).
        self.clock: Any = trio.current_time
        #: lease ids of every LeaseKeepAlive served, in order.
        self.keep_alives: list[tuple[int, ...]] = []
        self.revision = 0
        self.sessions: dict[tuple[int, int], tuple[int, Any]] = {}
        #: (node_id, request) for every request any node received, in order.
        self.received: list[tuple[int, Any]] = []
        #: (client_id, seq) of every write actually applied (not replayed).
        self.applied: list[tuple[int, int]] = []
        self.replayed: list[tuple[int, int]] = []
        self.snapshots: list[tuple[int, int | None]] = []
        #: partition -> the "snapshot file" BackupBegin/BackupRead serve.
        self.backup_files: dict[int, bytes] = {}
        self.hook: Any = None
        #: Every change, in order (a partition's are those of its keys).
        self.events: list[Event] = []
        #: partition -> the oldest cursor still served (older: COMPACTED).
        self.oldest: dict[int, int] = {}
        self.watchers: list[FakeWatcher] = []
        #: Seconds between progress notices of an idle watch.
        self.progress_every = 1.0
        self.changed = trio.Event()  # set (and replaced) after every change

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def end_watches(self, code: ErrorCode = ErrorCode.WATCH_OVERFLOW,
                    node_id: int | None = None) -> int:
        """End open watches (of one node, or all) with an Error of `code`; how many."""
        ended = 0
        for watcher in self.watchers:
            if node_id is None or watcher.node_id == node_id:
                watcher.end = Error(0, code, code.name.lower(), {})
                ended += 1
        self._changed()
        return ended

    async def drop_connections(self, node_id: int) -> None:
        """Break a node's open client connections (it stays up and accepts new ones)."""
        for stream in list(self.nodes[node_id].open_streams):
            await trio.aclose_forcefully(stream)

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
        assert self.nursery is not None
        self.nursery.start_soon(node.serve, server_side)
        return client_side

    async def crash(self, node_id: int) -> None:
        """Take a node down: refuse new connections and break open ones."""
        node = self.nodes[node_id]
        node.up = False
        for stream in list(node.open_streams):
            await trio.aclose_forcefully(stream)

    def partition_of(self, key: bytes) -> int:
        return partition_for(key, self.partitions, self.key_rule)  # type: ignore[arg-type]

    def writes_received(self, node_id: int | None = None) -> list[tuple[int, Any]]:
        return [
            (n, m)
            for n, m in self.received
            if isinstance(m, WRITES) and (node_id is None or n == node_id)
        ]

    def received_of(self, kind: type) -> list[Any]:
        """Every request of type `kind` any node received, in order."""
        return [m for _, m in self.received if isinstance(m, kind)]

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
            "",
            self.key_rule,
        )

    def apply_write(self, msg: Any, partition: int) -> WireMessage:
        session = (partition, msg.client_id)
        last = self.sessions.get(session)
        if last is not None:
            last_seq, result = last
            if msg.seq == last_seq:
                self.replayed.append((msg.client_id, msg.seq))
                return dataclasses.replace(result, request_id=msg.request_id)
            if msg.seq < last_seq:
                return Error(msg.request_id, ErrorCode.BAD_REQUEST, "stale sequence")
        if isinstance(msg, Txn):
            wrong = sorted({p for p in map(self.partition_of, _txn_keys(msg)) if p != partition})
            if wrong:
                return Error(msg.request_id, ErrorCode.BAD_REQUEST,
                             f"txn keys in partitions {wrong}, not {partition}")
        result: Any
        if isinstance(msg, LeaseRevoke) and msg.lease_id not in self.leases:
            result = Error(msg.request_id, ErrorCode.LEASE_NOT_FOUND, "no such lease",
                           {"lease_id": msg.lease_id})
        elif isinstance(msg, Txn) and any(
            op.lease and op.lease not in self.leases for op in (*msg.success, *msg.failure)
        ):
            result = Error(msg.request_id, ErrorCode.LEASE_NOT_FOUND, "no such lease")
        else:
            self.revision += 1
            result = self._apply(msg, partition)
        self.sessions[session] = (msg.seq, result)
        self.applied.append((msg.client_id, msg.seq))
        return result

    def _apply(self, msg: Any, partition: int) -> Any:
        rev = self.revision
        rid = msg.request_id
        match msg:
            case Put():
                return self._put(rid, msg.key, msg.value, rev)
            case Delete():
                return self._delete(rid, msg.key, rev)
            case Cas():
                rec = self.store.get(msg.key)
                version = rec.version if rec else 0
                value = rec.value if rec else None
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
            case Txn():
                succeeded = all(self._holds(c) for c in msg.compares)
                results = []
                for op in msg.success if succeeded else msg.failure:
                    if op.kind == TxnOpKind.PUT:
                        w = self._put(rid, op.key, op.value, rev, op.lease)
                        results.append(TxnOpResult(w.version, w.prev_version))
                    elif op.kind == TxnOpKind.DELETE:
                        w = self._delete(rid, op.key, rev)
                        results.append(TxnOpResult(w.version, w.prev_version))
                    else:
                        rec = self.store.get(op.key)
                        results.append(TxnOpResult(0, 0) if rec is None else TxnOpResult(
                            rec.version, rec.version, rec.value, rec.mod_revision,
                            rec.create_revision, rec.lease))
                return TxnOk(rid, succeeded, rev, tuple(results))
            case LeaseGrant():
                ttl_ms = max(msg.ttl_ms, self.min_lease_ttl_ms)
                lease_id = rev << 16 | partition
                self.leases[lease_id] = FakeLease(ttl_ms, self.clock() + ttl_ms / 1000)
                return LeaseOk(rid, lease_id, ttl_ms, ttl_ms)
            case LeaseRevoke():
                return WriteOk(rid, True, rev, self._drop_lease(msg.lease_id), 0)
        raise AssertionError(msg)

    def _holds(self, cmp: Compare) -> bool:
        rec = self.store.get(cmp.key)
        if cmp.target == CompareTarget.VALUE:
            if rec is None:
                return False
            have: Any = rec.value
            want: Any = cmp.value
        else:
            have = 0 if rec is None else {
                CompareTarget.VERSION: rec.version,
                CompareTarget.CREATE_REVISION: rec.create_revision,
                CompareTarget.MOD_REVISION: rec.mod_revision,
                CompareTarget.LEASE: rec.lease,
            }[cmp.target]
            want = cmp.number
        return {
            CompareOp.EQUAL: have == want,
            CompareOp.NOT_EQUAL: have != want,
            CompareOp.LESS: have < want,
            CompareOp.GREATER: have > want,
        }[cmp.op]

    def scan(self, msg: Scan) -> WireMessage:
        keys = sorted(k for k in self.store if self.partition_of(k) == msg.partition)
        lo = bisect.bisect_left(keys, msg.start)
        hi = len(keys) if msg.end is None else max(lo, bisect.bisect_left(keys, msg.end))
        count = hi - lo
        if msg.count_only:
            return ScanOk(msg.request_id, (), count, False, self.revision)
        limit = min(msg.limit or self.scan_page_cap, self.scan_page_cap)
        page = keys[lo : min(hi, lo + limit)]
        kvs = []
        for key in page:
            rec = self.store[key]
            kvs.append(KeyValue(key, b"" if msg.keys_only else rec.value, rec.version,
                                rec.mod_revision, rec.create_revision, rec.lease))
        return ScanOk(msg.request_id, tuple(kvs), count, lo + len(page) < hi, self.revision)

    def expire_leases(self) -> None:
        """Drop every lease whose deadline passed (and its keys), as a leader's tick would."""
        if not self.leases:
            return
        now = self.clock()
        for lease_id in [i for i, lease in self.leases.items() if lease.deadline <= now]:
            self.revision += 1
            self._drop_lease(lease_id, EventKind.EXPIRE)

    def _drop_lease(self, lease_id: int, kind: EventKind = EventKind.DELETE) -> int:
        lease = self.leases.pop(lease_id)
        for key in sorted(lease.keys):
            rec = self.store.pop(key, None)
            if rec is not None:
                self.events.append(Event(kind, key, self.revision, None, rec.value))
        self._changed()
        return len(lease.keys)

    def _put(self, rid: int, key: bytes, value: bytes, rev: int, lease: int = 0) -> WriteOk:
        rec = self.store.get(key)
        prev = rec.version if rec else 0
        if rec is not None and rec.lease and rec.lease in self.leases:
            self.leases[rec.lease].keys.discard(key)
        if lease:
            self.leases[lease].keys.add(key)
        self.store[key] = Record(value, prev + 1, rev, rec.create_revision if rec else rev, lease)
        self.events.append(Event(EventKind.PUT, key, rev, value, rec.value if rec else None))
        self._changed()
        return WriteOk(rid, True, rev, prev + 1, prev)

    def _delete(self, rid: int, key: bytes, rev: int) -> WriteOk:
        rec = self.store.pop(key, None)
        if rec is not None and rec.lease and rec.lease in self.leases:
            self.leases[rec.lease].keys.discard(key)
        if rec is not None:
            self.events.append(Event(EventKind.DELETE, key, rev, None, rec.value))
            self._changed()
        return WriteOk(rid, True, rev, 0, rec.version if rec else 0)


def _txn_keys(msg: Txn) -> list[bytes]:
    return [c.key for c in msg.compares] + [op.key for op in (*msg.success, *msg.failure)]


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


class ManualClock:
    """Time for plans driven without trio: `sleep` moves it on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_plan(cluster: FakeCluster, plan: Any, clock: ManualClock | None = None) -> Any:
    """Drive a `ClientCore` plan against `cluster` synchronously (each Send answered at once)."""

    def send(action: Send) -> WireMessage:
        node = cluster.node_at(action.address)
        if node is None or not node.up:
            raise ConnectFailed(action.address, "down")
        built = action.build(1)
        if isinstance(built, bytes):
            decoder = FrameDecoder()
            decoder.receive_data(built)
            built = decoder.next_frame()
        action.sent = True
        return node.execute(from_wire(built))

    return drive_blocking(plan, send, (clock or ManualClock()).sleep)


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
        if partition_for(key, partitions, "hashtag") == partition:
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
