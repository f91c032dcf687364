"""The SDK's watch on a real 3-node cluster (processes): a node it streams from is killed
while a writer runs, and the watcher still gets every committed write of its range
exactly once, per partition in revision order (marked slow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from prkdb.client import OutcomeUnknown, SyncClient, Unavailable, WatchEvent
from prkdb.client.blocking import BlockingConnection
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


def test_sdk_watch_survives_killing_its_node(cluster: LocalCluster) -> None:
    writes: dict[bytes, int] = {}  # key -> revision of its (only) put
    unsure: set[bytes] = set()
    stop = threading.Event()

    def writer() -> None:
        with SyncClient(cluster.seeds, timeout=10) as db:
            i = 0
            while not stop.is_set():
                key = b"live/%05d" % i
                try:
                    writes[key] = db.put(key, b"v").revision
                except (OutcomeUnknown, Unavailable):
                    unsure.add(key)
                i += 1
                time.sleep(0.005)

    got: list[WatchEvent] = []
    with SyncClient(cluster.seeds) as db, db.watch(b"live/") as watch:
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        while len(got) < 50:
            got.append(next(watch))
        ports = {conn.address for conn in watch._streams if isinstance(conn, BlockingConnection)}
        victim = next(i for i, p in enumerate(cluster.client_ports, 1) if f"127.0.0.1:{p}" in ports)
        cluster.kill(victim)
        time.sleep(3)
        stop.set()
        thread.join(30)
        deadline = time.monotonic() + 30
        while not set(writes) <= {e.key for e in got} and time.monotonic() < deadline:
            got.append(next(watch))
        assert watch._driver is not None and watch._driver.plan.opened > 4  # reopened
    keys = [e.key for e in got]
    assert len(keys) == len(set(keys)), "an event was delivered twice"
    assert {e.key: e.revision for e in got if e.key in writes} == writes  # no gap
    assert set(keys) <= set(writes) | unsure
    for partition in {e.partition for e in got}:
        revisions = [e.revision for e in got if e.partition == partition]
        assert revisions == sorted(revisions)
