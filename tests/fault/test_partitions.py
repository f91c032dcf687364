"""Scenarios 1 and 2: Pre-Vote keeps an isolated follower harmless; a leader cut
off from the majority stops acknowledging and the majority takes over."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import trio

from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.raft.types import Role
from prkdb.wire.messages import Error, Put, WriteOk
from tests.fault.netns import CLIENT_PORT, NetnsCluster, WireConn, wait_replicas_agree
from tests.fault.workload import connect

pytestmark = pytest.mark.slow

# The server's own request deadline, so a minority leader answers within our socket timeout.
FAST_SERVER = "\n[limits]\nrequest_timeout = 1.0\n"
DEFINITE = {ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}


def key_in(partition: int, partitions: int, prefix: str) -> bytes:
    for i in range(100_000):
        k = f"{prefix}-{i}".encode()
        if partition_for(k, partitions) == partition:
            return k
    raise AssertionError("no key")


async def move_leaders(c: NetnsCluster, allowed: list[int], timeout: float = 20.0) -> dict:
    """Transfer every partition's leadership onto `allowed`; returns the settled leaders."""
    deadline = time.monotonic() + timeout
    async with connect(c.seeds, timeout=3.0) as client:
        while time.monotonic() < deadline:
            leaders = await trio.to_thread.run_sync(c.leaders)
            if len(leaders) == c.partitions and all(
                lt[0] in allowed for lt in leaders.values()
            ):
                return leaders
            for p, (leader, _term) in leaders.items():
                if leader not in allowed:
                    try:
                        await client.transfer_leader(p, allowed[p % len(allowed)], timeout=3.0)
                    except Exception as e:  # retried below; the cluster is settling
                        print(f"transfer of {p}: {e!r}")
            await trio.sleep(0.5)
    raise AssertionError(f"leaders did not move to {allowed}: {c.leaders()}")


async def test_prevote_isolated_follower_does_not_disrupt(make_cluster) -> None:
    """Scenario 1: isolate a pure follower for 10 election timeouts, then heal."""
    c = make_cluster(3, partitions=4)
    before = await move_leaders(c, [1, 2])
    follower = 3
    ok, failed = 0, []
    stop = trio.Event()

    async def load(client, proc: int) -> None:
        nonlocal ok
        n = 0
        while not stop.is_set():
            n += 1
            key = b"pv-%d-%d" % (proc, n % 50)
            try:
                await client.put(key, b"%d" % n, timeout=3.0)
                assert await client.get(key, timeout=3.0) == b"%d" % n
                ok += 2
            except Exception as e:
                failed.append(repr(e))
            await trio.sleep(0.005)

    seeds = [f"{c.addr(1)}:{CLIENT_PORT}", f"{c.addr(2)}:{CLIENT_PORT}"]
    async with connect(seeds) as client, trio.open_nursery() as nursery:
        for proc in range(4):
            nursery.start_soon(load, client, proc)
        await trio.sleep(0.5)
        c.isolate(follower)
        await trio.sleep(10 * c.election_timeout)
        c.heal()
        await trio.sleep(3 * c.election_timeout)
        stop.set()
    after = await trio.to_thread.run_sync(c.wait_ready)
    print(f"\nprevote: {ok} ops ok, {len(failed)} failed; leaders before {before} after {after}")
    assert after == before, "an isolated follower changed a leader or a term"
    assert not failed, failed[:5]
    assert ok > 100


