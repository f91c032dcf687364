"""The key API (scans, txns, leases, recipes) on all three front ends, over real TCP.

Same shape as tests/client/test_fronts.py: `front` is trio, asyncio or sync
behind blocking calls, `tcp_fake` a fake 3-node cluster (4 partitions) on
127.0.0.1. Waits are real here, so leases use a short TTL (the fake's
minimum is lowered to 0.2 s) and the checks allow for slow machines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from prkdb.client import InvalidRequest, KeyValue, LeaseNotFound, ReadConsistency
from prkdb.client.recipes import Election, Lock
from prkdb.client.txn import Compare, Delete, Get, Put, absent
from prkdb.wire.messages import Scan, Txn
from tests.client.fake import key_in
from tests.client.fronts import Client, Front, TcpFake


def iterate(front: Front, db: Client, **kwargs: Any) -> list[KeyValue]:
    """Collect ``scan_iter(**kwargs)`` in the front's own world (async for / for)."""
    if front.kind == "sync":
        return list(db.inner.scan_iter(**kwargs))

    async def collect() -> list[KeyValue]:
        return [kv async for kv in db.inner.scan_iter(**kwargs)]

    return front.call(collect)  # type: ignore[no-any-return]


def sleeper(front: Front) -> Callable[[float], Any]:
    return {"trio": trio.sleep, "asyncio": asyncio.sleep, "sync": time.sleep}[front.kind]


def test_scans_every_way(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    keys = [b"app/%03d" % i for i in range(50)]
    assert db.batch([("put", k, b"x") for k in keys if cluster.partition_of(k) == 0])
    for key in keys:
        db.put(key, b"v" + key[-3:])
    db.put(b"apq", b"outside")
    got = db.scan(b"app/")
    assert [kv.key for kv in got] == keys and got[7].value == b"v007"
    assert [kv.key for kv in db.scan(start=b"app/010", end=b"app/013")] == keys[10:13]
    assert [kv.key for kv in db.scan(b"app/", limit=5, page_size=2)] == keys[:5]
    assert db.count(b"app/") == 50 and db.count() == 51
    assert db.count(b"app/", consistency=ReadConsistency.STALE) == 50
    assert [kv.key for kv in iterate(front, db, prefix=b"app/", page_size=3)] == keys
    lazy = iterate(front, db, prefix=b"app/", keys_only=True, limit=4)
    assert [kv.key for kv in lazy] == keys[:4] and all(kv.value == b"" for kv in lazy)
    pages, token = [], None
    while True:
        page = db.scan_page(b"app/", token=token, page_size=20)
        pages.append(page.items)
        token = page.token
        if token is None:
            break
    assert [len(p) for p in pages] == [20, 20, 10]
    assert [kv.key for p in pages for kv in p] == keys
    with pytest.raises(InvalidRequest, match="not both"):
        db.scan(b"app/", start=b"a")


def test_scan_with_a_small_limit_reads_one_page_per_partition(
    front: Front, tcp_fake: TcpFake
) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    for i in range(40):
        db.put(b"s%02d" % i, b"v")
    before = len(cluster.received_of(Scan))
    assert [kv.key for kv in db.scan(b"s", limit=2)] == [b"s00", b"s01"]
    asked = cluster.received_of(Scan)[before:]
    assert len(asked) == cluster.partitions and all(m.limit == 2 for m in asked)


def test_txn_and_leased_put(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    a, b = b"acct:{7}:state", b"acct:{7}:lock"
    db.put(a, b"open")
    result = db.txn([Compare.value(a) == b"open", absent(b)],
                    [Put(a, b"closed"), Put(b, b"me"), Get(a)], [Get(a)])
    assert result.succeeded and result.results[2].value == b"closed"
    result = db.txn([Compare.value(a) == b"open"], [Delete(a)], [Get(a), Get(b)])
    assert not result.succeeded and [r.value for r in result.results] == [b"closed", b"me"]
    with pytest.raises(InvalidRequest, match=r"span partitions \[0, 1\].*hash tag"):
        db.txn([], [Put(key_in(0, 4), b"1"), Put(key_in(1, 4), b"2")])
    lease = db.grant_lease(5.0, key=a)
    assert lease.partition == cluster.partition_of(a)
    assert db.put(a, b"leased", lease=lease.id).version == 3
    status = db.lease_ttl(lease.id, keys=True)
    assert status.keys == (a,) and 0 < status.remaining <= status.ttl == 5.0
    assert [s.id for s in db.leases()] == [lease.id]
    assert db.keep_alive_once(lease) == 5.0
    assert db.revoke_lease(lease) == 1
    assert db.get(a) is None
    with pytest.raises(LeaseNotFound):
        db.keep_alive_once(lease.id)
    with pytest.raises(LeaseNotFound):
        db.put(b, b"x", lease=lease.id)
    assert len(cluster.received_of(Txn)) >= 3


def test_kept_lease_renews_in_the_background_and_revokes_at_exit(
    front: Front, tcp_fake: TcpFake
) -> None:
    cluster = tcp_fake.cluster
    tcp_fake.run(setattr, cluster, "min_lease_ttl_ms", 200)
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    key = b"svc:{x}:me"
    sleep = sleeper(front)
    seen: dict[str, Any] = {}

    if front.kind == "sync":
        with db.inner.lease(0.3, key=key) as kept:
            db.inner.put(key, b"up", lease=kept.id)
            sleep(1.5)
            seen.update(lost=kept.lost, renewals=kept.state.renewals, id=kept.id,
                        alive=db.inner.get(key))
    else:
        async def body() -> None:
            async with db.inner.lease(0.3, key=key) as kept:
                await db.inner.put(key, b"up", lease=kept.id)
                await sleep(1.5)
                seen.update(lost=kept.lost, renewals=kept.state.renewals, id=kept.id,
                            alive=await db.inner.get(key))

        front.call(body)
    assert seen["alive"] == b"up" and not seen["lost"]
    assert seen["renewals"] >= 3  # every 0.1 s, on a slow machine too
    assert db.get(key) is None and seen["id"] not in cluster.leases


def test_kept_lease_notices_a_revoke(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    tcp_fake.run(setattr, cluster, "min_lease_ttl_ms", 200)
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    kept = db.inner.lease(0.3)
    front.call(kept.start)
    db.revoke_lease(kept.id)
    if front.kind == "sync":
        assert kept.wait_lost(5)
    else:
        front.call(kept.wait_lost)
    assert kept.lost
    front.call(kept.close if front.kind == "sync" else kept.aclose)  # no revoke error


def test_lock_and_election(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    lock = Lock(db.inner, b"jobs")
    revision = front.call(lock.acquire)
    assert lock.held and lock.revision == revision
    other = Lock(db.inner, b"jobs")
    with pytest.raises(Exception, match="1 ahead"):
        front.call(lambda: other.acquire(timeout=0.3))
    assert db.txn([lock.guard()], [Put(b"{jobs}:result", b"done")]).succeeded
    front.call(lock.release)
    assert front.call(lambda: other.acquire(timeout=5)) > revision
    front.call(other.release)

    election = Election(db.inner, b"svc")
    assert front.call(election.leader) is None
    front.call(lambda: election.campaign(b"node-1"))
    assert front.call(election.leader).value == b"node-1"
    front.call(lambda: election.proclaim(b"node-1b"))
    assert front.call(election.leader).value == b"node-1b"
    front.call(election.resign)
    assert front.call(election.leader) is None
