"""The key API through the SDK on real processes while processes die (issue 16's proof).

- A scan of 10,000 keys across 8 partitions, paged (`scan_iter`, 100 keys a
  partition page), returns every key exactly once and in key order while the
  leader of the partition it is about to read is killed (kill -9) mid-scan,
  and while other keys of the range come and go.
- A client process holding a kept-alive lease with keys (the SDK's
  `client.lease`) is killed (SIGKILL): its keys are gone within TTL +
  election time, and never before its TTL; also when its partition's leader
  is killed at the same moment (the new leader gives the lease a full TTL
  again, so the bound is then TTL + an election).

Ticks are 20 ms (election timeout 200-400 ms); the lease TTL floor is lowered
to 1 s so the waits stay short.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.client import PrkDbClient
from prkdb.errors import LeaseNotFound
from tests.integration.cluster import CLUSTER_ID, LocalCluster

pytestmark = pytest.mark.slow

PARTITIONS = 8
TICK_MS = 20
ELECTION_S = 2 * 10 * TICK_MS / 1000  # the longest randomized election timeout
TTL = 1.5  # seconds
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3, partitions=PARTITIONS, tick_ms=TICK_MS,
                     extra="[limits]\nmin_lease_ttl_ms = 1000\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


def connect(c: LocalCluster, timeout: float = 5.0):
    return PrkDbClient.connect(c.seeds, cluster_id=CLUSTER_ID, timeout=timeout,
                               attempt_timeout=0.5)


# --- a scan while a leader dies ------------------------------------------------------------

KEYS = 10_000
PAGE = 100
KILL_AFTER = 3_000  # keys delivered before the kill


def stable_key(i: int) -> bytes:
    return b"scan/%05d" % i


def churn_key(i: int) -> bytes:
    """Sorts right after stable_key(i) ("scan/00042" < "scan/00042+" < "scan/00043")."""
    return b"scan/%05d+" % i


async def test_a_scan_of_10000_keys_survives_kill_9_of_a_leader(cluster: LocalCluster) -> None:
    async with connect(cluster) as client:
        # Load: one batch (a txn without compares) per partition and chunk.
        by_partition: dict[int, list[tuple[str, bytes, bytes]]] = {}
        for i in range(KEYS):
            k = stable_key(i)
            by_partition.setdefault(client.topology.partition_of(k), []).append(
                ("put", k, b"v%d" % i))
        assert len(by_partition) == PARTITIONS
        for ops in by_partition.values():
            for at in range(0, len(ops), 500):
                await client.batch(ops[at:at + 500])
        assert await client.count(b"scan/") == KEYS

        churned: set[bytes] = set()  # every churn key ever written (it may show up)
        stop = trio.Event()

        async def churn() -> None:
            rng = random.Random(5)
            while not stop.is_set():
                k = churn_key(rng.randrange(KEYS))
                churned.add(k)
                try:
                    if rng.random() < 0.6:
                        await client.put(k, b"churn", timeout=2.0)
                    else:
                        await client.delete(k, timeout=2.0)
                except Exception:  # a leader is being killed: keep going
                    await trio.sleep(0.05)

        got: list[bytes] = []
        values: dict[bytes, bytes] = {}
        killed = 0
        t0 = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(churn)
            async for kv in client.scan_iter(b"scan/", page_size=PAGE, timeout=10.0):
                got.append(kv.key)
                values[kv.key] = kv.value
                if len(got) == KILL_AFTER:
                    # The leader of the partition of the next stable key still to come.
                    nxt = int(kv.key[5:10]) + 1
                    part = client.topology.partition_of(stable_key(nxt))
                    leaders = await trio.to_thread.run_sync(cluster.leaders)
                    killed = leaders[part]
                    cluster.kill(killed)  # kill -9: no handoff
                    t_kill = time.monotonic()
            stop.set()
        elapsed = time.monotonic() - t0
    print(f"\nscan of {len(got)} keys in {elapsed:.1f}s; killed node {killed} "
          f"{t_kill - t0:.1f}s in; {len(churned)} churn keys touched")

    assert killed, "the kill did not happen mid-scan"
    # The killed leader's partition still had more than a page to deliver: those
    # keys were read after the kill, from its next leader.
    after = [k for k in got[KILL_AFTER:] if client.topology.partition_of(k) == part]
    assert len(after) > PAGE, len(after)
    assert got == sorted(set(got)), "keys out of order or repeated"
    stable = [k for k in got if not k.endswith(b"+")]
    assert stable == [stable_key(i) for i in range(KEYS)], (
        f"{KEYS - len(stable)} keys missing, first: "
        f"{sorted(set(map(stable_key, range(KEYS))) - set(stable))[:5]}")
    assert all(values[stable_key(i)] == b"v%d" % i for i in range(KEYS))
    extra = set(got) - set(stable)
    assert extra <= churned, f"keys never written: {sorted(extra - churned)[:5]}"


# --- a killed client loses its keys ----------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys, time
    import trio
    from prkdb.client import PrkDbClient

    def emit(ev, **kw):
        print(json.dumps({"ev": ev, "t": time.monotonic(), **kw}), flush=True)

    async def main(seeds, cluster_id, ttl, prefix):
        async with PrkDbClient.connect(seeds, cluster_id=cluster_id, timeout=2.0) as client:
            async with client.lease(ttl, key=prefix) as kept:
                for i in range(5):
                    await client.put(prefix + b"k%d" % i, b"mine", lease=kept.id)
                emit("ready", lease=kept.id, ttl=kept.ttl)
                seen = 0
                while True:  # report each renewal as soon as it is answered
                    if kept.state.renewals != seen:
                        seen = kept.state.renewals
                        emit("renewed", n=seen)
                    if kept.lost:
                        emit("lost", reason=kept.lost_reason)
                        return
                    await trio.sleep(0.005)

    trio.run(main, sys.argv[1].split(","), sys.argv[2], float(sys.argv[3]),
             sys.argv[4].encode())
""")


