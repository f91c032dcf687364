"""scripts/local-cluster.sh and scripts/rolling-restart.py on a real 3-node cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
    # The script runs the nodes from CLUSTER_DIR: put this checkout on the path
    # so they run this code even where the package is not installed.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, CLUSTER_DIR=str(cluster_dir), PYTHONUNBUFFERED="1",
                PYTHONPATH=path,
                PRKDB=f"{sys.executable} -m prkdb", PRKCTL=f"{sys.executable} -m prkctl")


def local_cluster(cluster_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LOCAL_CLUSTER), *args], env=script_env(cluster_dir),
                          capture_output=True, text=True, timeout=90)


def kill_leftovers(cluster_dir: Path) -> None:
    """After `stop`, SIGKILL what still runs: our own PIDs (from the PID files) only."""
    local_cluster(cluster_dir, "stop")
    for pidfile in cluster_dir.glob("node*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


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
        kill_leftovers(tmp_path)


def test_start_returns_once_prkctl_status_is_healthy(tmp_path: Path) -> None:
    # docs/operations.md's quick start: `start` then at once `prkctl status`
    # (was: "cluster unavailable", start returned before the nodes listened).
    cluster = LocalCluster(tmp_path, 3, partitions=4)
    try:
        r = local_cluster(tmp_path, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "waiting for a leader of every partition" in r.stdout
        status = subprocess.run([sys.executable, "-m", "prkctl", "--seeds",
                                 ",".join(cluster.seeds), "status"],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
        # start-node returns once the node listens
        assert local_cluster(tmp_path, "stop-node", "2").returncode == 0
        r = local_cluster(tmp_path, "start-node", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        socket.create_connection(("127.0.0.1", cluster.client_ports[1]), timeout=5).close()
    finally:
        kill_leftovers(tmp_path)


def test_start_fails_clearly_when_a_node_cannot_start(tmp_path: Path) -> None:
    LocalCluster(tmp_path, 3, partitions=4)
    (tmp_path / "node3.toml").write_text("[node]\nid = 3\nbogus = 1\n")
    try:
        r = local_cluster(tmp_path, "start")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"node 3 exited while starting; the end of {tmp_path}/node3.log" in r.stderr
        assert "bogus" in r.stderr  # the log's last lines say why
    finally:
        kill_leftovers(tmp_path)


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
