"""`SyncClient`: the same API, blocking, for scripts and non-trio programs.

Theory of operation
-------------------
A dedicated daemon thread runs ``trio.run``; inside it one `PrkDbClient`
lives until `SyncClient.close`. Each blocking method hands its coroutine to
that loop with ``trio.from_thread.run(..., trio_token=...)`` and waits, so
any number of threads may share one SyncClient (their calls multiplex over
the same connections). Exceptions cross the thread boundary unchanged.

Do not call a SyncClient from inside a trio task: use `PrkDbClient` there
(trio refuses ``from_thread.run`` on its own thread, which protects you from
a deadlock).
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, TypeVar, final

import trio

from prkdb.client.client import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    UNSET,
    GetResult,
    PrkDbClient,
    WriteResult,
    _Unset,
)
from prkdb.client.connection import StreamFactory
from prkdb.errors import InvalidRequest
from prkdb.wire.messages import AdminOk, BackupBeginOk, BatchOp, ReadConsistency, StatusOk

__all__ = ["SyncClient"]

T = TypeVar("T")


@final
class SyncClient:
    """Blocking PrkDB client; a context manager. Arguments as `PrkDbClient.connect`.

    Raises (from the constructor): whatever `PrkDbClient.connect` raises.
    """

    def __init__(
        self,
        seeds: Sequence[str] | str,
        *,
        cluster_id: str = "prkdb",
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        stream_factory: StreamFactory | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> None:
        self._client: PrkDbClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._startup_error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=trio.run,
            args=(self._main, seeds, cluster_id, timeout, rng, stream_factory, attempt_timeout),
            name="prkdb-sync-client",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    async def _main(
        self,
        seeds: Sequence[str] | str,
        cluster_id: str,
        timeout: float,
        rng: random.Random | None,
        stream_factory: StreamFactory | None,
        attempt_timeout: float,
    ) -> None:
        try:
            client = await PrkDbClient.connect(
                seeds,
                cluster_id=cluster_id,
                timeout=timeout,
                rng=rng,
                stream_factory=stream_factory,
                attempt_timeout=attempt_timeout,
            )
        except BaseException as exc:  # handed to the constructor's thread, re-raised there
            self._startup_error = exc
            self._ready.set()
            return
        self._client = client
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await client.aclose()

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._client is None or self._token is None or not self._thread.is_alive():
            raise InvalidRequest("the client is closed")

        async def call() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    @property
    def client(self) -> PrkDbClient:
        """The underlying async client (only touch it from its own loop)."""
        if self._client is None:
            raise InvalidRequest("the client is closed")
        return self._client

    @property
    def client_id(self) -> int:
        return self.client.client_id

    def close(self) -> None:
        """Close connections and stop the loop thread. Idempotent."""
        if self._stop is not None and self._token is not None and self._thread.is_alive():
            stop = self._stop
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join()
        self._client = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the API, blocking (see PrkDbClient for each method's contract) --------------

    def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:
        value: bytes | None = self._run(self.client.get, key, timeout=timeout)
        return value

    def get_with_consistency(
        self, key: bytes, consistency: ReadConsistency, *, timeout: float | None = None
    ) -> bytes | None:
        value: bytes | None = self._run(
            self.client.get_with_consistency, key, consistency, timeout=timeout
        )
        return value

    def get_entry(
        self,
        key: bytes,
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> GetResult:
        result: GetResult = self._run(
            self.client.get_entry, key, consistency=consistency, timeout=timeout
        )
        return result

    def put(self, key: bytes, value: bytes, *, timeout: float | None = None) -> WriteResult:
        result: WriteResult = self._run(self.client.put, key, value, timeout=timeout)
        return result

    def delete(self, key: bytes, *, timeout: float | None = None) -> WriteResult:
        result: WriteResult = self._run(self.client.delete, key, timeout=timeout)
        return result

    def cas(
        self,
        key: bytes,
        *,
        expected_value: bytes | _Unset | None = UNSET,
        expected_version: int | None = None,
        new_value: bytes | None,
        timeout: float | None = None,
    ) -> WriteResult:
        result: WriteResult = self._run(
            self.client.cas,
            key,
            expected_value=expected_value,
            expected_version=expected_version,
            new_value=new_value,
            timeout=timeout,
        )
        return result

    def batch(
        self, ops: Iterable[tuple[Any, ...] | BatchOp], *, timeout: float | None = None
    ) -> WriteResult:
        result: WriteResult = self._run(self.client.batch, list(ops), timeout=timeout)
        return result

    def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        result: StatusOk = self._run(self.client.status, node_id, timeout=timeout)
        return result

    def refresh_topology(self, *, timeout: float | None = None) -> None:
        self._run(self.client.refresh_topology, timeout=timeout)

    def transfer_leader(
        self, partition: int, to_node: int = 0, *, timeout: float | None = None
    ) -> AdminOk:
        result: AdminOk = self._run(
            self.client.transfer_leader, partition, to_node, timeout=timeout
        )
        return result

    def snapshot(
        self,
        partition: int | None = None,
        *,
        node_id: int | None = None,
        timeout: float | None = None,
    ) -> AdminOk:
        result: AdminOk = self._run(
            self.client.snapshot, partition, node_id=node_id, timeout=timeout
        )
        return result

    def backup_partition(
        self,
        partition: int,
        out: IO[bytes],
        *,
        attempts: int = 3,
        timeout: float | None = None,
        begin_timeout: float | None = None,
    ) -> BackupBeginOk:
        result: BackupBeginOk = self._run(
            self.client.backup_partition, partition, out, attempts=attempts, timeout=timeout,
            begin_timeout=begin_timeout,
        )
        return result
