"""Online backup and restore, end to end, with real processes on 127.0.0.1.

A 3-node cluster takes writes from a sequential writer that records every
acknowledged write; `prkctl backup` runs while the writes go on; the cluster
stops; `prkdb restore` builds three fresh data dirs for a cluster with a new
id (other ports); the restored cluster starts and every write acknowledged
BEFORE the backup began must read back. Writes acknowledged during the
backup may or may not be there; nothing that was never written may be.

Keys are overwritten (``k<i mod 150>`` = ``v<i>``, i the write's sequence
number), so "present" is checked as "the key reads a value at least as new
as its last write acknowledged before the backup".
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prkdb.client import PrkdbError, SyncClient
from prkdb.config import PeerConfig
from prkdb.server.clusterconf import write_cluster_configs
from prkdb.wire.messages import Status, StatusOk
from tests.integration.cluster import CLUSTER_ID, LocalCluster, NodeProcesses, WireConn, free_ports

pytestmark = pytest.mark.slow

KEYS = 150
RESTORED_ID = "prkdb-restored"


class RestoredCluster(LocalCluster):
    """A LocalCluster with its own cluster id, whose data dirs `prkdb restore` builds."""

    def __init__(self, root: Path, nodes: int, partitions: int, cluster_id: str) -> None:
        NodeProcesses.__init__(self)
        self.root, self.n, self.partitions, self.cluster_id = root, nodes, partitions, cluster_id
        ports = free_ports(2 * nodes)
        self.client_ports, self.peer_ports = ports[:nodes], ports[nodes:]
        peers = [PeerConfig(i, f"127.0.0.1:{self.client_ports[i - 1]}",
                            f"127.0.0.1:{self.peer_ports[i - 1]}") for i in self.ids]
        write_cluster_configs(root, peers, cluster_id=cluster_id,
                              data_dirs={i: root / f"data{i}" for i in self.ids},
                              partitions=partitions, raft={"tick_ms": 20})

    def status(self, i: int, timeout: float = 2.0) -> StatusOk:
        conn = WireConn(self.client_ports[i - 1], cluster_id=self.cluster_id, timeout=timeout)
        try:
            result: StatusOk = conn.call(Status(1))
            return result
        finally:
            conn.close()


class Writer(threading.Thread):
    """Sequential puts; `acked[i]` = time write i was acknowledged."""

    def __init__(self, seeds: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = SyncClient(seeds, cluster_id=CLUSTER_ID, timeout=5.0)
        self.acked: dict[int, float] = {}
        self.attempted = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                self.attempted = i
                try:
                    self.client.put(f"k{i % KEYS}".encode(), f"v{i}".encode())
                except PrkdbError:
                    continue  # not acknowledged: may or may not be there
                self.acked[i] = time.monotonic()
        except BaseException as e:  # reported by the test
            self.error = e


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_backup_under_writes_restores_every_write_acknowledged_before(tmp_path: Path) -> None:
    src = LocalCluster(tmp_path / "src", 3, partitions=4, snapshot_entries=400)
    dst = RestoredCluster(tmp_path / "dst", 3, 4, RESTORED_ID)
    writer: Writer | None = None
    backup = tmp_path / "cluster.tar"
    try:
        src.start_all()
        src.wait_ready()
        writer = Writer(src.seeds)
        writer.start()
        deadline = time.monotonic() + 20
        while len(writer.acked) < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(writer.acked) >= 600, f"writer too slow: {len(writer.acked)} acks"
        began = time.monotonic()
        before = {i for i, t in writer.acked.items() if t < began}
        ctl = run(["prkctl", "--seeds", ",".join(src.seeds), "--cluster-id", CLUSTER_ID,
                   "--json", "backup", str(backup)])
        during = len(writer.acked) - len(before)
        writer.stop.set()
        writer.join(10)
        assert writer.error is None, writer.error
        assert ctl.returncode == 0, ctl.stderr
        summary = json.loads(ctl.stdout)
        assert summary["partitions"] == 4 and summary["cluster_id"] == CLUSTER_ID
        assert len(summary["snapshots"]) == 4
        for p in range(4):
            assert f"partition {p + 1}/4 (p{p}): index" in ctl.stderr
        assert during > 0, "no write was acknowledged while the backup ran"
        assert backup.exists() and not Path(str(backup) + ".tmp").exists()
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(10)
            writer.client.close()
        src.close()

    try:
        for i in dst.ids:
            r = run(["prkdb", "restore", str(backup), "--config", str(dst.root / f"node{i}.toml")])
            assert r.returncode == 0, r.stderr
            assert f"restored node {i} of cluster {RESTORED_ID!r}" in r.stdout
        dst.start_all()
        dst.wait_ready()
        with SyncClient(dst.seeds, cluster_id=RESTORED_ID, timeout=10.0) as client:
            last_before: dict[bytes, int] = {}
            for i in sorted(before):
                last_before[f"k{i % KEYS}".encode()] = i
            assert len(last_before) == KEYS
            for key, i in last_before.items():
                value = client.get(key)
                assert value is not None, f"{key!r} (acknowledged v{i} before the backup) is lost"
                got = int(value.decode().removeprefix("v"))
                assert i <= got <= writer.attempted, f"{key!r}: v{got}, acknowledged v{i}"
                assert got % KEYS == int(key.decode()[1:]), f"{key!r} holds another key's value"
            # The restored cluster takes writes.
            client.put(b"after-restore", b"yes")
            assert client.get(b"after-restore") == b"yes"
    finally:
        dst.close()
