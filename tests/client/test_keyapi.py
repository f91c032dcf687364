"""The key API on the trio client, over the fake cluster's memory streams (MockClock).

Kept leases, locks and elections wait in virtual time here: ``autojump_clock``
makes a minute of keep-alives take milliseconds, and deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from prkdb.client import PrkDbClient
from prkdb.client.recipes import AsyncElection, AsyncLock, Election, Leader, Lock, recipe_prefix
from prkdb.client.txn import Get, Put
from prkdb.errors import ErrorCode, InvalidRequest, LeaseNotFound, Timeout
from prkdb.wire.messages import Get as GetRequest
from prkdb.wire.messages import LeaseRevoke, Scan, Txn
from tests.client.fake import DROP_AFTER, FakeCluster, connect, error

Clock = trio.testing.MockClock


async def test_kept_lease_lives_while_held_and_is_revoked_at_exit(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    async with client.lease(3.0, key=b"{svc}/a") as kept:
        await client.put(b"{svc}/a", b"up", lease=kept.id)
        await client.put(b"{svc}/b", b"up", lease=kept.lease)
        start = trio.current_time()
        await trio.sleep(60)  # 20 TTLs
        assert cluster.store[b"{svc}/a"].lease == kept.id and not kept.lost
        assert kept.state.renewals >= 55
        assert all(ids == (kept.id,) for ids in cluster.keep_alives)
        assert kept.state.expires_at > trio.current_time() + 1
        assert trio.current_time() - start == pytest.approx(60)
    assert b"{svc}/a" not in cluster.store and b"{svc}/b" not in cluster.store
    assert kept.id not in cluster.leases and not kept.lost
    await client.aclose()


async def test_kept_lease_reports_a_lost_lease(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    async with client.lease(3.0) as kept:
        await trio.sleep(5)
        assert not kept.lost
        await client.revoke_lease(kept.id)  # as an operator (or an expiry) would
        with trio.fail_after(3):
            await kept.wait_lost()
        assert kept.lost and "gone" in (kept.lost_reason or "")
    revokes = cluster.received_of(LeaseRevoke)
    assert len(revokes) == 1  # the exit does not revoke a lost lease again
    await client.aclose()


async def test_kept_lease_runs_in_the_callers_nursery(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    async with trio.open_nursery() as nursery:
        kept = client.lease(2.0, nursery=nursery)
        await kept.start()
        await trio.sleep(10)
        assert kept.state.renewals >= 13
        await kept.aclose()
    assert not cluster.leases
    await client.aclose()


async def test_cancelled_body_still_revokes(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    with trio.move_on_after(5):
        async with client.lease(2.0, key=b"k") as kept:
            await client.put(b"k", b"v", lease=kept.id)
            await trio.sleep_forever()
    assert not cluster.leases and b"k" not in cluster.store
    await client.aclose()


async def test_closing_the_client_stops_its_background_leases(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    kept = client.lease(2.0)
    await kept.start()
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(InvalidRequest, match="closed"):
        await client.lease(2.0).start()


async def test_txn_retry_after_a_lost_answer_applies_once(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    dropped: list[Any] = []

    async def hook(node: Any, msg: Any) -> Any:
        if isinstance(msg, Txn) and not dropped:
            dropped.append(msg)
            return DROP_AFTER  # applied, then the connection breaks
        return None

    cluster.hook = hook
    result = await client.txn([], [Put(b"{a}x", b"1"), Get(b"{a}x")])
    assert result.succeeded and result.results[1].value == b"1"
    txns = cluster.received_of(Txn)
    assert len(txns) == 2 and (txns[0].client_id, txns[0].seq) == (txns[1].client_id,
                                                                     txns[1].seq)
    assert len(cluster.replayed) == 1 and cluster.store[b"{a}x"].version == 1
    await client.aclose()


# --- locks -----------------------------------------------------------------------------


async def test_lock_is_exclusive_and_fair_by_arrival(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    holders: list[int] = []
    order: list[int] = []
    revisions: list[int] = []

    async def worker(i: int) -> None:
        await trio.sleep(i * 0.01)  # arrive in order 0, 1, 2, ...
        async with Lock(client, b"jobs", ttl=5) as lock:
            assert isinstance(lock, AsyncLock)
            holders.append(i)
            assert len(holders) == 1, holders
            order.append(i)
            revisions.append(lock.revision)
            # Same hash tag, outside the lock's prefix (which is the lock's alone).
            assert (await client.txn([lock.guard()], [Put(b"{jobs}:owner", b"%d" % i)])
                    ).succeeded
            await trio.sleep(1)
            holders.remove(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(worker, i)
    assert order == [0, 1, 2, 3, 4]
    assert revisions == sorted(revisions) and len(set(revisions)) == 5
    assert list(cluster.store) == [b"{jobs}:owner"]
    assert not cluster.leases
    await client.aclose()


async def test_guard_fails_once_the_lock_is_released(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    lock = Lock(client, "{locks}/db")
    revision = await lock.acquire()
    assert lock.prefix == b"{locks}/db/" and lock.key.startswith(lock.prefix)
    guard = lock.guard()
    assert guard.operand == revision
    await lock.release()
    assert not (await client.txn([guard], [Put(b"{locks}/x", b"1")])).succeeded
    with pytest.raises(InvalidRequest, match="not held"):
        lock.guard()
    await client.aclose()


async def test_a_dead_holders_lock_frees_after_its_ttl(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    # A holder that died: its key and lease exist, nobody renews them.
    dead = await client.grant_lease(3.0, key=b"{jobs}/")
    await client.put(b"{jobs}/%x" % dead.id, b"", lease=dead.id)
    start = trio.current_time()
    async with Lock(client, b"jobs", ttl=3) as lock:
        waited = trio.current_time() - start
        assert lock.held and not lock.lost
    assert 3.0 <= waited < 3.5
    await client.aclose()


async def test_lock_acquire_times_out_and_leaves_the_queue(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    first = Lock(client, b"q")
    await first.acquire()
    second = Lock(client, b"q")
    with pytest.raises(Timeout, match="1 ahead"):
        await second.acquire(timeout=2)
    assert len([k for k in cluster.store if k.startswith(b"{q}/")]) == 1
    await first.release()
    await second.acquire(timeout=2)
    await second.release()
    await client.aclose()


async def test_a_queued_contender_rides_out_an_outage_of_its_reads(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    # Reads (the predecessor's get, the queue's scan) answer UNAVAILABLE for
    # longer than the client's own timeout, as during an election: the waiter
    # keeps its place and gets the lock once reads work and the holder leaves.
    client = await connect(cluster, timeout=1.0)
    first = Lock(client, b"q")
    await first.acquire()
    outage_until = trio.current_time() + 5.0
    refused: list[Any] = []

    async def hook(node: Any, msg: Any) -> Any:
        if isinstance(msg, GetRequest | Scan) and trio.current_time() < outage_until:
            refused.append(msg)
            return error(ErrorCode.UNAVAILABLE, "no leader")
        return None

    second = Lock(client, b"q")
    async with trio.open_nursery() as nursery:
        async def wait_for_it() -> None:
            await second.acquire(timeout=30)

        await trio.sleep(0.5)
        cluster.hook = hook
        nursery.start_soon(wait_for_it)
        await trio.sleep(7.0)  # the outage, then some
        assert not second.held
        await first.release()
    assert second.held and second.revision > 0 and len(refused) > 3
    await second.release()
    await client.aclose()


async def test_an_outage_past_the_deadline_is_a_timeout_naming_the_lock(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster, timeout=1.0)
    first = Lock(client, b"q")
    await first.acquire()

    async def hook(node: Any, msg: Any) -> Any:
        if isinstance(msg, GetRequest | Scan):
            return error(ErrorCode.UNAVAILABLE, "no leader")
        return None

    cluster.hook = hook
    second = Lock(client, b"q")
    with pytest.raises(Timeout, match=r"lock b'q'.*no leader"):
        await second.acquire(timeout=4)
    assert not second.held
    cluster.hook = None
    await first.release()
    await client.aclose()


def test_lock_names() -> None:
    assert recipe_prefix(b"jobs") == b"{jobs}/"
    assert recipe_prefix(b"app:{7}:lock") == b"app:{7}:lock/"
    with pytest.raises(InvalidRequest, match="no hash tag"):
        recipe_prefix(b"a}b")


async def test_recipes_refuse_a_cluster_without_hash_tags(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    cluster.key_rule = "crc32"
    client = await connect(cluster)
    with pytest.raises(InvalidRequest, match="need hash tags"):
        await Lock(client, b"jobs").acquire()
    await client.aclose()


# --- elections -------------------------------------------------------------------------


async def test_election_campaign_observe_proclaim_resign(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    a, b = Election(client, b"svc"), Election(client, b"svc")
    assert isinstance(a, AsyncElection)
    assert await a.leader() is None
    seen: list[Leader | None] = []

    async def observer(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for leader in a.observe(poll=0.1):
            seen.append(leader)
            if len(seen) == 5:
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(observer)
        await trio.sleep(1)
        await a.campaign(b"node-a")
        assert a.is_leader
        await trio.sleep(1)
        elected = trio.Event()

        async def campaign_b() -> None:
            await b.campaign(b"node-b")
            elected.set()

        nursery.start_soon(campaign_b)
        await trio.sleep(2)
        assert not elected.is_set() and not b.is_leader
        leader = await b.leader()
        assert leader is not None and leader.value == b"node-a"
        await a.proclaim(b"node-a2")
        await trio.sleep(1)
        await a.resign()
        with trio.fail_after(2):
            await elected.wait()
        assert b.is_leader and not a.is_leader
        await trio.sleep(1)
        await b.resign()
    values = [None if s is None else s.value for s in seen]
    assert values == [None, b"node-a", b"node-a2", b"node-b", None]
    with pytest.raises(InvalidRequest, match="not the leader"):
        await a.proclaim(b"x")
    await client.aclose()


async def test_election_losing_its_lease_ends_leadership(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    election = Election(client, b"svc", ttl=3)
    await election.campaign(b"me")
    leader = await election.leader()
    assert leader is not None
    await client.revoke_lease(leader.lease)
    await trio.sleep(3)
    assert election.lost
    with pytest.raises(LeaseNotFound):
        await election.proclaim(b"still me?")
    await election.resign()
    await client.aclose()


async def test_client_background_nursery_is_shared(
    cluster: FakeCluster, autojump_clock: Clock
) -> None:
    client = await connect(cluster)
    assert isinstance(client, PrkDbClient)
    assert await client.background_nursery() is await client.background_nursery()
    await client.aclose()
