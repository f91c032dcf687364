"""`PrkDbClient`: the trio SDK (routing, retries, exactly-once writes).

Theory of operation
-------------------
Every public call becomes an `_Op`: which partition (or node) it is for,
whether it is a write, and how to build its message for a request id. One
retry loop, `_execute`, runs every op within a per-call deadline:

1. pick a target (`_route`): the partition's cached leader for writes,
   LINEARIZABLE reads and admin calls; a non-leader round-robin for FOLLOWER
   reads (leader as fallback); any node for STALE reads and Status. An
   unknown leader triggers a topology refresh (a Status to another node);
2. send on that node's shared connection and wait for the answer, at most
   ``attempt_timeout`` (the connection's timer enforces it);
3. on NOT_LEADER follow the hint at once (or refresh when there is none);
   on UNAVAILABLE / TIMEOUT / OUTCOME_UNKNOWN / a lost connection back off
   (exponential, jittered, capped by the deadline) and try again; any other
   error is raised at once.

Writes carry ``(client_id, seq)`` from a session slot (prkdb.client.sessions)
held for the whole loop, so every retry of one logical write is the same
request to the state machine, which applies it once. A write attempt is
*ambiguous* when its bytes may have reached a server and no definite answer
came back (connection lost after sending, OUTCOME_UNKNOWN, or the deadline
hit while waiting). Retrying is the cure; only if the deadline ends the loop
after an ambiguous attempt does the caller get `OutcomeUnknown`. Otherwise a
spent deadline raises `Timeout` (an `Unavailable`) naming the partition and
the last attempts.

Cost: the common attempt (known target, live connection) does not await
anything but its answer and opens no cancel scope; only a refresh or a dial
runs under ``trio.move_on_at``. A load generator on the same cores as the
servers measures this path (scripts/bench_client_cpu.py).

All waiting uses trio time (`trio.current_time`), so tests drive it with
`MockClock`; randomness (jitter, client ids) comes from an injectable
`random.Random`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, NamedTuple, final

import trio

from prkdb.client.connection import (
    AttemptExpired,
    AttemptState,
    ConnectFailed,
    Connection,
    ConnectionLost,
    StreamFactory,
    error_from_frame,
)
from prkdb.client.routing import Topology, normalize_address, split_address
from prkdb.client.sessions import SessionPool, SessionSlot
from prkdb.errors import (
    ErrorCode,
    InvalidRequest,
    NotLeader,
    OutcomeUnknown,
    PrkdbError,
    ProtocolError,
    Timeout,
)
from prkdb.partitioning import partition_for
from prkdb.wire import encode_delete_request, encode_get_request, encode_put_request
from prkdb.wire.messages import (
    BACKUP_CHUNK_MAX,
    AdminOk,
    BackupBegin,
    BackupBeginOk,
    BackupChunk,
    BackupRead,
    Batch,
    BatchOp,
    Cas,
    Error,
    GetOk,
    OpKind,
    OpResult,
    ReadConsistency,
    Snapshot,
    Status,
    StatusOk,
    TransferLeader,
    WireMessage,
    WriteOk,
    to_wire,
)

__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "BackupFailed",
    "GetResult",
    "PrkDbClient",
    "WriteResult",
]

DEFAULT_TIMEOUT: Final = 5.0
"""Per-call deadline in seconds, retries included."""

DEFAULT_ATTEMPT_TIMEOUT: Final = 2.0
"""Seconds one node gets to answer one attempt before the SDK suspects it and
retries elsewhere (writes with the same seq). Below the server's 5 s request
timeout on purpose: a node frozen or cut off by a partition keeps its TCP
connection open, and would otherwise eat the whole deadline."""

BACKUP_CHUNK: Final = 1024 * 1024
"""Bytes asked for per `BackupRead` by `PrkDbClient.backup_partition`."""

_BACKOFF_BASE: Final = 0.02  # seconds; first retry waits 10-20 ms
_BACKOFF_CAP: Final = 1.0  # seconds; no single wait is longer
_STATUS_TRY_TIMEOUT: Final = 1.0  # seconds one node gets to answer a topology refresh
_MAX_HINT_HOPS: Final = 3  # NOT_LEADER hints followed without a pause (ping-pong guard)
_TRIED_SHOWN: Final = 6  # attempts listed in a give-up message


class BackupFailed(PrkdbError):
    """A partition's backup could not be completed (after its retries); nothing was kept."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
"""Default of `PrkDbClient.cas` ``expected_value``: the value is not compared."""


