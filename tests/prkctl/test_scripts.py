"""scripts/local-cluster.sh and scripts/rolling-restart.py on a real 3-node cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from prkdb.client import SyncClient
from tests.integration.cluster import CLUSTER_ID, LocalCluster
from tests.prkctl.helpers import wait_leaders

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "scripts" / "local-cluster.sh"
ROLLING = REPO / "scripts" / "rolling-restart.py"


def script_env(cluster_dir: Path) -> dict[str, str]:
    return dict(os.environ, CLUSTER_DIR=str(cluster_dir), PYTHONUNBUFFERED="1",
                PRKDB=f"{sys.executable} -m prkdb", PRKCTL=f"{sys.executable} -m prkctl")


def local_cluster(cluster_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOCAL_CLUSTER), *args], env=script_env(cluster_dir),
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster whose processes local-cluster.sh owns (LocalCluster only wrote configs)."""
    cluster = LocalCluster(tmp_path, 3, partitions=4)
    try:
        r = local_cluster(tmp_path, "start")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("started (pid") == 3
        wait_leaders(cluster)
        yield cluster
    finally:
        local_cluster(tmp_path, "stop")
        for pidfile in tmp_path.glob("node*.pid"):  # belt and braces: our own PIDs only
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_local_cluster_status_and_stop(scripted: LocalCluster) -> None:
    root = scripted.root
    r = local_cluster(root, "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": running (pid") == 3 and "healthy" in r.stdout
    assert local_cluster(root, "start").stdout.count("already runs") == 3
    r = local_cluster(root, "stop-node", "2")
    assert r.returncode == 0 and "node 2 stopped" in r.stdout
    assert not (root / "node2.pid").exists()
    r = local_cluster(root, "status")
    assert "node 2: stopped" in r.stdout
    assert local_cluster(root, "start-node", "2").returncode == 0
    wait_leaders(scripted)
    r = local_cluster(root, "stop")
    assert r.stdout.count("stopped") == 3
    assert "handed_off_leadership" in scripted.log(1)


def test_rolling_restart_under_write_load(scripted: LocalCluster) -> None:
    acked: dict[bytes, bytes] = {}
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with SyncClient(scripted.seeds, cluster_id=CLUSTER_ID, timeout=10) as db:
            i = 0
            while not stop.is_set():
                key, value = b"rr-%06d" % i, b"v%d" % i
                try:
                    db.put(key, value)
                except Exception as e:  # any failure counts
                    failures.append(f"{key!r}: {type(e).__name__}: {e}")
                else:
                    acked[key] = value
                i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        r = subprocess.run([sys.executable, str(ROLLING), "--cluster-dir", str(scripted.root),
                            "--timeout", "40"], env=script_env(scripted.root),
                           capture_output=True, text=True, timeout=150)
    finally:
        stop.set()
        t.join(30)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in scripted.ids:
        assert f"node {i}: back and healthy" in r.stdout
    assert failures == []
    assert len(acked) > 50
    # every node was really restarted: each log shows two node_ready events
    for i in scripted.ids:
        assert scripted.log(i).count("node_ready") == 2, i
    wait_leaders(scripted)
    with SyncClient(scripted.seeds, cluster_id=CLUSTER_ID) as db:
        for key, value in acked.items():
            assert db.get(key) == value, key
