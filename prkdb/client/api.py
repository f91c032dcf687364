"""`AsyncApi`: the SDK's async methods, shared by the trio and asyncio front ends.

Every method makes a plan of the sans-IO core (prkdb.client.core) and hands
it to ``_drive``, which each front end implements with its own I/O. So the
trio `PrkDbClient` and the asyncio `AsyncClient` have one API, one set of
docstrings and one behaviour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import IO, Any, Generic, TypeVar

from prkdb.client.core import BACKUP_CHUNK, ClientCore, Plan
from prkdb.client.results import UNSET, GetResult, Unset, WriteResult
from prkdb.client.routing import Topology
from prkdb.client.sessions import SessionPool
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BackupChunk,
    BatchOp,
    ReadConsistency,
    StatusOk,
)

__all__ = ["AsyncApi", "Connecting"]

T = TypeVar("T")
C = TypeVar("C", bound="AsyncApi")


class AsyncApi:
    """The async client API; subclasses provide ``core`` and ``_drive``.

    Every method takes ``timeout=`` (seconds, the whole call including
    retries); None means the client's default.
    """

    core: ClientCore

    async def _drive(self, plan: Plan[T]) -> T:
        raise NotImplementedError

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

    async def aclose(self) -> None:
        raise NotImplementedError


class Connecting(Generic[C]):
    """What ``connect`` returns: ``await`` it, or ``async with`` it (closed on exit)."""

    __slots__ = ("_client", "_open")

    def __init__(self, open_: Callable[[], Awaitable[C]]) -> None:
        self._open = open_
        self._client: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._open().__await__()

    async def __aenter__(self) -> C:
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._client is not None
        await self._client.aclose()
