"""The SDK's key API against real processes: 3 nodes, 8 partitions.

What the fakes cannot show: the server's pages, revisions and lease clock
meeting the SDK's merge, txn builders and keep-alives. One cluster serves the
module; the test that kills a leader runs last.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import trio

from prkdb.client import PrkDbClient, SyncClient
from prkdb.client.recipes import Election, Lock
from prkdb.client.txn import Compare, Get, Put, absent
from prkdb.errors import InvalidRequest, LeaseNotFound
from prkdb.wire.messages import ReadConsistency
from tests.integration.cluster import CLUSTER_ID, LocalCluster

pytestmark = pytest.mark.slow

PARTITIONS = 8
TTL_MS = 1000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("sdk-keyapi"), 3, partitions=PARTITIONS,
                     tick_ms=20, extra=f"[limits]\nmin_lease_ttl_ms = {TTL_MS}\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


@pytest.fixture
def db(cluster: LocalCluster) -> Iterator[SyncClient]:
    with SyncClient(cluster.seeds, cluster_id=CLUSTER_ID, timeout=10.0) as client:
        yield client


def load(db: SyncClient, keys: list[bytes]) -> None:
    """Put `keys` (value = key) in batches of one partition each."""
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(db.topology.partition_of(key), []).append(key)
    for group in groups.values():
        for i in range(0, len(group), 200):
            db.batch([("put", k, k) for k in group[i : i + 200]])


def test_scans_merge_every_partition(db: SyncClient) -> None:
    keys = [b"scan/%04d" % i for i in range(1500)]
    load(db, keys)
    assert [kv.key for kv in db.scan(b"scan/")] == keys
    assert db.count(b"scan/") == 1500
    assert db.count(b"scan/", consistency=ReadConsistency.FOLLOWER) == 1500
    small = db.scan(b"scan/", limit=3, keys_only=True)
    assert [kv.key for kv in small] == keys[:3] and all(kv.value == b"" for kv in small)
    got, token, pages = [], None, 0
    while True:
        page = db.scan_page(b"scan/", token=token, page_size=400,
                            consistency=ReadConsistency.STALE)
        got += [kv.key for kv in page.items]
        pages += 1
        token = page.token
        if token is None:
            break
    assert got == keys and pages == 4
    kv = db.scan(start=b"scan/0007", end=b"scan/0008")[0]
    assert kv.value == kv.key and kv.version == 1 and kv.create_revision == kv.mod_revision > 0


def test_txn_on_hash_tagged_keys(db: SyncClient) -> None:
    a, b = b"acct:{9}:state", b"acct:{9}:owner"
    db.put(a, b"open")
    result = db.txn([Compare.value(a) == b"open", absent(b)],
                    [Put(a, b"closed"), Put(b, b"me"), Get(a)], [Get(a)])
    assert result.succeeded and result.results[2].value == b"closed"
    assert result.results[2].mod_revision == result.revision
    again = db.txn([Compare.value(a) == b"open"], [Put(a, b"x")], [Get(b)])
    assert not again.succeeded and again.results[0].value == b"me"
    with pytest.raises(InvalidRequest, match="span partitions"):
        db.txn([], [Put(b"x1", b"1"), Put(b"x2", b"2"), Put(b"x3", b"3"), Put(b"x4", b"4")])


def test_leases_and_kept_lease(db: SyncClient) -> None:
    key = b"svc:{a}:1"
    lease = db.grant_lease(1.0, key=key)
    db.put(key, b"up", lease=lease)
    assert db.lease_ttl(lease, keys=True).keys == (key,)
    assert lease.id in {s.id for s in db.leases()}
    time.sleep(2.5)  # not kept alive: the leader expires it
    assert db.get(key) is None
    with pytest.raises(LeaseNotFound):
        db.keep_alive_once(lease)
    with db.lease(1.0, key=key) as kept:
        db.put(key, b"kept", lease=kept.id)
        time.sleep(3)
        assert db.get(key) == b"kept" and not kept.lost and kept.state.renewals >= 5
    assert db.get(key) is None


def test_lock_and_election_across_front_ends(cluster: LocalCluster, db: SyncClient) -> None:
    order: list[str] = []

    async def trio_holder() -> None:
        async with PrkDbClient.connect(cluster.seeds, cluster_id=CLUSTER_ID) as client:
            lock = Lock(client, b"jobs", ttl=2)
            async with lock:
                order.append("trio got")
                await trio.sleep(1.0)
                assert (await client.txn([lock.guard()], [Put(b"{jobs}:by", b"trio")])
                        ).succeeded
                order.append("trio done")

    thread = threading.Thread(target=trio.run, args=(trio_holder,))
    thread.start()
    while "trio got" not in order:
        time.sleep(0.01)
    with Lock(db, b"jobs", ttl=2):
        order.append("sync got")
    thread.join(10)
    assert order == ["trio got", "trio done", "sync got"]
    election = Election(db, b"scheduler", ttl=2)
    election.campaign(b"me")
    leader = election.leader()
    assert leader is not None and leader.value == b"me"
    election.resign()
    assert election.leader() is None


def test_scan_survives_a_leader_kill(cluster: LocalCluster, db: SyncClient) -> None:
    """10,000 keys over 8 partitions, each exactly once in order, a leader killed mid-scan."""
    keys = [b"big/%05d" % i for i in range(10_000)]
    load(db, keys)
    got: list[bytes] = []
    victim = None
    for kv in db.scan_iter(b"big/", page_size=250):
        got.append(kv.key)
        if len(got) == 2000:
            leaders = cluster.leaders()
            victim = max(set(leaders.values()), key=list(leaders.values()).count)
            cluster.kill(victim)
    assert victim is not None
    assert got == keys
