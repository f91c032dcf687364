"""RebuildFence: a node forgets every ack of a peer's previous process, then answers.

Three real Nodes in one process on 127.0.0.1. The fence must drop the
peer's incoming connections (with whatever they hold unread) and make every
leader reset that peer's progress, and the cluster must keep committing
afterwards (the peer reconnects and is probed from the start).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.raft import Role
from prkdb.server.layout import fetch_status
from prkdb.server.node import Node
from prkdb.state import PutCommand, encode_command
from tests.server.helpers import eventually, free_addr


def _configs(tmp_path: Path) -> list[NodeConfig]:
    peers = tuple(PeerConfig(i, free_addr(), free_addr()) for i in (1, 2, 3))
    base = dataclasses.replace(NodeConfig.default(), cluster_id="fence", partitions=2,
                               peers=peers, log_level="warning")
    return [dataclasses.replace(base, node_id=i, data_dir=tmp_path / f"n{i}") for i in (1, 2, 3)]


async def test_fence_forgets_the_peer_acks_and_the_cluster_goes_on(tmp_path: Path) -> None:
    cfgs = _configs(tmp_path)
    nodes = [Node(c) for c in cfgs]
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)

        def leader_of(p: int) -> Node | None:
            for n in nodes:
                if n.drivers[p].role == Role.LEADER:
                    return n
            return None

        await eventually(lambda: all(leader_of(p) for p in (0, 1)), timeout=20)
        lead = leader_of(0)
        assert lead is not None
        victim = next(n for n in nodes if n is not lead).cfg.node_id
        progress = lead.drivers[0].raw.core.progress
        await eventually(lambda: progress[victim].match > 0)
        assert lead.transport._incoming.get(victim)  # its connection to us is open

        # Record what each partition's fence did, at the moment it did it.
        forgot: list[tuple[int, int, int, Role]] = []  # (partition, node, match after, role)
        for d in lead.drivers:
            real = d.raw.forget_acks

            def spy(node: int, d=d, real=real) -> None:
                real(node)
                pr = d.raw.core.progress.get(node)
                forgot.append((d.partition, node, -1 if pr is None else pr.match, d.role))

            d.raw.forget_acks = spy  # type: ignore[method-assign]
        old_readers = set(lead.transport._incoming[victim])

        # Over the wire, as a rebuilding node asks it.
        status = await fetch_status(cfgs[victim - 1], lead.cfg.node_id, fence=True)
        assert status.node_id == lead.cfg.node_id
        assert {p.partition for p in status.partitions} == {0, 1}
        # Answered only after the fence: the old connection's reader was
        # cancelled, and every partition ran its fence (leaders reset the match).
        assert all(scope.cancel_called for scope in old_readers)
        assert sorted(p for p, _, _, _ in forgot) == [0, 1]
        assert all(node == victim for _, node, _, _ in forgot)
        assert all(match == 0 for _, _, match, role in forgot if role == Role.LEADER)
        assert any(role == Role.LEADER for _, _, _, role in forgot)

        # The cluster goes on: the peer reconnects, is probed and acks again.
        done = trio.Event()
        result: list = []

        def cb(value: object, error: BaseException | None) -> None:
            result.append(error or value)
            done.set()

        lead.drivers[0].submit_write(encode_command(PutCommand(b"k", b"v")),
                                     trio.current_time() + 10, cb)
        with trio.fail_after(10):
            await done.wait()
        assert not isinstance(result[0], BaseException), result
        await eventually(lambda: progress[victim].match >= lead.drivers[0].raw.core.log.committed)
        nursery.cancel_scope.cancel()


async def test_a_member_whose_data_dir_id_changes_is_fenced(tmp_path: Path) -> None:
    cfgs = _configs(tmp_path)
    nodes = [Node(c) for c in cfgs]
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        a, b = nodes[0], nodes[1]
        await eventually(lambda: b.cfg.node_id in a.transport.peer_dir_ids, timeout=20)
        assert a.transport.peer_dir_ids[b.cfg.node_id] == b.transport.data_dir_id
        fenced: list[int] = []
        real = a.fence_peer

        async def spy(node_id: int) -> None:
            fenced.append(node_id)
            await real(node_id)

        a.transport.on_dir_changed = spy
        # The same id again (a plain reconnect) is no news.
        a.transport.fence(b.cfg.node_id)
        await eventually(lambda: a.transport._incoming.get(b.cfg.node_id))
        assert fenced == []
        # Node 2 comes back with another disk behind its back.
        b.transport.data_dir_id = "f" * 32
        a.transport.fence(b.cfg.node_id)
        await eventually(lambda: fenced == [b.cfg.node_id], timeout=10)
        assert a.transport.peer_dir_ids[b.cfg.node_id] == "f" * 32
        nursery.cancel_scope.cancel()
