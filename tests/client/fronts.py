"""The three SDK front ends behind one blocking facade, and a fake cluster on real TCP.

Shared client tests (tests/client/test_fronts.py) are plain functions that
take a `Front` and a `TcpFake`, so every behaviour is checked for the trio
`PrkDbClient`, the asyncio `AsyncClient` and the blocking `SyncClient` alike:

- ``sync``: `SyncClient` called directly;
- ``trio``: a `PrkDbClient` living in a trio loop on a helper thread, each
  call handed over with ``trio.from_thread.run``;
- ``asyncio``: an `AsyncClient` in an asyncio loop on a helper thread, each
  call handed over with ``asyncio.run_coroutine_threadsafe``.

The fake cluster (tests/client/fake.py) runs in its own trio thread and
listens on 127.0.0.1 ports; its ``hook`` runs in that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import trio

from prkdb.client import AsyncClient, PrkDbClient, SyncClient
from tests.client.fake import FakeCluster

FRONTS = ("trio", "asyncio", "sync")


class TcpFake:
    """A `FakeCluster` served over real TCP by a trio loop on a background thread."""

    def __init__(self, **kwargs: Any) -> None:
        ready = threading.Event()
        self._holder: dict[str, Any] = {}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                cluster = FakeCluster(nursery, **kwargs)
                for node in cluster.nodes.values():
                    listeners = await nursery.start(
                        partial(trio.serve_tcp, node.serve, 0, host="127.0.0.1")
                    )
                    node.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
                self._holder.update(cluster=cluster, scope=nursery.cancel_scope,
                                    token=trio.lowlevel.current_trio_token())
                ready.set()

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake cluster did not start"
        self.cluster: FakeCluster = self._holder["cluster"]

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run sync `fn` in the fake's loop (to change its state safely)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._holder["token"])

    def close(self) -> None:
        trio.from_thread.run_sync(self._holder["scope"].cancel, trio_token=self._holder["token"])
        self._thread.join(10)


class Front:
    """Blocking calls to one front end's client: ``front.connect(seeds).put(k, v)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._closers: list[Callable[[], None]] = []
        if kind == "trio":
            self._start_trio()
        elif kind == "asyncio":
            self._loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            thread.start()

            def stop() -> None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                thread.join(10)
                self._loop.close()

            self._closers.append(stop)

    def _start_trio(self) -> None:
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def main() -> None:
            holder["token"] = trio.lowlevel.current_trio_token()
            holder["stop"] = trio.Event()
            ready.set()
            await holder["stop"].wait()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        assert ready.wait(10)
        self._token = holder["token"]

        def stop() -> None:
            trio.from_thread.run_sync(holder["stop"].set, trio_token=self._token)
            thread.join(10)

        self._closers.append(stop)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the client coroutine function `fn` (or a plain function) in this front's world."""
        if self.kind == "sync":
            return fn(*args, **kwargs)
        if self.kind == "trio":
            return trio.from_thread.run(partial(fn, *args, **kwargs), trio_token=self._token)
        return asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self._loop).result()

    def connect(self, seeds: list[str], **kwargs: Any) -> Client:
        """A connected client of this front end (closed by `close`)."""
        if self.kind == "sync":
            inner: Any = SyncClient(seeds, **kwargs)
        elif self.kind == "trio":
            inner = self.call(_connect_trio, seeds, kwargs)
        else:
            inner = self.call(_connect_aio, seeds, kwargs)
        client = Client(self, inner)
        self._closers.insert(0, client.close)
        return client

    def concurrently(self, n: int, fn: Callable[[int], Any]) -> list[Any]:
        """Run ``fn(i)`` for i in range(n) at once (tasks or threads); their results.

        `fn` gets the index and returns an awaitable for async fronts, a value for sync.
        """
        if self.kind == "sync":
            with ThreadPoolExecutor(n) as pool:
                return list(pool.map(fn, range(n)))
        if self.kind == "trio":
            async def all_trio() -> list[Any]:
                results: list[Any] = [None] * n

                async def one(i: int) -> None:
                    results[i] = await fn(i)

                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(one, i)
                return results

            return trio.from_thread.run(all_trio, trio_token=self._token)

        async def all_aio() -> list[Any]:
            return list(await asyncio.gather(*(fn(i) for i in range(n))))

        return asyncio.run_coroutine_threadsafe(all_aio(), self._loop).result()

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


async def _connect_trio(seeds: list[str], kwargs: dict[str, Any]) -> PrkDbClient:
    return await PrkDbClient.connect(seeds, **kwargs)


async def _connect_aio(seeds: list[str], kwargs: dict[str, Any]) -> AsyncClient:
    return await AsyncClient.connect(seeds, **kwargs)


class Client:
    """A client of any front end with blocking methods (``client.put(k, v)``)."""

    def __init__(self, front: Front, inner: Any) -> None:
        self.front = front
        self.inner = inner
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or self.front.kind == "sync":
            return attr
        return partial(self.front.call, attr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.front.kind == "sync":
            self.inner.close()
        else:
            self.front.call(self.inner.aclose)


def fronts_fixture_iter(kind: str) -> Iterator[Front]:
    front = Front(kind)
    try:
        yield front
    finally:
        front.close()
