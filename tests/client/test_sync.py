"""SyncClient: the blocking API, against the fake cluster over real TCP in its own thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial

import pytest
import trio

from prkdb.client import InvalidRequest, ReadConsistency, SyncClient, WrongCluster
from tests.client.fake import FakeCluster


@pytest.fixture
def tcp_cluster() -> Iterator[FakeCluster]:
    """A fake cluster listening on 127.0.0.1, served by trio.run in a background thread."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cluster = FakeCluster(nursery)
            for node in cluster.nodes.values():
                listeners = await nursery.start(
                    partial(trio.serve_tcp, node.serve, 0, host="127.0.0.1")
                )
                node.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            holder["cluster"] = cluster
            holder["token"] = trio.lowlevel.current_trio_token()
            holder["scope"] = nursery.cancel_scope
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    cluster = holder["cluster"]
    assert isinstance(cluster, FakeCluster)
    yield cluster
    scope = holder["scope"]
    assert isinstance(scope, trio.CancelScope)
    trio.from_thread.run_sync(scope.cancel, trio_token=holder["token"])  # type: ignore[arg-type]
    thread.join(10)


def test_sync_client_basic_ops(tcp_cluster: FakeCluster) -> None:
    seeds = ["http://" + tcp_cluster.nodes[2].address]
    with SyncClient(seeds, timeout=5.0) as client:
        assert client.put(b"a", b"1").version == 1
        assert client.get(b"a") == b"1"
        assert client.get_with_consistency(b"a", ReadConsistency.STALE) == b"1"
        assert client.get_entry(b"a").version == 1
        assert client.cas(b"a", expected_value=b"1", new_value=b"2").succeeded
        assert client.delete(b"a").prev_version == 2
        assert client.get(b"a") is None
        assert len(client.status().partitions) == 4
        with pytest.raises(InvalidRequest):
            client.put(b"", b"x")
    with pytest.raises(InvalidRequest, match="closed"):
        client.get(b"a")
    client.close()  # idempotent


def test_sync_client_shared_by_threads(tcp_cluster: FakeCluster) -> None:
    with SyncClient([tcp_cluster.nodes[1].address]) as client:
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(10):
                    client.put(b"t%d-%d" % (t, i), b"v")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(tcp_cluster.applied) == 40


def test_sync_client_wrong_cluster(tcp_cluster: FakeCluster) -> None:
    with pytest.raises(WrongCluster):
        SyncClient([tcp_cluster.nodes[1].address], cluster_id="nope")
