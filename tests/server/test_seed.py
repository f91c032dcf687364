"""One seed decides every random choice of a node, so a run's timing can be replayed.

A node draws its tick phase, each partition's election timeouts and read
contexts, and the peer transport's reconnect jitter from one `random.Random`
seeded by `prkdb serve --seed N` (random otherwise, and logged in node_ready).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.server.node import Node
from tests.server.helpers import free_addr


async def _choices(tmp_path: Path, name: str, seed: int | None) -> tuple[Any, ...]:
    cfg = dataclasses.replace(
        NodeConfig.default(),
        data_dir=tmp_path / name,
        partitions=3,
        # A peer nobody listens on: no partition elects itself, nothing changes the timers.
        peers=(PeerConfig(1, free_addr(), free_addr()), PeerConfig(2, free_addr(), free_addr())),
        log_level="warning",
    )
    node = Node(cfg, seed=seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        choices = (
            node.seed,
            node.raft_loop.tick_phase,
            tuple(d.raw.core.randomized_election_timeout for d in node.drivers),
            tuple(d._ctx_prefix for d in node.drivers),
        )
        nursery.cancel_scope.cancel()
    return choices


async def test_the_same_seed_makes_the_same_choices(tmp_path: Path) -> None:
    first = await _choices(tmp_path, "a", 42)
    again = await _choices(tmp_path, "b", 42)
    other = await _choices(tmp_path, "c", 43)
    assert first == again
    assert first[0] == 42
    assert first[1:] != other[1:]


async def test_without_a_seed_each_node_draws_its_own(tmp_path: Path) -> None:
    one = await _choices(tmp_path, "a", None)
    two = await _choices(tmp_path, "b", None)
    assert one[0] != two[0] and one[1:] != two[1:]
