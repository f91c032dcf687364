"""A leader's snapshot is decoded in a worker thread; the node's loop runs on.

Decoding a partition's whole state takes about a second per million keys.
On the event loop that stalled every partition of the node, so a node that
leads other partitions could miss heartbeats long enough for their
followers to elect someone else. Here the decode is held in its thread
while another partition of the same node keeps handling Raft messages.

A real single Node in-process on 127.0.0.1; its only peer (node 2) is a
configured address nobody listens on, so no partition elects itself and
"node 2" is whoever we say sends a message.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.raft import ConfState, Message, MsgType, Snapshot, SnapshotMeta
from prkdb.server.node import Node
from prkdb.state import KVStateMachine, PutCommand, encode_command
from tests.server.helpers import eventually, free_addr


async def test_a_snapshot_is_decoded_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(
        NodeConfig.default(),
        data_dir=tmp_path / "data",
        partitions=2,
        peers=(PeerConfig(1, free_addr(), free_addr()), PeerConfig(2, free_addr(), free_addr())),
        log_level="warning",
    )
    source = KVStateMachine()
    for i in range(1, 51):
        source.apply(i, encode_command(PutCommand(b"k%d" % i, b"v%d" % i)))
    snap = Snapshot(SnapshotMeta(50, 3, ConfState((1, 2))), source.snapshot())

    gate = threading.Event()
    decoders: list[threading.Thread] = []
    real_decode = KVStateMachine.decode_snapshot

    def held_decode(self: KVStateMachine, data: bytes) -> Any:
        decoders.append(threading.current_thread())
        assert gate.wait(10), "the test never released the decode"
        return real_decode(self, data)

    monkeypatch.setattr(KVStateMachine, "decode_snapshot", held_decode)
    node = Node(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        installing, other = node.drivers
        installing.deliver(Message(MsgType.SNAP, to=1, from_=2, term=3, snapshot=snap))
        await eventually(lambda: decoders)
        assert decoders[0] is not threading.main_thread()
        # While the decode is held, the loop still steps the other partition.
        other.deliver(Message(MsgType.HEARTBEAT, to=1, from_=2, term=4))
        await eventually(lambda: other.status().term == 4 and other.status().leader == 2)
        assert installing.busy and installing.sm.applied_index == 0
        gate.set()
        await eventually(lambda: installing.sm.applied_index == 50)
        assert installing.sm == source
        assert not installing.busy
        nursery.cancel_scope.cancel()
