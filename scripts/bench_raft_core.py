#!/usr/bin/env python3
"""Benchmark of the sans-IO Raft core alone (no disk, no network, no checker).

A 3-node in-process cluster; the leader gets proposals of 100 bytes in
batches of 64; every Ready is persisted into MemoryStorage and its messages
delivered in order. Prints committed entries per second of CPU time, and
for scale the same loop's cost with the core replaced by a list append (the
baseline measured in this run).

    python scripts/bench_raft_core.py [--entries 200000] [--batch 64] [--size 100]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prkdb.raft import MemoryStorage, RaftConfig, RawNode, Role


class Node:
    def __init__(self, node_id: int, voters: tuple[int, ...]) -> None:
        self.storage = MemoryStorage(voters)
        self.raw = RawNode(
            RaftConfig(id=node_id, peers=voters, rng=random.Random(node_id)), self.storage
        )
        self.applied = 0


def drain(nodes: dict[int, Node]) -> None:
    """Run every node's Ready loop and deliver messages until quiet."""
    outbox: list = []
    busy = True
    while busy:
        busy = False
        for n in nodes.values():
            while n.raw.has_ready():
                busy = True
                rd = n.raw.ready()
                outbox.extend(rd.messages)
                if rd.entries:
                    n.storage.append(rd.entries)
                if rd.hard_state is not None:
                    n.storage.set_hard_state(rd.hard_state)
                outbox.extend(rd.messages_after_persist)
                n.applied += len(rd.committed_entries)
                n.raw.advance(rd)
        while outbox:
            busy = True
            batch, outbox = outbox, []
            for m in batch:
                nodes[m.to].raw.step(m)


def run(entries: int, batch: int, size: int) -> tuple[float, int]:
    voters = (1, 2, 3)
    nodes = {i: Node(i, voters) for i in voters}
    nodes[1].raw.campaign()
    drain(nodes)
    assert nodes[1].raw.core.role == Role.LEADER
    leader = nodes[1].raw
    payload = [bytes(size)] * batch
    start = time.process_time()
    proposed = 0
    while proposed < entries:
        leader.propose_many(payload)
        proposed += batch
        drain(nodes)
    cpu = time.process_time() - start
    committed = min(n.raw.core.log.committed for n in nodes.values()) - 1  # minus the no-op
    return cpu, committed


def baseline(entries: int, batch: int, size: int) -> float:
    """Cost of just creating the same payloads and storing them 3 times."""
    store: list[list[bytes]] = [[], [], []]
    start = time.process_time()
    proposed = 0
    while proposed < entries:
        for s in store:
            s.extend(bytes(size) for _ in range(batch))
        proposed += batch
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    cpu, committed = run(args.entries, args.batch, args.size)
    base = baseline(args.entries, args.batch, args.size)
    rate = committed / cpu
    print(f"3-node core, {args.size}-byte entries in batches of {args.batch}")
    print(f"committed on all nodes: {committed:,} entries in {cpu:.2f} s CPU")
    print(f"throughput: {rate:,.0f} committed entries per CPU second (target >= 100,000)")
    print(f"baseline (payload creation x3 only): {args.entries / base:,.0f} entries/s; "
          f"core costs {cpu / base:.1f}x the baseline")


if __name__ == "__main__":
    main()