@final
@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of put/delete/cas/batch.

    Attributes:
        succeeded: False only for a cas whose condition did not hold.
        revision: log index of the entry that made the write (per partition).
        version: the key's version after the write (cas failure: its current version).
        prev_version: the key's version before (0 = it was absent).
        ops: batch only: one `OpResult` (version, prev_version) per op, in order.
    """

    succeeded: bool
    revision: int
    version: int
    prev_version: int
    ops: tuple[OpResult, ...] = ()


class GetResult(NamedTuple):
    """A key as read: unpacks as ``value, version, mod_revision, applied_index``.

    ``value is None`` (and version 0) means the key is absent. ``applied_index``
    is the partition's applied index on the node that answered (how fresh a
    STALE read is, comparable with `WriteResult.revision`).
    """

    value: bytes | None
    version: int
    mod_revision: int
    applied_index: int


@final
@dataclass(slots=True)
class _Op:
    """One logical request and how to route it."""

    # For messages ("put key=b'k'"); a function because most calls never
    # need the text, and formatting it would cost more than the call itself.
    describe: Callable[[], str]
    build: Callable[[int], list[Any]]  # request id -> the wire array (`to_wire` form)
    partition: int | None = None  # routes by partition (leader or replicas)
    consistency: ReadConsistency = ReadConsistency.LINEARIZABLE
    write: bool = False  # carries a session: ambiguity -> OutcomeUnknown
    address: str | None = None  # a fixed node (Status to a node, Snapshot)
    attempt_timeout: float | None = None  # None: the client's; admin calls that may be slow

    @property
    def what(self) -> str:
        return self.describe()


# Type ids of the requests whose wire arrays `_get` / `put` / `delete` build
# directly: skipping the dataclass and the generic `to_wire` saves about a
# microsecond per request. Field order as in prkdb.wire.messages (tests/client
# decode what the client sends and compare).


def _status_array(request_id: int) -> list[Any]:
    return to_wire(Status(request_id))


def _backoff_delays(rng: random.Random) -> Generator[float, None, None]:
    """Exponential backoff with "equal jitter": each wait in [b/2, b], b doubling to the cap."""
    bound = _BACKOFF_BASE
    while True:
        yield rng.uniform(bound / 2, bound)
        bound = min(bound * 2, _BACKOFF_CAP)


def _check_key(key: object, what: str = "key") -> bytes:
    if type(key) is bytes and key:  # the common case, first and cheap
        return key
    if isinstance(key, bytearray | memoryview):
        key = bytes(key)
    if not isinstance(key, bytes):
        raise InvalidRequest(f"{what} must be bytes, got {type(key).__name__}")
    if not key:
        raise InvalidRequest(f"{what} must not be empty")
    return key


def _check_value(value: object, what: str = "value") -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise InvalidRequest(f"{what} must be bytes, got {type(value).__name__}")
    return value


def _write_result(reply: WriteOk) -> WriteResult:
    return WriteResult(
        reply.succeeded, reply.revision, reply.version, reply.prev_version, reply.ops
    )


class _Connecting:
    """What `PrkDbClient.connect` returns: ``await`` it, or ``async with`` it."""

    __slots__ = ("_client", "_open")

    def __init__(self, open_: Callable[[], Any]) -> None:
        self._open = open_
        self._client: PrkDbClient | None = None

    def __await__(self) -> Generator[Any, None, PrkDbClient]:
        return self._open().__await__()

    async def __aenter__(self) -> PrkDbClient:
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._client is not None
        await self._client.aclose()


@final
class PrkDbClient:
    """A PrkDB client for trio programs; safe to share between many tasks.

    Create it with `connect`. Every method takes ``timeout=`` (seconds, the
    whole call including retries); None means the client's default.
    """

    def __init__(
        self,
        seeds: Sequence[str],
        *,
        cluster_id: str = "prkdb",
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> None:
        """Build an unconnected client; prefer `connect`, which also loads the topology.

        Raises:
            InvalidRequest: no seeds, a malformed seed, or a non-positive timeout.
        """
        if isinstance(seeds, str):
            seeds = [seeds]
        if not seeds:
            raise InvalidRequest("at least one seed address is needed")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise InvalidRequest(f"timeout ({timeout}) must be a positive number of seconds")
        if not (attempt_timeout > 0 and math.isfinite(attempt_timeout)):
            raise InvalidRequest(f"attempt_timeout ({attempt_timeout}) must be > 0 seconds")
        self.cluster_id = cluster_id
        #: Default per-call deadline, seconds (retries included).
        self.timeout = timeout
        #: Longest wait for one answer from one node before trying elsewhere, seconds.
        self.attempt_timeout = attempt_timeout
        self._rng = rng if rng is not None else random.Random()
        self._factory: StreamFactory = stream_factory or trio.open_tcp_stream
        self.topology = Topology(normalize_address(s) for s in seeds)
        self.sessions = SessionPool(self._rng)
        # address -> live connection; replaced lazily when broken.
        self._connections: dict[str, Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._refresh_lock = trio.Lock()
        self._round_robin = 0
        self._closed = False
        #: What went wrong in the last topology refresh (for give-up messages).
        self.refresh_problems: list[str] = []
        # Made eagerly so a sequential writer always uses this one client id
        # (seq starts at 1: release() bumps it, so start the counter at 0).
        self._first_slot = self.sessions.new_slot()
        self._first_slot.next_seq = 0
        self.sessions.release(self._first_slot)

    # --- life cycle ----------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str = "prkdb",
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> _Connecting:
        """Connect to a cluster and learn its topology from any seed.

        Usage: ``client = await PrkDbClient.connect([...])`` (then
        ``await client.aclose()``), or ``async with PrkDbClient.connect([...]) as client``.

        Args:
            seeds: ``"host:port"`` addresses (``"http://host:port"`` is accepted).
            cluster_id: must match the nodes' cluster id.
            timeout: default per-call deadline in seconds; also bounds connect.
            rng: randomness for jitter and client ids (tests pass a seeded one).
            stream_factory: ``async (host, port) -> Stream``; default TCP.
            attempt_timeout: seconds one node gets per attempt (see
                `DEFAULT_ATTEMPT_TIMEOUT`).

        Raises:
            WrongCluster: a seed belongs to another cluster.
            Timeout: no seed answered a Status within `timeout`.
            InvalidRequest: bad arguments.
        """
        seed_list = [seeds] if isinstance(seeds, str) else list(seeds)

        async def open_() -> PrkDbClient:
            client = cls(
                seed_list,
                cluster_id=cluster_id,
                timeout=timeout,
                rng=rng,
                stream_factory=stream_factory,
                attempt_timeout=attempt_timeout,
            )
            try:
                await client.refresh_topology()
            except BaseException:
                await client.aclose()
                raise
            return client

        return _Connecting(open_)

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
        await trio.lowlevel.checkpoint()

    @property
    def client_id(self) -> int:
        """The first session's client id: the one every write uses when none overlap."""
        return self._first_slot.client_id

    # --- key-value API -------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:
        """The value of `key` (None if absent), linearizable: read at the leader."""
        return (await self._get(key, ReadConsistency.LINEARIZABLE, timeout)).value

    async def get_with_consistency(
        self, key: bytes, consistency: ReadConsistency, *, timeout: float | None = None
    ) -> bytes | None:
        """The value of `key` at the given consistency (FOLLOWER/STALE spread load)."""
        return (await self._get(key, consistency, timeout)).value

    async def get_entry(
        self,
        key: bytes,
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> GetResult:
        """`key` with its version, mod_revision and the answering node's applied index.

        Raises:
            InvalidRequest: bad key.
            Timeout: no replica could answer before the deadline.
        """
        reply = await self._get(key, consistency, timeout)
        return GetResult(reply.value, reply.version, reply.mod_revision, reply.applied_index)

    async def _get(
        self, key: bytes, consistency: ReadConsistency, timeout: float | None
    ) -> GetOk:
        key = _check_key(key)
        if type(consistency) is not ReadConsistency:
            consistency = ReadConsistency(consistency)
        level = int(consistency)
        partition = partition_for(
            key, self.topology.partitions or await self._partition_count(timeout)
        )
        op = _Op(
            lambda: f"get key={key[:32]!r} ({consistency.name.lower()})",
            lambda rid: encode_get_request(rid, key, level, partition),
            partition=partition,
            consistency=consistency,
        )
        reply = await self._execute(op, timeout, GetOk)
        assert isinstance(reply, GetOk)
        return reply

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> WriteResult:
        """Store `value` under `key`, exactly once.

        Raises:
            OutcomeUnknown: the deadline passed while the write's fate was unknown.
            Timeout: the deadline passed and the write surely did not happen.
            InvalidRequest / TooLarge: the write can never succeed.
        """
        key = _check_key(key)
        value = _check_value(value)
        return await self._write(
            lambda: f"put key={key[:32]!r}",
            key,
            lambda rid, s: encode_put_request(rid, key, value, s.client_id, s.next_seq),
            timeout,
        )

    async def delete(self, key: bytes, *, timeout: float | None = None) -> WriteResult:
        """Remove `key` (``prev_version`` 0 in the result: it was already absent)."""
        key = _check_key(key)
        return await self._write(
            lambda: f"delete key={key[:32]!r}",
            key,
            lambda rid, s: encode_delete_request(rid, key, s.client_id, s.next_seq),
            timeout,
        )

    async def cas(
        self,
        key: bytes,
        *,
        expected_value: bytes | _Unset | None = UNSET,
        expected_version: int | None = None,
        new_value: bytes | None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Compare-and-set: if the conditions hold, store `new_value` (None deletes).

        Args:
            expected_value: the value the key must have; None = the key must
                be absent; omitted = not compared.
            expected_version: the version the key must have (0 = absent);
                None = not compared.
            new_value: what to store if the conditions hold; None deletes.

        Returns:
            A `WriteResult`; ``succeeded`` False means a condition failed
            (``version`` is then the key's current version).

        Raises:
            InvalidRequest: no condition given, or contradictory conditions.
        """
        key = _check_key(key)
        wire_value: bytes | None
        if isinstance(expected_value, _Unset):
            wire_value = None
        elif expected_value is None:
            if expected_version not in (None, 0):
                raise InvalidRequest(
                    f"cas: expected_value=None (absent) contradicts "
                    f"expected_version={expected_version}"
                )
            wire_value, expected_version = None, 0
        else:
            wire_value = _check_value(expected_value, "expected_value")
        if expected_version is not None and (
            not isinstance(expected_version, int) or expected_version < 0
        ):
            raise InvalidRequest(
                f"cas: expected_version ({expected_version!r}) must be an int >= 0"
            )
        if wire_value is None and expected_version is None:
            raise InvalidRequest("cas needs expected_value or expected_version (else use put)")
        stored = None if new_value is None else _check_value(new_value, "new_value")
        version = expected_version
        return await self._write(
            lambda: f"cas key={key[:32]!r}",
            key,
            lambda rid, s: to_wire(
                Cas(rid, key, wire_value, version, stored, s.client_id, s.next_seq)
            ),
            timeout,
        )

    async def batch(
        self,
        ops: Iterable[tuple[Any, ...] | BatchOp],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """Apply puts and deletes atomically, in order; all keys must share a partition.

        Args:
            ops: ``("put", key, value)``, ``("delete", key)`` or `BatchOp` items.

        Returns:
            A `WriteResult` whose ``ops`` has one (version, prev_version) per op.

        Raises:
            InvalidRequest: empty batch, a malformed op, or keys in more than
                one partition (checked before anything is sent).
        """
        parsed = [_parse_batch_op(i, op) for i, op in enumerate(ops)]
        if not parsed:
            raise InvalidRequest("batch needs at least one op")
        count = await self._partition_count(timeout)
        partitions = {partition_for(op.key, count) for op in parsed}
        if len(partitions) > 1:
            raise InvalidRequest(
                f"batch keys span partitions {sorted(partitions)}; "
                "an atomic batch must stay in one partition"
            )
        (partition,) = partitions
        frozen = tuple(parsed)
        return await self._write(
            lambda: f"batch of {len(frozen)} ops",
            frozen[0].key,
            lambda rid, s: to_wire(Batch(rid, partition, frozen, s.client_id, s.next_seq)),
            timeout,
        )

    # --- admin API -----------------------------------------------------------------

    async def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        """Topology and Raft state as one node sees it (any node if `node_id` is None).

        Also refreshes the client's cached topology.
        """
        address = None
        if node_id is not None:
            address = self.topology.address_of(node_id)
            if address is None:
                await self.refresh_topology(timeout=timeout)
                address = self.topology.address_of(node_id)
            if address is None:
                raise InvalidRequest(f"status: node {node_id} is not a member")
        op = _Op(
            lambda: "status" if node_id is None else f"status of node {node_id}",
            _status_array,
            address=address,
        )
        reply = await self._execute(op, timeout, StatusOk)
        assert isinstance(reply, StatusOk)
        self.topology.apply_status(reply)
        return reply

    async def refresh_topology(self, *, timeout: float | None = None) -> None:
        """Ask any node for the members and leaders now.

        Raises:
            Timeout: no node answered before the deadline.
            WrongCluster: a node belongs to another cluster.
        """
        with trio.move_on_after(self._timeout(timeout)):
            if await self._refresh(avoid=(), version=None):
                return
        why = "; ".join(self.refresh_problems[-_TRIED_SHOWN:]) or "no answer"
        raise Timeout(
            f"no node answered a status request within {self._timeout(timeout)}s "
            f"(tried {', '.join(self.topology.candidate_addresses())}: {why})"
        )

    async def transfer_leader(
        self, partition: int, to_node: int = 0, *, timeout: float | None = None
    ) -> AdminOk:
        """Ask `partition`'s leader to hand leadership to `to_node` (0 = its pick)."""
        partition = await self._check_partition(partition, timeout)
        op = _Op(
            lambda: f"transfer leader of partition {partition} to node {to_node or 'any'}",
            lambda rid: to_wire(TransferLeader(rid, partition, to_node)),
            partition=partition,
        )
        reply = await self._execute(op, timeout, AdminOk)
        assert isinstance(reply, AdminOk)
        return reply

    async def snapshot(
        self,
        partition: int | None = None,
        *,
        node_id: int | None = None,
        timeout: float | None = None,
    ) -> AdminOk:
        """Ask a node to snapshot `partition` now (None = every partition).

        The node is `node_id` if given, else the partition's leader, else (no
        partition) the lowest-numbered known node. Snapshots are per node.
        """
        if partition is not None:
            partition = await self._check_partition(partition, timeout)
        address = None
        if node_id is None and partition is None:
            if not self.topology.nodes:
                await self.refresh_topology(timeout=timeout)
            node_id = min(self.topology.nodes)
        if node_id is not None:
            address = self.topology.address_of(node_id)
            if address is None:
                raise InvalidRequest(f"snapshot: node {node_id} is not a member")
        op = _Op(
            lambda: f"snapshot of partition {'all' if partition is None else partition}",
            lambda rid: to_wire(Snapshot(rid, partition)),
            partition=partition,
            address=address,
        )
        reply = await self._execute(op, timeout, AdminOk)
        assert isinstance(reply, AdminOk)
        return reply

    async def backup_begin(self, partition: int, *, timeout: float | None = None
                           ) -> BackupBeginOk:
        """Have `partition`'s leader pick a snapshot covering every write acknowledged so far.

        The leader confirms its leadership and waits until it applied its
        commit index as of the request (as for a linearizable read), then
        snapshots the partition and holds the file open for `backup_read`
        from the node named in the answer. The wait for the snapshot is not
        cut short per attempt: one attempt may take the whole `timeout`.
        """
        partition = await self._check_partition(partition, timeout)
        op = _Op(
            lambda: f"backup snapshot of partition {partition}",
            lambda rid: to_wire(BackupBegin(rid, partition)),
            partition=partition,
            attempt_timeout=self._timeout(timeout),
        )
        reply = await self._execute(op, timeout, BackupBeginOk)
        assert isinstance(reply, BackupBeginOk)
        return reply

    async def backup_read(self, begin: BackupBeginOk, offset: int, length: int = BACKUP_CHUNK,
                          *, timeout: float | None = None) -> BackupChunk:
        """Bytes of the snapshot file `begin` named, from the node that holds it.

        Raises:
            InvalidRequest: with ``details["backup_gone"]`` when that node no
                longer has the file (start over with `backup_begin`).
        """
        if not 1 <= length <= BACKUP_CHUNK_MAX:
            raise InvalidRequest(f"backup_read: length {length} is not in 1..{BACKUP_CHUNK_MAX}")
        address = self.topology.address_of(begin.node_id)
        if address is None:
            await self.refresh_topology(timeout=timeout)
            address = self.topology.address_of(begin.node_id)
        if address is None:
            raise InvalidRequest(f"backup_read: node {begin.node_id} is not a member")
        op = _Op(
            lambda: f"backup read of partition {begin.partition} at {offset} "
                    f"from node {begin.node_id}",
            lambda rid: to_wire(BackupRead(rid, begin.partition, begin.index, begin.term,
                                           offset, length)),
            address=address,
        )
        reply = await self._execute(op, timeout, BackupChunk)
        assert isinstance(reply, BackupChunk)
        return reply

    async def backup_partition(
        self,
        partition: int,
        out: IO[bytes],
        *,
        attempts: int = 3,
        chunk_size: int = BACKUP_CHUNK,
        timeout: float | None = None,
        begin_timeout: float | None = None,
    ) -> BackupBeginOk:
        """Copy a snapshot of `partition` taken now into `out`; what it is.

        The snapshot covers every write acknowledged before this call
        (`backup_begin`). The bytes are the node's snapshot file as-is; their
        size and SHA-256 are checked against what the node announced. If the
        node loses the file or a check fails, the partition starts over (at
        most `attempts` times), rewinding `out` to where it was, so `out`
        must be seekable (a file).

        Args:
            timeout: per read call; begin_timeout: for `backup_begin`, which
                waits for the snapshot to be written (default: `timeout`).

        Raises:
            BackupFailed: every attempt failed; the last reason is named.
            Timeout, InvalidRequest, ...: as `backup_begin` / `backup_read`.
        """
        start = out.tell()
        reason = ""
        for _ in range(attempts):
            out.seek(start)
            out.truncate()
            begin = await self.backup_begin(partition, timeout=begin_timeout or timeout)
            sha = hashlib.sha256()
            offset = 0
            try:
                while offset < begin.size:
                    want = min(chunk_size, begin.size - offset)
                    chunk = await self.backup_read(begin, offset, want, timeout=timeout)
                    if chunk.size != begin.size or chunk.offset != offset or not chunk.data:
                        raise BackupFailed(
                            f"node {begin.node_id} answered {len(chunk.data)} bytes at "
                            f"{chunk.offset} of {chunk.size} for a read of {want} at {offset} "
                            f"of {begin.size}")
                    out.write(chunk.data)
                    sha.update(chunk.data)
                    offset += len(chunk.data)
            except InvalidRequest as exc:
                if not exc.details.get("backup_gone"):
                    raise
                reason = exc.message
                continue
            except BackupFailed as exc:
                reason = exc.message
                continue
            if sha.digest() != begin.sha256:
                reason = (f"sha256 of the {begin.size} bytes read from node {begin.node_id} "
                          f"does not match the one it announced")
                continue
            return begin
        out.seek(start)
        out.truncate()
        raise BackupFailed(f"backup of partition {partition} failed {attempts} times; "
                           f"last: {reason}")

    # --- internals: routing --------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        if not timeout > 0:
            raise InvalidRequest(f"timeout ({timeout}) must be > 0 seconds")
        return timeout

    async def _partition_count(self, timeout: float | None) -> int:
        if not self.topology.partitions:
            await self.refresh_topology(timeout=timeout)
        return self.topology.partitions

    async def _check_partition(self, partition: int, timeout: float | None) -> int:
        count = await self._partition_count(timeout)
        if not isinstance(partition, int) or not 0 <= partition < count:
            raise InvalidRequest(f"partition {partition!r} is not in 0..{count - 1}")
        return partition

    async def _write(
        self,
        what: Callable[[], str],
        key: bytes,
        build: Callable[[int, SessionSlot], list[Any]],
        timeout: float | None,
    ) -> WriteResult:
        partition = partition_for(
            key, self.topology.partitions or await self._partition_count(timeout)
        )
        slot = self.sessions.acquire()
        seq = slot.next_seq  # the text is made later, maybe after release() bumped it
        try:
            op = _Op(
                lambda: f"{what()} (partition {partition}, client {slot.client_id} seq {seq})",
                lambda rid: build(rid, slot),
                partition=partition,
                write=True,
            )
            reply = await self._execute(op, timeout, WriteOk)
        finally:
            self.sessions.release(slot)
        assert isinstance(reply, WriteOk)
        return _write_result(reply)

    async def _refresh(self, avoid: Iterable[str], version: int | None) -> bool:
        """Load the topology from some node, preferring ones not in `avoid`.

        Single-flight: if another task refreshed since the caller looked
        (`version` changed), return at once. Returns False if nobody answered.

        Raises:
            WrongCluster / ProtocolError: fatal answers.
        """
        async with self._refresh_lock:
            if version is not None and self.topology.version != version:
                return True
            self._round_robin += 1
            avoided = set(avoid)
            candidates = self.topology.candidate_addresses(self._round_robin)
            ordered = [a for a in candidates if a not in avoided] + [
                a for a in candidates if a in avoided
            ]
            problems: list[str] = []
            for address in ordered:
                state = AttemptState()
                with trio.move_on_after(_STATUS_TRY_TIMEOUT) as scope:
                    try:
                        reply = await self._send(address, _status_array, state)
                    except (ConnectFailed, ConnectionLost) as exc:
                        problems.append(str(exc))
                        continue
                    if isinstance(reply, StatusOk):
                        if reply.cluster_id == self.cluster_id:
                            self.topology.apply_status(reply)
                            self.refresh_problems = problems
                            return True
                        problems.append(f"{address}: cluster {reply.cluster_id!r}")
                    elif isinstance(reply, Error):
                        exc = error_from_frame(reply)
                        if exc.code in (ErrorCode.WRONG_CLUSTER, ErrorCode.BAD_VERSION):
                            raise exc
                        problems.append(f"{address}: {exc.message}")
                if scope.cancelled_caught:
                    problems.append(f"{address}: no status answer in {_STATUS_TRY_TIMEOUT}s")
            self.refresh_problems = problems
            return False

    def _route(self, op: _Op, failed: set[str]) -> str | None:
        """The address to try next from the cached topology; None if no leader is known.

        Synchronous on purpose: the common case needs no await, so `_execute`
        only pays for a cancel scope when a refresh or a dial is needed.
        """
        topo = self.topology
        if op.address is not None:
            return op.address
        if op.partition is None:  # Status: any node, avoiding those that just failed
            self._round_robin += 1
            candidates = topo.candidate_addresses(self._round_robin)
            fresh = [a for a in candidates if a not in failed]
            return (fresh or candidates)[0]
        leader = topo.leaders.get(op.partition, 0)
        leader_addr = topo.nodes.get(leader) if leader else None
        if op.consistency != ReadConsistency.LINEARIZABLE and topo.nodes:
            self._round_robin += 1
            if op.consistency == ReadConsistency.FOLLOWER:
                # Spread over followers; the leader (if known) is the fallback.
                others = [a for a in topo.addresses_by_id() if a != leader_addr]
                pool = [a for a in others if a not in failed]
                if not pool:
                    pool = [leader_addr] if leader_addr else others
            else:
                pool = topo.sorted_addresses()
                if failed:
                    pool = [a for a in pool if a not in failed] or pool
            return pool[self._round_robin % len(pool)]
        return leader_addr

    async def _leader_after_refresh(self, op: _Op, failed: set[str]) -> str | None:
        """Refresh the topology (no leader of `op.partition` is known) and look again."""
        assert op.partition is not None
        topo = self.topology
        await self._refresh(avoid=failed, version=topo.version)
        leader = topo.leader_of(op.partition)
        return topo.address_of(leader) if leader else None

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
            conn = await Connection.open(address, host, port, self.cluster_id, self._factory)
            if self._closed:
                conn.close()
                raise InvalidRequest("the client is closed")
            self._connections[address] = conn
            return conn

    async def _send(
        self, address: str, build: Callable[[int], list[Any]], state: AttemptState
    ) -> WireMessage:
        conn = await self._connection(address)
        return await conn.request(build, state)

    # --- internals: the retry loop -------------------------------------------------

    async def _execute(
        self, op: _Op, timeout: float | None, expect: type[WireMessage]
    ) -> WireMessage:
        """Run `op` until a definite answer or the deadline (module docstring)."""
        budget = self._timeout(timeout)
        deadline = trio.current_time() + budget
        delays: Generator[float, None, None] | None = None  # made on the first retry
        tried: list[str] = []
        failed: set[str] = set()  # addresses that failed during this call
        ambiguous = False
        hops = 0
        last_error: BaseException | None = None
        while (now := trio.current_time()) < deadline:
            state = AttemptState()
            target: str | None = None
            reply: WireMessage | None = None
            expired = False  # the attempt's time ran out
            # One attempt may not take the whole budget: a frozen or cut-off node
            # keeps its TCP connection open and would never answer.
            attempt_end = min(deadline, now + (op.attempt_timeout or self.attempt_timeout))
            try:
                target = self._route(op, failed)
                conn = self._connections.get(target) if target is not None else None
                if conn is None or conn.broken:
                    # Only a refresh or a dial can block before the request is
                    # queued; the request's own wait ends at attempt_end too.
                    with trio.move_on_at(attempt_end) as scope:
                        if target is None:
                            target = await self._leader_after_refresh(op, failed)
                        if target is not None:
                            conn = await self._connection(target)
                    expired = scope.cancelled_caught
                if expired:
                    pass
                elif target is None:
                    why = "; ".join(self.refresh_problems[-3:]) or "nobody knows one"
                    tried.append(f"no leader known ({why})")
                else:
                    assert conn is not None
                    reply = await conn.request(op.build, state, attempt_end)
            except ConnectFailed as exc:
                tried.append(str(exc))
                last_error = exc
            except ConnectionLost as exc:
                tried.append(str(exc))
                last_error = exc
                ambiguous |= op.write and state.sent
            except AttemptExpired:
                expired = True
            if expired:
                ambiguous |= op.write and state.sent
                if attempt_end >= deadline:
                    tried.append(f"{target or 'routing'}: no answer before the deadline")
                    break
                tried.append(f"{target or 'routing'}: no answer in {self.attempt_timeout}s")
            if target is not None and reply is None:  # failed, or silent: suspect the node
                failed.add(target)
                self.topology.forget_node_leadership(target)
            if isinstance(reply, expect):
                return reply
            if reply is not None:
                if not isinstance(reply, Error):
                    raise ProtocolError(f"{target}: answered {op.what} with {type(reply).__name__}")
                exc = error_from_frame(reply)
                last_error = exc
                tried.append(f"{target}: {exc.message or ErrorCode(exc.code).name.lower()}")
                assert target is not None
                if isinstance(exc, NotLeader):
                    if self._follow_hint(op, exc, target) and hops < _MAX_HINT_HOPS:
                        hops += 1
                        continue  # a new leader to try: no pause
                    failed.add(target)
                elif exc.code == ErrorCode.OUTCOME_UNKNOWN and op.write:
                    ambiguous = True  # same seq again is safe: the server de-duplicates
                elif exc.code in (
                    ErrorCode.UNAVAILABLE,
                    ErrorCode.TIMEOUT,
                    ErrorCode.OUTCOME_UNKNOWN,
                ):
                    if op.consistency != ReadConsistency.LINEARIZABLE:
                        failed.add(target)
                else:
                    raise exc
            hops = 0
            if delays is None:
                delays = _backoff_delays(self._rng)
            pause = min(next(delays), deadline - trio.current_time())
            if pause > 0:
                await trio.sleep(pause)
        raise self._give_up(op, budget, tried, ambiguous) from last_error

    def _follow_hint(self, op: _Op, exc: NotLeader, target: str) -> bool:
        """Apply a NOT_LEADER hint; True if it names a different node to try now."""
        if op.partition is None or op.consistency != ReadConsistency.LINEARIZABLE:
            return False
        if exc.leader_id:
            self.topology.set_leader(op.partition, exc.leader_id, exc.leader_address)
        else:
            self.topology.forget_leader(op.partition)
        new = self.topology.address_of(self.topology.leader_of(op.partition))
        if new is None:
            return False
        return new != target

    def _give_up(self, op: _Op, budget: float, tried: list[str], ambiguous: bool) -> PrkdbError:
        # Collapse runs of the same failure: "x (3 times)".
        runs: list[list[Any]] = []
        for entry in tried:
            if runs and runs[-1][0] == entry:
                runs[-1][1] += 1
            else:
                runs.append([entry, 1])
        tried = [e if n == 1 else f"{e} ({n} times)" for e, n in runs]
        shown = tried[-_TRIED_SHOWN:]
        more = (
            f"{len(tried) - len(shown)} earlier attempts, then " if len(tried) > len(shown) else ""
        )
        history = f"{more}{'; '.join(shown) or 'nothing'}"
        if ambiguous:
            return OutcomeUnknown(
                f"{op.what}: deadline of {budget}s passed; the write may or may not have been "
                f"applied (tried: {history})"
            )
        where = f"partition {op.partition}" if op.partition is not None else "the cluster"
        return Timeout(f"{op.what}: {where} did not answer within {budget}s (tried: {history})")


def _parse_batch_op(index: int, op: tuple[Any, ...] | BatchOp) -> BatchOp:
    if isinstance(op, BatchOp):
        kind = op.kind
        key = _check_key(op.key, f"batch op {index} key")
        if kind == OpKind.PUT:
            return BatchOp(OpKind.PUT, key, _check_value(op.value, f"batch op {index} value"))
        return BatchOp(OpKind.DELETE, key)
    if not isinstance(op, tuple | list) or not op:
        raise InvalidRequest(f"batch op {index} must be ('put', key, value) or ('delete', key)")
    name = str(op[0]).lower()
    if name == "put" and len(op) == 3:
        return BatchOp(
            OpKind.PUT,
            _check_key(op[1], f"batch op {index} key"),
            _check_value(op[2], f"batch op {index} value"),
        )
    if name == "delete" and len(op) == 2:
        return BatchOp(OpKind.DELETE, _check_key(op[1], f"batch op {index} key"))
    raise InvalidRequest(f"batch op {index} {op!r:.60} is not ('put', k, v) or ('delete', k)")
