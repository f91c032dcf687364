"""`AsyncClient` specifics: cancellation, timers and the import promise."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from typing import Any

from prkdb.client.aio import AsyncClient
from prkdb.wire.messages import Put
from tests.client.fake import HANG, FakeNode
from tests.client.fronts import TcpFake


def test_a_cancelled_call_leaves_the_connection_usable(tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    hung: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reached = asyncio.Event()

        async def hang_first_put(node: FakeNode, msg: Any) -> Any:  # in the fake's thread
            if isinstance(msg, Put) and not hung:
                hung.append(node.node_id)
                loop.call_soon_threadsafe(reached.set)
                return HANG
            return None

        async with AsyncClient.connect(cluster.seeds, cluster_id="prkdb") as db:
            cluster.hook = hang_first_put
            task = asyncio.create_task(db.put(b"k", b"first"))
            await reached.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert (await db.put(b"k", b"second")).succeeded
            assert await db.get(b"k") == b"second"
            assert db.core.sessions.size == 1  # the slot came back after the cancel

    asyncio.run(main())
    assert len(cluster.writes_received()) == 2


def test_many_tasks_share_one_connection_per_node(tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster

    async def main() -> None:
        async with AsyncClient.connect(cluster.seeds, cluster_id="prkdb") as db:
            await asyncio.gather(*(db.put(b"m%d" % i, b"v") for i in range(200)))
            assert len(db._connections) <= len(cluster.nodes)

    asyncio.run(main())
    assert sum(node.connections for node in cluster.nodes.values()) <= len(cluster.nodes)
    assert len(cluster.applied) == 200


def test_sync_and_asyncio_clients_do_not_import_trio() -> None:
    code = ("import sys; from prkdb.client import SyncClient, AsyncClient; "
            "import prkdb.client.aio, prkdb.client.sync; print('trio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
