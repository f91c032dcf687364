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

import random
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any, TypeVar, final

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
from prkdb.client.results import UNSET, GetResult, Unset, WriteResult
from prkdb.client.routing import Topology
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

__all__ = ["SyncClient"]

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
    ) -> None:
        self.core = ClientCore(seeds, clock=time.monotonic, cluster_id=cluster_id,
                               timeout=timeout, attempt_timeout=attempt_timeout, rng=rng)
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

    def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> WriteResult:
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

    def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        return self._run(self.core.status(node_id, timeout))

    def refresh_topology(self, *, timeout: float | None = None) -> None:
        self._run(self.core.refresh_topology(timeout))

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

    # --- internals -----------------------------------------------------------------

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
                                           core.accept_hello, action.deadline, time.monotonic)
        reply = conn.request(action.build, action, action.deadline, time.monotonic)
        self._pool.give(conn)
        return reply