def _minority_writer(c: NetnsCluster, leaders: dict[int, tuple[int, int]], t0: float,
                     stop: threading.Event, out: list[dict[str, Any]]) -> None:
    """Send raw Puts straight to the old leaders (no SDK retries, no redirects)."""
    rng = random.Random()
    n = 0
    while not stop.is_set():
        for p, (leader, _term) in sorted(leaders.items()):
            n += 1
            key = key_in(p, c.partitions, f"minority-{n}")
            rec: dict[str, Any] = {"key": key, "node": leader, "t": time.monotonic() - t0}
            try:
                conn = WireConn(CLIENT_PORT, host=c.addr(leader), timeout=1.5)
                try:
                    reply = conn.call(Put(7, key, b"m%d" % n, rng.randrange(1, 1 << 62), 1))
                finally:
                    conn.close()
            except OSError as e:
                rec["outcome"] = f"no answer ({type(e).__name__})"
                rec["definite"] = False
            else:
                if isinstance(reply, WriteOk):
                    rec["outcome"], rec["definite"] = "ACKED", True
                elif isinstance(reply, Error):
                    rec["outcome"] = ErrorCode(reply.code).name
                    rec["definite"] = reply.code in DEFINITE
                else:
                    rec["outcome"], rec["definite"] = repr(reply), False
            out.append(rec)


async def test_minority_leaders_stop_acking_and_majority_takes_over(make_cluster) -> None:
    """Scenario 2: 5 nodes, every leader on {1, 2}, split {1, 2} | {3, 4, 5}."""
    c = make_cluster(5, partitions=4, extra=FAST_SERVER)
    before = await move_leaders(c, [1, 2])
    t0 = time.monotonic()
    c.partition([1, 2], [3, 4, 5])
    stop = threading.Event()
    minority: list[dict[str, Any]] = []
    stepped_down: dict[int, float] = {}
    acked: dict[bytes, bytes] = {}
    majority_errors: list[str] = []

    def watch_roles() -> None:
        while not stop.is_set() and len(stepped_down) < 2:
            for i in (1, 2):
                if i in stepped_down:
                    continue
                try:
                    st = c.status(i)
                except OSError:
                    continue
                if all(p.role != Role.LEADER for p in st.partitions):
                    stepped_down[i] = time.monotonic() - t0
            time.sleep(0.02)

    majority = [f"{c.addr(i)}:{CLIENT_PORT}" for i in (3, 4, 5)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, _minority_writer, c, before, t0, stop,
                           minority)
        nursery.start_soon(trio.to_thread.run_sync, watch_roles)
        new = await trio.to_thread.run_sync(c.wait_ready, [3, 4, 5], 15.0)
        elected = time.monotonic() - t0
        async with connect(majority, timeout=3.0) as client:
            for n in range(200):
                key = b"majority-%d" % n
                try:
                    await client.put(key, b"v%d" % n)
                    acked[key] = b"v%d" % n
                except Exception as e:
                    majority_errors.append(repr(e))
        await trio.sleep(max(0.0, 3 * c.election_timeout - (time.monotonic() - t0)))
        stop.set()
    c.heal()
    await trio.to_thread.run_sync(c.wait_ready)
    keys = list(acked) + [r["key"] for r in minority]
    final = await trio.to_thread.run_sync(wait_replicas_agree, c, keys)

    outcomes: dict[str, int] = {}
    for r in minority:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    print(f"\nleaders before {before}\nmajority elected {new} after {elected:.2f}s; "
          f"old leaders stepped down at {stepped_down} (election timeout "
          f"{c.election_timeout}s)\nminority writes {len(minority)}: {outcomes}\n"
          f"majority writes {len(acked)} acked, {len(majority_errors)} errors")
    assert not [r for r in minority if r["outcome"] == "ACKED"], "a minority leader acked a write"
    assert all(leader in (3, 4, 5) for leader, _ in new.values())
    assert set(stepped_down) == {1, 2}, f"old leaders still leading: {stepped_down}"
    # CheckQuorum looks back one election timeout, checked once per timeout: <= 2 of them.
    assert max(stepped_down.values()) <= 2 * c.election_timeout + 0.5, stepped_down
    assert not majority_errors, majority_errors[:5]
    lost = {k: (v, final[k]) for k, v in acked.items() if final[k] != v}
    assert not lost, f"acknowledged writes lost: {lost}"
    # A definite refusal means nothing was done: such a write must never appear.
    ghosts = [r for r in minority if r["definite"] and final[r["key"]] is not None]
    assert not ghosts, f"writes refused with a definite error were applied: {ghosts[:5]}"
