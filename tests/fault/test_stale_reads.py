"""Scenario 4: STALE reads under partitions may lag, but never invent a value and
never go backwards on one node (per key: version and mod_revision non-decreasing)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
import trio

from prkdb.partitioning import partition_for
from prkdb.wire.messages import Get, GetOk, ReadConsistency
from tests.fault.netns import CLIENT_PORT, WireConn
from tests.fault.workload import connect

pytestmark = pytest.mark.slow

KEYS = [b"stale-%d" % i for i in range(6)]
DURATION = 14.0


async def test_stale_reads_lag_but_never_invent_or_regress(make_cluster) -> None:
    c = make_cluster(3, partitions=4)
    written: dict[bytes, set[bytes]] = defaultdict(set)  # every value ever sent
    stop = threading.Event()
    reads: dict[int, int] = defaultdict(int)
    problems: list[str] = []

    def reader(node: int) -> None:
        last: dict[bytes, tuple[int, int, int]] = {}
        conn = None
        rid = 0
        while not stop.is_set():
            for key in KEYS:
                rid += 1
                try:
                    if conn is None:
                        conn = WireConn(CLIENT_PORT, host=c.addr(node), timeout=1.0)
                    part = partition_for(key, c.partitions)
                    reply = conn.call(Get(rid, key, ReadConsistency.STALE, part))
                except OSError:
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.05)
                    continue
                if not isinstance(reply, GetOk):
                    continue
                reads[node] += 1
                v = reply.value
                if v is not None and v not in written[key]:
                    problems.append(f"node {node} {key!r}: {v!r} was never written")
                now = (reply.version, reply.mod_revision, reply.applied_index)
                prev = last.get(key)
                if prev is not None and any(a < b for a, b in zip(now, prev)):
                    problems.append(f"node {node} {key!r}: went back {prev} -> {now}")
                last[key] = now
        if conn is not None:
            conn.close()

    acked = 0

    async def writer(proc: int) -> None:
        nonlocal acked
        async with connect(c.seeds, timeout=1.0, attempt=0.4) as client:
            n = 0
            while not stop.is_set():
                n += 1
                key = KEYS[n % len(KEYS)]
                value = b"w%d-%d" % (proc, n)
                written[key].add(value)  # before sending: a read may see it at once
                try:
                    await client.put(key, value)
                    acked += 1
                except Exception:
                    await trio.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(i,)) for i in c.ids]
    for t in threads:
        t.start()
    faults = 0
    try:
        async with trio.open_nursery() as nursery:
            for proc in range(3):
                nursery.start_soon(writer, proc)
            deadline = time.monotonic() + DURATION
            i = 0
            while time.monotonic() < deadline:
                i += 1
                node = 1 + i % c.n
                if i % 3 == 0:
                    c.pause(node)
                else:
                    c.isolate(node)
                faults += 1
                await trio.sleep(1.5)
                c.heal()
                await trio.sleep(0.7)
            stop.set()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    print(f"\nstale reads per node {dict(reads)}, {acked} acked writes, {faults} faults")
    assert not problems, problems[:10]
    assert all(reads[i] > 50 for i in c.ids), dict(reads)
    assert acked > 100
