"""A data dir knows whose it is (issue 13): a real node refuses another layout's dir.

A one-node cluster writes some keys and stops. Restarted on the same data
dir with another cluster id, node id or partition count, `prkdb serve` must
exit 2 naming both values (the data dir's and the configuration's) and
change nothing in the dir; restarted with its own configuration it serves
every key it acknowledged.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prkdb.client import SyncClient
from prkdb.config import PeerConfig
from prkdb.server.clusterconf import render_node_config
from tests.integration.cluster import CLUSTER_ID, LocalCluster, free_ports

pytestmark = pytest.mark.slow

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[LocalCluster, dict[bytes, bytes]]]:
    """A one-node cluster that acknowledged some puts and was stopped (SIGTERM)."""
    c = LocalCluster(tmp_path, 1, partitions=PARTITIONS)
    try:
        c.start_all()
        c.wait_ready()
        acked = {}
        with SyncClient(c.seeds, cluster_id=CLUSTER_ID, timeout=10) as client:
            for i in range(40):
                key, value = b"id-%d" % i, b"v%d" % i
                client.put(key, value)
                acked[key] = value
        assert c.terminate(1) == 0
        yield c, acked
    finally:
        c.close()


def _snapshot_of(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes()
            for p in sorted(data_dir.rglob("*")) if p.is_file()}


def _serve_with(c: LocalCluster, name: str, *, cluster_id: str = CLUSTER_ID, node_id: int = 1,
                partitions: int = PARTITIONS) -> subprocess.CompletedProcess[str]:
    """`prkdb serve` on node 1's data dir under another config (fresh ports).

    It must exit on its own; subprocess.run kills it (by PID) at the timeout.
    """
    client, peer = free_ports(2)
    conf = c.root / f"{name}.toml"
    conf.write_text(render_node_config(
        node_id, [PeerConfig(node_id, f"127.0.0.1:{client}", f"127.0.0.1:{peer}")],
        cluster_id=cluster_id, data_dir=(c.root / "data1").resolve(), partitions=partitions))
    try:
        return subprocess.run([sys.executable, "-m", "prkdb", "serve", "--config", str(conf)],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{name}: the node did not refuse, it kept running "
                             f"(output tail: {str(e.stdout)[-2000:]})") from None


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("cluster-id", {"cluster_id": "beta"},
         ["node.cluster_id is 'prkdb-test' in the data dir but 'beta' in the configuration"]),
        ("node-id", {"node_id": 2}, ["node.id is 1 in the data dir but 2 in the configuration"]),
        ("partitions", {"partitions": 8},
         ["cluster.partitions is 4 in the data dir but 8 in the configuration"]),
        ("all-three", {"cluster_id": "beta", "node_id": 3, "partitions": 2},
         ["node.cluster_id is 'prkdb-test' in the data dir but 'beta' in the configuration",
          "node.id is 1 in the data dir but 3 in the configuration",
          "cluster.partitions is 4 in the data dir but 2 in the configuration"]),
    ],
)
def test_another_layout_on_the_data_dir_exits_2_naming_both_values(
        stopped: tuple[LocalCluster, dict[bytes, bytes]], name: str, change: dict,
        expected: list[str]) -> None:
    c, acked = stopped
    data_dir = c.root / "data1"
    before = _snapshot_of(data_dir)
    done = _serve_with(c, name, **change)
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    for text in expected:
        assert text in done.stderr, (text, done.stderr[-3000:])
    assert f"{data_dir.resolve()} belongs to another cluster layout" in done.stderr, \
        done.stderr[-3000:]
    assert "node_ready" not in done.stdout + done.stderr
    # Refused before anything was written: the dir is byte for byte the same.
    assert _snapshot_of(data_dir) == before
    # And the node still starts with its own configuration, with every key.
    c.start(1)
    c.wait_ready()
    with SyncClient(c.seeds, cluster_id=CLUSTER_ID, timeout=10) as client:
        for key, value in acked.items():
            assert client.get(key) == value, key
