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

import random
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import IO, Any, TypeVar, final

import trio

from prkdb.client.attempt import AttemptExpired
from prkdb.client.connection import Connection, StreamFactory
from prkdb.client.core import (
    BACKUP_CHUNK,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Plan,
    Send,
)
from prkdb.client.results import UNSET, BackupFailed, GetResult, Unset, WriteResult
from prkdb.client.routing import Topology, split_address
from prkdb.client.sessions import SessionPool
from prkdb.errors import InvalidRequest
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BackupChunk,
    BatchOp,
    ReadConsistency,
    StatusOk,
    WireMessage,
)

__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "UNSET",
    "BackupFailed",
    "GetResult",
    "PrkDbClient",
    "WriteResult",
]

T = TypeVar("T")
_Unset = Unset  # the old private name, for callers that imported it


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
        seeds: Sequence[str] | str,
        *,
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> None:
        """Build an unconnected client; prefer `connect`, which also loads the topology.

        Raises:
            InvalidRequest: no seeds, a malformed seed, or a non-positive timeout.
        """
        self.core = ClientCore(seeds, clock=trio.current_time, cluster_id=cluster_id,
                               timeout=timeout, attempt_timeout=attempt_timeout, rng=rng)
        self._factory: StreamFactory = stream_factory or trio.open_tcp_stream
        # address -> live connection; replaced lazily when broken.
        self._connections: dict[str, Connection] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._closed = False

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
    ) -> _Connecting:
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

        Raises:
            WrongCluster: a seed belongs to another cluster.
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

    # --- what the core knows -------------------------------------------------------

    @property
    def cluster_id(self) -> str | None:
        """The cluster's id: as given, or as the first node named it."""
        return self.core.cluster_id

    @property
    def topology(self) -> Topology:
        return self.core.topology

    @property
    def sessions(self) -> SessionPool:
        return self.core.sessions

    @property
    def timeout(self) -> float:
        """Default per-call deadline, seconds (retries included)."""
        return self.core.timeout

    @property
    def attempt_timeout(self) -> float:
        """Longest wait for one answer from one node before trying elsewhere, seconds."""
        return self.core.attempt_timeout

    @property
    def refresh_problems(self) -> list[str]:
        return self.core.refresh_problems

    @property
    def client_id(self) -> int:
        """The first session's client id: the one every write uses when none overlap."""
        return self.core.client_id

    # --- key-value API -------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:
        """The value of `key` (None if absent), linearizable: read at the leader."""
        plan = self.core.get(key, ReadConsistency.LINEARIZABLE, timeout)
        return (await self._drive(plan)).value

    async def get_with_consistency(
        self, key: bytes, consistency: ReadConsistency, *, timeout: float | None = None
    ) -> bytes | None:
        """The value of `key` at the given consistency (FOLLOWER/STALE spread load)."""
        return (await self._drive(self.core.get(key, consistency, timeout))).value

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
        return await self._drive(self.core.get(key, consistency, timeout))

    async def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> WriteResult:
        """Store `value` under `key`, exactly once.

        Raises:
            OutcomeUnknown: the deadline passed while the write's fate was unknown.
            Timeout: the deadline passed and the write surely did not happen.
            InvalidRequest / TooLarge: the write can never succeed.
        """
        return await self._drive(self.core.put(key, value, timeout))

    async def delete(self, key: bytes, *, timeout: float | None = None) -> WriteResult:
        """Remove `key` (``prev_version`` 0 in the result: it was already absent)."""
        return await self._drive(self.core.delete(key, timeout))

    async def cas(
        self,
        key: bytes,
        *,
        expected_value: bytes | Unset | None = UNSET,
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
        return await self._drive(
            self.core.cas(key, expected_value, expected_version, new_value, timeout)
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
        return await self._drive(self.core.batch(ops, timeout))

    # --- admin API -----------------------------------------------------------------

    async def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        """Topology and Raft state as one node sees it (any node if `node_id` is None).

        Also refreshes the client's cached topology.
        """
        return await self._drive(self.core.status(node_id, timeout))

    async def refresh_topology(self, *, timeout: float | None = None) -> None:
        """Ask any node for the members and leaders now.

        Raises:
            Timeout: no node answered before the deadline.
            WrongCluster: a node belongs to another cluster.
        """
        await self._drive(self.core.refresh_topology(timeout))

    async def transfer_leader(
        self, partition: int, to_node: int = 0, *, timeout: float | None = None
    ) -> AdminOk:
        """Ask `partition`'s leader to hand leadership to `to_node` (0 = its pick).

        Asking the current leader to hand over to itself answers at once.
        """
        return await self._drive(self.core.transfer_leader(partition, to_node, timeout))

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
        return await self._drive(self.core.snapshot(partition, node_id, timeout))

    async def backup_begin(self, partition: int, *, timeout: float | None = None
                           ) -> BackupBeginOk:
        """Have `partition`'s leader pick a snapshot covering every write acknowledged so far.

        The leader confirms its leadership and waits until it applied its
        commit index as of the request (as for a linearizable read), then
        snapshots the partition and holds the file open for `backup_read`
        from the node named in the answer. The wait for the snapshot is not
        cut short per attempt: one attempt may take the whole `timeout`.
        """
        return await self._drive(self.core.backup_begin(partition, timeout))

    async def backup_read(self, begin: BackupBeginOk, offset: int, length: int = BACKUP_CHUNK,
                          *, timeout: float | None = None) -> BackupChunk:
        """Bytes of the snapshot file `begin` named, from the node that holds it.

        Raises:
            InvalidRequest: with ``details["backup_gone"]`` when that node no
                longer has the file (start over with `backup_begin`).
        """
        return await self._drive(self.core.backup_read(begin, offset, length, timeout))

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
        return await self._drive(self.core.backup_partition(
            partition, out, attempts, chunk_size, timeout, begin_timeout))

    # --- internals: I/O for the core's plans ----------------------------------------

    async def _drive(self, plan: Plan[T]) -> T:
        """Run `plan` to its result (prkdb.client.core, "Theory of operation")."""
        try:
            action = next(plan)
            while True:
                if action.__class__ is Send:
                    try:
                        reply = await self._send(action)  # type: ignore[arg-type]
                    except Exception as exc:  # judged by the plan; fatal ones come back out
                        action = plan.throw(exc)
                    else:
                        action = plan.send(reply)
                else:
                    await trio.sleep(action.seconds)  # type: ignore[union-attr]
                    action = plan.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            plan.close()

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
        return await conn.request(action.build, action.state, action.deadline)

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
