"""A real 3-node cluster (processes on 127.0.0.1) driven through the SDK."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from prkdb.client import OutcomeUnknown, PrkDbClient, ReadConsistency, SyncClient
from prkdb.errors import PrkdbError
from prkdb.partitioning import partition_for
from tests.integration.cluster import CLUSTER_ID, LocalCluster

pytestmark = pytest.mark.slow


def _connect(c: LocalCluster, timeout: float = 10.0):
    return PrkDbClient.connect(c.seeds, cluster_id=CLUSTER_ID, timeout=timeout)


def _key_in(partition: int, partitions: int, prefix: bytes = b"k") -> bytes:
    for i in range(100_000):
        k = prefix + b"-%d" % i
        if partition_for(k, partitions) == partition:
            return k
    raise AssertionError("no key found")


async def test_kv_operations_at_every_read_level(cluster3: LocalCluster) -> None:
    async with _connect(cluster3) as client:
        r = await client.put(b"alpha", b"1")
        assert r.version == 1
        assert await client.get(b"alpha") == b"1"
        for level in ReadConsistency:
            got = await client.get_with_consistency(b"alpha", level)
            # STALE may lag: it returns the value or (before it applied) None.
            assert got == b"1" or (level == ReadConsistency.STALE and got is None)
        r = await client.put(b"alpha", b"2")
        assert r.version == 2
        ok = await client.cas(b"alpha", expected_value=b"2", new_value=b"3")
        assert ok.succeeded
        failed = await client.cas(b"alpha", expected_value=b"2", new_value=b"4")
        assert not failed.succeeded
        assert await client.get(b"alpha") == b"3"
        await client.delete(b"alpha")
        assert await client.get(b"alpha") is None
        k1 = _key_in(1, cluster3.partitions, b"b")
        k2 = _key_in(1, cluster3.partitions, b"c")
        await client.batch([("put", k1, b"x"), ("put", k2, b"y")])
        assert await client.get(k1) == b"x" and await client.get(k2) == b"y"
        await client.batch([("delete", k1), ("put", k2, b"z")])
        assert await client.get(k1) is None and await client.get(k2) == b"z"


async def test_follower_reads_see_every_acknowledged_write(cluster3: LocalCluster) -> None:
    async with _connect(cluster3) as client:
        for i in range(120):
            key = b"fr-%d" % (i % 17)  # several keys, all partitions
            await client.put(key, b"v%d" % i)
            got = await client.get_with_consistency(key, ReadConsistency.FOLLOWER)
            assert got == b"v%d" % i, (i, got)


def test_sync_client_round_trip(cluster3: LocalCluster) -> None:
    with SyncClient(cluster3.seeds, cluster_id=CLUSTER_ID, timeout=10) as client:
        client.put(b"sync", b"yes")
        assert client.get(b"sync") == b"yes"
        assert client.get_with_consistency(b"sync", ReadConsistency.FOLLOWER) == b"yes"
        client.delete(b"sync")
        assert client.get(b"sync") is None


async def _write_load(client: PrkDbClient, prefix: bytes, acked: dict[bytes, bytes],
                      stop: trio.Event, gaps: list[float], errors: list[str]) -> None:
    last_ok = time.monotonic()
    i = 0
    while not stop.is_set():
        key = prefix + b"-%d" % i
        val = b"v%d" % i
        try:
            await client.put(key, val, timeout=10)
            acked[key] = val
            now = time.monotonic()
            gaps.append(now - last_ok)
            last_ok = now
        except OutcomeUnknown:
            pass  # may or may not be there: not counted as acknowledged
        except PrkdbError as e:
            errors.append(repr(e))
        i += 1


async def test_kill_leader_under_write_load(cluster3: LocalCluster) -> None:
    acked: dict[bytes, bytes] = {}
    gaps: list[float] = []
    errors: list[str] = []
    stop = trio.Event()
    async with _connect(cluster3) as client:
        leader = cluster3.wait_ready()[0]
        async with trio.open_nursery() as n:
            for w in range(4):
                n.start_soon(_write_load, client, b"w%d" % w, acked, stop, gaps, errors)
            await trio.sleep(1.0)
            before = len(acked)
            await trio.to_thread.run_sync(cluster3.kill, leader)
            await trio.sleep(3.0)
            stop.set()
        assert len(acked) > before + 20, f"writes did not resume: {before} -> {len(acked)}"
        print(f"\nkill -9 leader {leader}: {len(acked)} writes acknowledged, "
              f"longest gap between acknowledgements {max(gaps):.3f}s, errors {len(errors)}")
        for key, val in acked.items():
            assert await client.get(key) == val, key


async def test_full_restart_keeps_acknowledged_data(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 3)
    try:
        c.start_all()
        c.wait_ready()
        async with _connect(c) as client:
            for i in range(200):
                await client.put(b"r-%d" % i, b"%d" % i)
        for i in c.ids:
            assert c.terminate(i) == 0
        c.start_all()
        await trio.to_thread.run_sync(c.wait_ready)
        async with _connect(c) as client:
            for i in range(200):
                assert await client.get(b"r-%d" % i) == b"%d" % i
    finally:
        c.close()


def _val(i: int) -> bytes:
    return (b"x%d" % i).ljust(100, b".")


async def test_lagging_node_catches_up_through_snapshot(tmp_path: Path) -> None:
    # Client frames are capped at 4 KiB here, far below the snapshot's size:
    # snapshots travel between nodes under the separate peer frame limit.
    limits = "[limits]\nmax_frame = 4096\nmax_key_size = 1024\nmax_value_size = 1024\n\n"
    c = LocalCluster(tmp_path, 3, snapshot_entries=100, extra=limits)
    try:
        c.start_all()
        c.wait_ready()
        # Node 3 misses everything below: it can only catch up from a snapshot.
        await trio.to_thread.run_sync(c.kill, 3)
        async with _connect(c) as client, trio.open_nursery() as n:
            for w in range(8):
                async def writer(w: int = w) -> None:
                    for i in range(150):
                        await client.put(b"s%d-%d" % (w, i), _val(i))
                n.start_soon(writer)
        c.start(3)
        await trio.to_thread.run_sync(c.wait_ready)
        assert await trio.to_thread.run_sync(c.wait_for_log, 3, "installed_snapshot")
        deadline = trio.current_time() + 20
        # Every key readable on node 3 itself (STALE = its own state machine),
        # once it applied what the leaders have.
        async with PrkDbClient.connect([c.seeds[2]], cluster_id=CLUSTER_ID, timeout=10) as solo:
            missing = [(w, i) for w in range(8) for i in range(150)]
            while missing and trio.current_time() < deadline:
                missing = [
                    (w, i) for (w, i) in missing
                    if await solo.get_with_consistency(b"s%d-%d" % (w, i),
                                                       ReadConsistency.FOLLOWER) != _val(i)
                ]
            assert not missing
    finally:
        c.close()


async def test_sigterm_on_leader_hands_over_without_client_errors(cluster3: LocalCluster) -> None:
    leaders = cluster3.wait_ready()
    victim = leaders[0]
    acked: dict[bytes, bytes] = {}
    gaps: list[float] = []
    errors: list[str] = []
    stop = trio.Event()
    async with _connect(cluster3) as client:
        async with trio.open_nursery() as n:
            for w in range(4):
                n.start_soon(_write_load, client, b"t%d" % w, acked, stop, gaps, errors)
            await trio.sleep(0.5)
            code = await trio.to_thread.run_sync(cluster3.terminate, victim)
            await trio.sleep(1.0)
            stop.set()
        assert code == 0
        log = cluster3.log(victim)
        assert "handed_off_leadership" in log and "still_leading=[]" in log, log[-2000:]
        assert errors == []
        for key, val in acked.items():
            assert await client.get(key) == val
