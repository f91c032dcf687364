"""A follower that installs a leader's snapshot ends the watches that may have missed events.

A real single Node in-process whose only peer (node 2) is an address nobody
listens on, so "node 2" is whoever sends a message (as test_snapshot_install.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.errors import Unavailable
from prkdb.raft import ConfState, Message, MsgType, Snapshot, SnapshotMeta
from prkdb.server.node import Node
from prkdb.state import KVStateMachine, PutCommand, encode_command
from tests.server.helpers import eventually, free_addr
from tests.server.test_watch import FakeSink


async def test_a_snapshot_install_ends_watches_behind_it_and_keeps_the_hook(
        tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        NodeConfig.default(),
        data_dir=tmp_path / "data",
        partitions=1,
        peers=(PeerConfig(1, free_addr(), free_addr()), PeerConfig(2, free_addr(), free_addr())),
        log_level="warning",
    )
    source = KVStateMachine()
    for i in range(1, 51):
        source.apply(i, encode_command(PutCommand(b"k%d" % i, b"v%d" % i)))
    snap = Snapshot(SnapshotMeta(50, 3, ConfState((1, 2))), source.snapshot())
    node = Node(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        driver = node.drivers[0]
        behind, ahead = FakeSink(), FakeSink()
        driver.open_watch(behind, 1, b"", None, 0, False)
        driver.open_watch(ahead, 2, b"", None, 60, False)  # a cursor past the snapshot
        driver.deliver(Message(MsgType.SNAP, to=1, from_=2, term=3, snapshot=snap))
        await eventually(lambda: driver.applied_index == 50)
        assert [(rid, type(e)) for rid, e in behind.ended] == [(1, Unavailable)]
        assert ahead.ended == []
        assert len(driver.watches) == 1
        assert driver.sm.on_events is not None  # the installed machine still reports events
        assert driver.sm.events.oldest == 50
        nursery.cancel_scope.cancel()
