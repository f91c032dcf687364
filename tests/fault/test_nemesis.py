"""Scenario 3: random nemesis (partitions, kill -9, SIGSTOP) under a mixed workload.

Clients do puts, deletes, CAS, LINEARIZABLE and FOLLOWER reads on a few hot
keys, and two-key transactions on a few groups (each group's keys share a
partition through a hash tag: a "move" that puts both keys if key a still
holds what the worker last saw, else reads the pair; see
tests/fault/workload.py). The whole history must be linearizable: per key
register for the single-key ops (CAS included, both outcomes), per group for
the txns (the branch taken must be the one the compare allowed, and no read
may see a pair torn between two txns). After healing every node must hold the
same value for every key, equal to a final linearizable read (so no
acknowledged write was lost).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest
import trio

from prkdb.client import ReadConsistency
from prkdb.testing.linearizability import INF, History, Op, check_history, check_ops
from tests.fault.netns import NetnsCluster, wait_replicas_agree
from tests.fault.secure import SecureNetnsCluster
from tests.fault.workload import (
    NemesisLog,
    Stats,
    connect,
    mixed_worker,
    random_nemesis,
    rec_get,
    rec_read_groups,
    txn_group,
    txn_worker,
)

pytestmark = pytest.mark.slow

DURATION = 25.0  # seconds of faults per cluster size
SECURE_DURATION = 12.0  # the TLS-and-auth run (its plain twin runs longer)
WORKERS = 6
TXN_WORKERS = 3
GROUPS = 3  # txn groups ({g0}:a, {g0}:b, ...): few, so that txns contend
KEYS = [b"key-%d" % i for i in range(8)]
GROUP_KEYS = [k for g in range(GROUPS) for k in txn_group(g)[1:]]


@pytest.mark.parametrize("nodes", [3, 5])
async def test_random_nemesis_history_is_linearizable(make_cluster, nodes: int) -> None:
    await run_nemesis(make_cluster(nodes, partitions=4), DURATION)


async def test_random_nemesis_with_tls_and_auth(make_cluster) -> None:
    """The same, once with TLS on every listener and auth on (issue 18): root's client."""
    c = make_cluster(3, partitions=4, cluster_class=SecureNetnsCluster)
    await run_nemesis(c, SECURE_DURATION, **c.client_kwargs())


async def run_nemesis(c: NetnsCluster, duration: float, **client_kw: Any) -> None:
    """Faults for `duration` under the mixed workload, then heal and check (module doc)."""
    nodes = len(c.ids)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"\nseed {seed} nodes {nodes}")
    h = History()
    stats = Stats()
    nem = NemesisLog()
    stop = trio.Event()
    async with connect(c.seeds, **client_kw) as client:
        async with trio.open_nursery() as nursery:
            for p in range(WORKERS):
                nursery.start_soon(mixed_worker, client, h, p, KEYS, stop, stats,
                                   random.Random(rng.random()), 1.0)
            for p in range(TXN_WORKERS):
                nursery.start_soon(txn_worker, client, h, WORKERS + p, GROUPS, stop, stats,
                                   random.Random(rng.random()), 1.0)
            nursery.start_soon(random_nemesis, c, stop, random.Random(rng.random()), nem, h.t0)
            await trio.sleep(duration)
            stop.set()
        phases = [f"faults {time.monotonic() - h.t0:.1f}s"]
        c.heal()
        for i in c.ids:
            if not c.alive(i):
                c.start(i)
        await trio.to_thread.run_sync(c.wait_ready)
        phases.append(f"ready {time.monotonic() - h.t0:.1f}s")
        final = {}
        for k in KEYS:
            for _ in range(10):
                ok, v = await rec_get(client, h, 999, k, ReadConsistency.LINEARIZABLE, stats, 5.0)
                if ok:
                    final[k] = v
                    break
            else:
                raise AssertionError(f"final read of {k!r} failed: {stats.summary()}")
        final.update(await rec_read_groups(client, h, 999, GROUPS, stats, 5.0))
    phases.append(f"final reads {time.monotonic() - h.t0:.1f}s")
    agreed = await trio.to_thread.run_sync(wait_replicas_agree, c, KEYS + GROUP_KEYS)
    phases.append(f"replicas agree {time.monotonic() - h.t0:.1f}s")
    t = time.monotonic()
    result = h.check()
    check_s = time.monotonic() - t
    print(f"\nseed {seed} nodes {nodes}: {len(h.ops)} ops {h.counts()}")
    print(f"faults {dict(nem.faults)}; unavailable: {nem.unavailable}")
    print("phases: " + ", ".join(phases))
    # The SDK documents Timeout on a write as "surely not applied": check that too.
    strict = [
        dataclasses.replace(op, status="fail") if op.status == "info" and "Timeout(" in op.error
        else op
        for op in h.ops
    ]
    strict_result = check_history(strict)
    print(f"{stats.summary()}\ncheck: {result.report()[:300]} in {check_s:.1f}s")
    print(f"with Timeout = not applied: {strict_result.report()[:2000]}")
    assert result.ok, f"seed {seed}\n{result.report()}\nfaults:\n" + "\n".join(nem.events)
    # Not vacuous: group 0's history up to its first read of another txn's write
    # (a failure branch or a read-only txn) passes, and fails once that read is torn.
    group = [op for op in h.ops if op.key == txn_group(0)[0]]
    first = min((op for op in group if op.status == "ok" and op.result[1][0] is not None
                 and not (op.result[0] and op.txn.writes)), key=lambda op: op.complete)
    window = history_until(group, first.complete)
    torn = dataclasses.replace(first, result=(first.result[0], (b"torn", *first.result[1][1:])))
    assert check_ops(window, shrink=False).verdict == "ok"
    assert check_ops([torn if op is first else op for op in window],
                     shrink=False).verdict == "fail"
    assert agreed == final, f"replicas {agreed} != linearizable reads {final}"
    oks = sum(n for k, n in h.counts().items() if k.endswith(":ok"))
    assert oks > 200, f"too little progress to prove anything: {h.counts()}"
    # Both outcomes of CAS and of the txn compare were exercised (and checked).
    for name in ("cas:ok", "cas:compare-failed", "txn:ok", "txn:compare-failed", "txn-read:ok"):
        assert stats.ops[name] > 5, f"{name} too rare to prove anything: {stats.summary()}"


def history_until(ops: list[Op], cut: float) -> list[Op]:
    """The history as it stood at `cut`: later ops dropped, later completions unknown.

    A prefix of a linearizable history is linearizable once every op still
    running at `cut` is open-ended: a write becomes info, a read is dropped.
    """
    out = []
    for op in ops:
        if op.invoke > cut:
            continue
        if op.status == "ok" and op.complete > cut:
            if op.kind == "get" or (op.txn is not None and not op.txn.writes):
                continue
            op = dataclasses.replace(op, status="info", result=None, complete=INF)
        out.append(op)
    return out