def spawn_child(c: LocalCluster, prefix: bytes, err_path: Path) -> subprocess.Popen:
    with open(err_path, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, ",".join(c.seeds), CLUSTER_ID, str(TTL),
             prefix.decode()],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )


def read_events(proc: subprocess.Popen, events: list[dict[str, Any]], until: str,
                timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the client exited: {proc.wait()}")
        events.append(json.loads(line))
        if events[-1]["ev"] == until:
            return
    raise AssertionError(f"no {until!r} from the client: {events}")


@pytest.mark.parametrize("also_kill_leader", [False, True], ids=["client", "client+leader"])
async def test_a_killed_client_loses_its_leased_keys_within_ttl_plus_an_election(
        cluster: LocalCluster, tmp_path: Path, also_kill_leader: bool) -> None:
    prefix = b"{owner}/"
    keys = [prefix + b"k%d" % i for i in range(5)]
    proc = spawn_child(cluster, prefix, tmp_path / "child.err")
    events: list[dict[str, Any]] = []
    try:
        await trio.to_thread.run_sync(read_events, proc, events, "ready", 30.0)
        lease_id = events[-1]["lease"]
        assert events[-1]["ttl"] == TTL
        # Alive, it keeps its keys well past the TTL.
        await trio.to_thread.run_sync(read_events, proc, events, "renewed", 10.0)
        t_live = time.monotonic() + 2 * TTL
        while time.monotonic() < t_live:
            await trio.to_thread.run_sync(read_events, proc, events, "renewed", 10.0)
        async with connect(cluster) as client:
            assert [await client.get(k) for k in keys] == [b"mine"] * 5
            leader = cluster.leaders()[lease_id & 0xFFFF]
            proc.send_signal(signal.SIGKILL)
            if also_kill_leader:
                cluster.kill(leader)
            t_kill = time.monotonic()
            proc.wait(10)
            assert proc.stdout is not None
            events += [json.loads(line) for line in proc.stdout]  # printed before it died
            # Renewal k-1 was answered by the time the child printed it; renewal k
            # was sent at least an interval later, so the leader's deadline is at
            # least that print + TTL (module doc of prkdb.client.lease).
            renewals = [e["t"] for e in events if e["ev"] == "renewed"]
            not_before = renewals[-2] + TTL
            polls: list[tuple[float, float, bool]] = []
            with trio.fail_after(TTL + ELECTION_S + 10):
                while True:
                    t0 = time.monotonic()
                    present = await client.get(keys[0], timeout=5.0) is not None
                    polls.append((t0, time.monotonic(), present))
                    if not present:
                        break
                    await trio.sleep(0.02)
            gone = polls[-1][1]  # the deletion happened before this read completed
            print(f"\nkeys gone {gone - t_kill:.2f}s after the kill "
                  f"(TTL {TTL}s, earliest allowed {not_before - t_kill:.2f}s after it)")
            assert gone >= not_before, (
                f"the lease expired early: keys gone {gone - t_kill:.2f}s after the kill, but "
                f"the last renewal we know of allows {not_before - t_kill:.2f}s")
            assert gone - t_kill <= TTL + ELECTION_S + 1.5, (
                f"keys still there {gone - t_kill:.2f}s after the kill")
            # All its keys went together (one entry), and the lease with them.
            assert await client.scan(prefix) == []
            with pytest.raises(LeaseNotFound):
                await client.lease_ttl(lease_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
