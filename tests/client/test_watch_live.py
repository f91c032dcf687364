"""The SDK's watch on a real 3-node cluster (processes): a node it streams from is killed
while a writer runs, and the watcher still gets every committed write of its range
exactly once, per partition in revision order; on every front end (marked slow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from prkdb.client import OutcomeUnknown, SyncClient, Unavailable, WatchEvent
from prkdb.client.blocking import BlockingConnection
from tests.client.fronts import Front
from tests.client.test_watch_fronts import close, take
from tests.integration.cluster import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("sdk-watch"), 3, partitions=4, tick_ms=20)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


class Writer:
    """Puts ``prefix%05d`` keys on a thread until stopped; what each write became."""

    def __init__(self, cluster: LocalCluster, prefix: bytes) -> None:
        self.writes: dict[bytes, int] = {}  # key -> revision of its (only) put
        self.unsure: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, prefix), daemon=True)
        self._thread.start()

    def _run(self, cluster: LocalCluster, prefix: bytes) -> None:
        with SyncClient(cluster.seeds, timeout=10) as db:
            i = 0
            while not self._stop.is_set():
                key = prefix + b"%05d" % i
                try:
                    self.writes[key] = db.put(key, b"v").revision
                except (OutcomeUnknown, Unavailable):
                    self.unsure.add(key)
                i += 1
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def check(got: list[WatchEvent], writer: Writer) -> None:
    keys = [e.key for e in got]
    assert len(keys) == len(set(keys)), "an event was delivered twice"
    assert {e.key: e.revision for e in got if e.key in writer.writes} == writer.writes  # no gap
    assert set(keys) <= set(writer.writes) | writer.unsure
    for partition in {e.partition for e in got}:
        revisions = [e.revision for e in got if e.partition == partition]
        assert revisions == sorted(revisions)


def node_of(cluster: LocalCluster, addresses: set[str | None]) -> int:
    return next(i for i, p in enumerate(cluster.client_ports, 1)
                if f"127.0.0.1:{p}" in addresses)


@pytest.mark.parametrize("kind", ["trio", "asyncio"])
def test_async_watch_survives_killing_its_node(cluster: LocalCluster, kind: str) -> None:
    front = Front(kind)
    try:
        db = front.connect(cluster.seeds)
        watch = db.inner.watch(b"async/", cursor=db.watch_cursor(b"async/"))
        writer = Writer(cluster, b"async/")
        got = take(front, watch, 50)
        assert watch._driver is not None
        killed = node_of(cluster, set(watch.streams.values()))
        cluster.kill(killed)
        time.sleep(3)
        writer.stop()
        deadline = time.monotonic() + 30
        while not set(writer.writes) <= {e.key for e in got} and time.monotonic() < deadline:
            got += take(front, watch, 1)
        assert watch._driver.plan.opened > 4  # reopened
        assert f"127.0.0.1:{cluster.client_ports[killed - 1]}" not in watch.streams.values()
        close(front, watch)
        check(got, writer)
    finally:
        front.close()


def test_sdk_watch_survives_killing_its_node(cluster: LocalCluster) -> None:
    got: list[WatchEvent] = []
    with SyncClient(cluster.seeds) as db, db.watch(
            b"live/", cursor=db.watch_cursor(b"live/")) as watch:
        writer = Writer(cluster, b"live/")
        while len(got) < 50:
            got.append(next(watch))
        streams = watch.streams
        ports = {conn.address for conn in watch._streams if isinstance(conn, BlockingConnection)}
        assert set(streams.values()) == ports and len(streams) == 4  # every partition streams
        killed = node_of(cluster, set(streams.values()))
        cluster.kill(killed)
        time.sleep(3)
        writer.stop()
        deadline = time.monotonic() + 30
        while not set(writer.writes) <= {e.key for e in got} and time.monotonic() < deadline:
            got.append(next(watch))
        assert watch._driver is not None and watch._driver.plan.opened > 4  # reopened
        assert f"127.0.0.1:{cluster.client_ports[killed - 1]}" not in watch.streams.values()
    check(got, writer)
