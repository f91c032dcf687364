"""Nodes whose configs disagree on the layout never exchange Raft messages.

Unit tests of the comparison, and three real Nodes in one process where
node 3's config says 3 partitions and the others say 2: nodes 1 and 2 must
quarantine node 3 (and it them), and still elect leaders between the two
of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.errors import ErrorCode
from prkdb.raft import Role
from prkdb.server.framed import FramedStream
from prkdb.server.layout import ask_peers, layout_problem
from prkdb.server.node import Node
from prkdb.wire import from_wire
from prkdb.wire.messages import Error, Hello, NodeInfo, PartitionStatus, StatusOk
from tests.server.helpers import eventually, free_addr


def _cfg(partitions: int = 2, ids: tuple[int, ...] = (1, 2, 3)) -> NodeConfig:
    peers = tuple(PeerConfig(i, free_addr(), free_addr()) for i in ids)
    return dataclasses.replace(NodeConfig.default(), cluster_id="lay", partitions=partitions,
                               peers=peers, log_level="warning")


def _status(node: int, cluster: str = "lay", ids: tuple[int, ...] = (1, 2, 3),
            partitions: int = 2) -> StatusOk:
    return StatusOk(1, node, cluster, tuple(NodeInfo(i, "a:1", "a:2") for i in ids), tuple(
        PartitionStatus(p, 0, 1, 0, 0, Role.FOLLOWER) for p in range(partitions)))


def test_layout_problem_names_each_difference() -> None:
    cfg = _cfg()
    assert layout_problem(cfg, 2, _status(2)) is None
    assert "answers as node 3" in (layout_problem(cfg, 2, _status(3)) or "")
    assert "cluster 'other'" in (layout_problem(cfg, 2, _status(2, cluster="other")) or "")
    assert "lists nodes [1, 2, 3, 4]" in (
        layout_problem(cfg, 2, _status(2, ids=(1, 2, 3, 4))) or "")
    assert "has 3 partitions" in (layout_problem(cfg, 2, _status(2, partitions=3)) or "")


async def test_a_node_with_another_layout_is_quarantined(tmp_path: Path) -> None:
    base = _cfg()
    cfgs = [dataclasses.replace(base, node_id=i, data_dir=tmp_path / f"n{i}") for i in (1, 2, 3)]
    cfgs[2] = dataclasses.replace(cfgs[2], partitions=3)  # the typo
    nodes = [Node(c) for c in cfgs]
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        good, bad = nodes[:2], nodes[2]
        await eventually(lambda: all(3 in n.transport.quarantined for n in good)
                         and set(bad.transport.quarantined) == {1, 2}, timeout=20)
        assert "3 partitions" in good[0].transport.quarantined[3]
        for n in good:  # no link to node 3 any more, and no reader of its frames
            assert 3 not in n.transport.connected
            await eventually(lambda n=n: not n.transport._incoming.get(3))
        # The two that agree carry on: every partition gets a leader among them.
        await eventually(lambda: all(any(n.drivers[p].role == Role.LEADER for n in good)
                                     for p in (0, 1)), timeout=20)
        # Nothing reaches node 3 any more: it leads nothing and follows nobody.
        assert all(d.role != Role.LEADER for d in bad.drivers)
        nursery.cancel_scope.cancel()


async def test_a_node_of_another_version_is_asked_again_not_quarantined() -> None:
    """Rolling upgrade: a node not yet upgraded refuses our client hello with BAD_VERSION.

    That says nothing about its layout: it is "not reachable yet" (asked
    again later), never a mismatch (which would quarantine it).
    """
    cfg = dataclasses.replace(_cfg(), node_id=1)
    old = cfg.peer(2)
    assert old is not None
    host, port = old.client_addr.rsplit(":", 1)
    hellos = []

    async def old_node(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, 1 << 16)
        hello = from_wire(await framed.receive())
        assert isinstance(hello, Hello)
        hellos.append(hello.protocol_version)
        await framed.send_now(Error(0, ErrorCode.BAD_VERSION, "protocol version 3 is not "
                                    "supported", {"supported": [2]}))
        await framed.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(int(port), host=host)
        nursery.start_soon(trio.serve_listeners, old_node, listeners)
        survey = await ask_peers(cfg, [2], 3.0)
        nursery.cancel_scope.cancel()
    assert hellos == [3]
    assert survey.mismatched == {} and survey.answers == {}
    assert "node 2 speaks another protocol" in survey.unreachable[2]
