"""The rebuild start-up step (prkdb/server/rebuild.py) against fake peers, in process."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from prkdb.config import NodeConfig, PeerConfig
from prkdb.raft import Role
from prkdb.server import rebuild
from prkdb.server.framed import FramedStream
from prkdb.server.main import cli
from prkdb.server.rebuild import (
    MARKER,
    Marker,
    MarkerError,
    RebuildError,
    RebuildTracker,
    Target,
    floors_and_targets,
)
from prkdb.storage import WriteAheadLog
from prkdb.storage.identity import DataDirIdentity
from prkdb.wire import from_wire
from prkdb.wire.messages import HelloOk, NodeInfo, PartitionStatus, ReplicaProgress, StatusOk
from tests.integration.cluster import free_ports
from tests.server.helpers import eventually

CLUSTER = "rb-test"


class _Log:
    """Collects structlog-style calls: (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def _rec(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    info = warning = error = debug = _rec

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


def _identity(cfg: NodeConfig) -> DataDirIdentity:
    return DataDirIdentity.new(cfg.cluster_id, cfg.node_id, cfg.partitions)


def _cfg(tmp_path: Path, n: int = 3, partitions: int = 2) -> NodeConfig:
    ports = free_ports(2 * n)
    peers = tuple(PeerConfig(i, f"127.0.0.1:{ports[i - 1]}", f"127.0.0.1:{ports[n + i - 1]}")
                  for i in range(1, n + 1))
    return NodeConfig(node_id=1, cluster_id=CLUSTER, data_dir=tmp_path / "data",
                      partitions=partitions, peers=peers)


def _status(node: int, parts: list[tuple[int, int]], cluster: str = CLUSTER,
            leads: tuple[int, ...] = ()) -> StatusOk:
    """`node`'s Status: (term, commit) per partition; it leads the partitions in `leads`."""
    # A leader's progress lists itself with its last index (here commit + 2).
    nodes = tuple(NodeInfo(i, "a:1", "a:2") for i in (1, 2, 3))
    return StatusOk(1, node, cluster, nodes, tuple(
        PartitionStatus(p, node, term, commit, commit, Role.LEADER,
                        (ReplicaProgress(node, commit + 2),)) if p in leads else
        PartitionStatus(p, 0, term, commit, commit, Role.FOLLOWER)
        for p, (term, commit) in enumerate(parts)))


async def _fake_peer(cfg: NodeConfig, node: int, status: StatusOk,
                     task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Answer Hello and Status on `node`'s client port, as a live node would."""
    port = int(cfg.peer(node).client_addr.rsplit(":", 1)[1])  # type: ignore[union-attr]

    async def handle(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, 1 << 20)
        try:
            from_wire(await framed.receive())
            await framed.send_now(HelloOk(node, CLUSTER))
            from_wire(await framed.receive())
            await framed.send_now(status)
            await framed.receive()
        except Exception:
            pass
        finally:
            await framed.aclose()

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started()
    await trio.serve_listeners(handle, listeners)


def test_marker_round_trip_and_corruption(tmp_path: Path) -> None:
    assert Marker.load(tmp_path) is None
    Marker(3, None).save(tmp_path)
    assert Marker.load(tmp_path) == Marker(3, None)
    Marker(3, {0: Target(10, 12, 3), 5: Target(2, 0, 7)}).save(tmp_path)
    assert Marker.load(tmp_path) == Marker(3, {0: Target(10, 12, 3), 5: Target(2, 0, 7)})
    (tmp_path / MARKER).write_text("{not json")
    with pytest.raises(MarkerError, match="unreadable rebuild marker"):
        Marker.load(tmp_path)
    Marker.remove(tmp_path)
    assert Marker.load(tmp_path) is None


def test_floors_and_targets_take_the_highest_of_every_peer(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    floors, targets = floors_and_targets(cfg, {
        2: _status(2, [(3, 10), (7, 0)]),
        3: _status(3, [(4, 7), (6, 5)]),
    })
    assert floors == {0: 4, 1: 7}
    # Nobody leads the highest term: the lost process may have been its
    # leader, so only a committed entry of a later term will do (index 0).
    assert targets == {0: Target(10, 0, 4), 1: Target(5, 0, 7)}


def test_a_surviving_leader_of_the_highest_term_makes_the_commit_index_enough(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    _, targets = floors_and_targets(cfg, {
        2: _status(2, [(4, 10), (7, 3)], leads=(0,)),  # leads partition 0 at its top term
        3: _status(3, [(4, 7), (6, 5)], leads=(1,)),  # leads partition 1 at a stale term
    })
    # Partition 0: reaching its leader's last index (12) is enough.
    assert targets == {0: Target(10, 12, 4), 1: Target(5, 0, 7)}


async def test_rebuild_waits_for_every_peer_then_stores_floors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = _cfg(tmp_path)
    log = _Log()
    result: dict = {}
    # A fake systemd: while it waits, the node must say why and extend its start timeout.
    sd_path = f"/tmp/prkdb-rb-notify-{time.monotonic_ns()}.sock"
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(sd_path)
    sd.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", sd_path)
    notes: list[str] = []

    def notified() -> bool:
        with contextlib.suppress(BlockingIOError):
            while True:
                notes.append(sd.recv(4096).decode())
        return any("EXTEND_TIMEOUT_USEC=" in n and "waiting for node(s) [3]" in n
                   for n in notes)

    async def run_prepare() -> None:
        result["targets"] = await rebuild.prepare(cfg, log, requested=True, empty=True,
                                                     identity=_identity(cfg))

    async with trio.open_nursery() as nursery:
        await nursery.start(_fake_peer, cfg, 2, _status(2, [(3, 10), (2, 0)]))
        nursery.start_soon(run_prepare)
        # Node 3 is down: the rebuild must wait for it, saying so.
        await eventually(lambda: "rebuild_waiting_for_peers" in log.names())
        waiting = dict(log.events)["rebuild_waiting_for_peers"]
        assert waiting["missing"] == [3]
        await eventually(notified)
        sd.close()
        os.unlink(sd_path)
        assert "targets" not in result
        assert Marker.load(cfg.data_dir) == Marker(1, None)  # a crash now resumes the rebuild
        await nursery.start(_fake_peer, cfg, 3, _status(3, [(4, 7), (5, 0)]))
        await eventually(lambda: "targets" in result)
        nursery.cancel_scope.cancel()
    # Nobody reported leading: each partition waits for a later term too.
    assert result["targets"] == {0: Target(10, 0, 4), 1: Target(0, 0, 5)}
    assert Marker.load(cfg.data_dir) == Marker(1, {0: Target(10, 0, 4), 1: Target(0, 0, 5)})
    wal = WriteAheadLog.open(cfg.data_dir / "wal")
    try:
        hs = {p: wal.recovered()[p].hard_state for p in (0, 1)}
    finally:
        wal.close()
    assert (hs[0].term, hs[0].vote, hs[0].commit) == (4, 1, 0)
    assert (hs[1].term, hs[1].vote, hs[1].commit) == (5, 1, 0)


async def test_an_empty_node_of_a_cluster_with_state_detects_the_rebuild(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    log = _Log()
    async with trio.open_nursery() as nursery:
        await nursery.start(_fake_peer, cfg, 2, _status(2, [(2, 4), (2, 4)]))
        await nursery.start(_fake_peer, cfg, 3, _status(3, [(2, 4), (2, 3)]))
        with trio.fail_after(10):
            targets = await rebuild.prepare(cfg, log, requested=False, empty=True,
                                          identity=_identity(cfg))
        nursery.cancel_scope.cancel()
    assert "rebuild_detected" in log.names()
    assert targets == {0: Target(4, 0, 2), 1: Target(4, 0, 2)}


async def test_a_new_cluster_starts_normally(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    log = _Log()
    async with trio.open_nursery() as nursery:
        # One peer is up but empty (term 0), the other not listening yet.
        await nursery.start(_fake_peer, cfg, 2, _status(2, [(0, 0), (0, 0)]))
        with trio.fail_after(10):
            assert await rebuild.prepare(cfg, log, requested=False, empty=True,
                                          identity=_identity(cfg)) is None
        nursery.cancel_scope.cancel()
    assert log.names() == []
    assert not (cfg.data_dir / MARKER).exists()


async def test_peers_of_another_cluster_or_layout_stop_the_rebuild(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(_fake_peer, cfg, 2, _status(2, [(1, 1)]))  # one partition, not 2
        await nursery.start(_fake_peer, cfg, 3, _status(3, [(1, 1), (1, 1)]))
        with trio.fail_after(10), pytest.raises(RebuildError, match="configs disagree"):
            await rebuild.prepare(cfg, _Log(), requested=True, empty=True,
                              identity=_identity(cfg))
        nursery.cancel_scope.cancel()


async def test_one_node_cluster_cannot_rebuild_and_marker_must_be_ours(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, n=1)
    with pytest.raises(RebuildError, match="no peer"):
        await rebuild.prepare(cfg, _Log(), requested=True, empty=True,
                              identity=_identity(cfg))
    cfg3 = _cfg(tmp_path)
    Marker(2, None).save(cfg3.data_dir)
    with pytest.raises(RebuildError, match="belongs to node 2"):
        await rebuild.prepare(cfg3, _Log(), requested=False, empty=True,
                              identity=_identity(cfg3))


def test_tracker_forgets_partitions_then_deletes_the_marker(tmp_path: Path) -> None:
    targets = {0: Target(5, 5, 2), 1: Target(9, 0, 3)}
    Marker(1, targets).save(tmp_path)
    log = _Log()
    t = RebuildTracker(tmp_path, 1, targets, log)
    assert not t.reached(0, 4, 9, 9) and t.reached(0, 5, 1, 2)  # the leader's last index
    assert not t.reached(1, 9, 3, 4) and not t.reached(1, 8, 4, 4) and t.reached(1, 9, 4, 4)
    # No leader of term 3 at the survey: one elected later (we follow term 3) will do.
    assert t.reached(1, 9, 3, 3) and not t.reached(1, 9, 2, 3)
    t.caught_up(0, 6)
    assert Marker.load(tmp_path) == Marker(1, {1: Target(9, 0, 3)})
    t.caught_up(0, 7)  # twice is harmless
    t.caught_up(1, 9)
    assert Marker.load(tmp_path) is None
    assert log.names() == ["partition_rebuilt", "partition_rebuilt", "rebuild_complete"]


def test_serve_rebuild_refuses_a_data_dir_with_data(tmp_path: Path) -> None:
    cfg_path = tmp_path / "n.toml"
    data = tmp_path / "data"
    cfg_path.write_text(f'[node]\nid = 1\ndata_dir = "{data}"\n')
    data.mkdir()
    (data / "keep").write_bytes(b"precious")
    before = hashlib.sha256((data / "keep").read_bytes()).hexdigest()
    result = CliRunner().invoke(cli, ["serve", "--config", str(cfg_path), "--rebuild"])
    assert result.exit_code == 2
    assert "--rebuild needs an empty data dir" in result.output and str(data) in result.output
    assert hashlib.sha256((data / "keep").read_bytes()).hexdigest() == before


async def test_two_nodes_rebuilding_at_once_answer_each_other(tmp_path: Path) -> None:
    # Each waits for every other node; a rebuilding node must therefore answer
    # Status itself (empty) or the two would wait for each other forever.
    cfg1 = _cfg(tmp_path)
    cfg2 = dataclasses.replace(cfg1, node_id=2, data_dir=tmp_path / "data2")
    results: dict[int, dict | None] = {}

    async def rebuild_node(cfg: NodeConfig) -> None:
        results[cfg.node_id] = await rebuild.prepare(cfg, _Log(), requested=True, empty=True,
                              identity=_identity(cfg))

    async with trio.open_nursery() as nursery:
        await nursery.start(_fake_peer, cfg1, 3, _status(3, [(5, 20), (5, 30)]))
        nursery.start_soon(rebuild_node, cfg1)
        nursery.start_soon(rebuild_node, cfg2)
        await eventually(lambda: len(results) == 2, timeout=20)
        nursery.cancel_scope.cancel()
    both = {0: Target(20, 0, 5), 1: Target(30, 0, 5)}
    assert results == {1: both, 2: both}


async def test_a_resumed_rebuild_that_got_there_before_its_crash_ends_at_start(
    tmp_path: Path,
) -> None:
    # Crash after the durable commit reached the target but before the marker
    # forgot the partition: with no write coming, nothing else would end it.
    from prkdb.raft import Entry, HardState
    from prkdb.server.node import Node

    cfg = dataclasses.replace(_cfg(tmp_path), log_level="warning")
    wal = WriteAheadLog.open(cfg.data_dir / "wal")
    wal.append_entries(0, [Entry(3, i, data=b"") for i in range(1, 6)])
    wal.append_hard_state(0, HardState(3, 1, 5))
    wal.sync()
    wal.close()
    Marker(1, {0: Target(5, 0, 3)}).save(cfg.data_dir)
    node = Node(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await eventually(lambda: not node.drivers[0].raw.recovering)
        assert Marker.load(cfg.data_dir) is None
        nursery.cancel_scope.cancel()


async def test_a_one_node_cluster_marked_for_rebuild_refuses_to_start(tmp_path: Path) -> None:
    # `prkctl wal repair` marks the dir; with no peer to catch up from, the
    # cut may have lost acknowledged writes for good: say so, never start.
    cfg = _cfg(tmp_path, n=1)
    Marker(1, None).save(cfg.data_dir)
    with pytest.raises(RebuildError, match="one-node cluster"):
        await rebuild.prepare(cfg, _Log(), requested=False, empty=False,
                              identity=_identity(cfg))
    assert Marker.load(cfg.data_dir) == Marker(1, None)
