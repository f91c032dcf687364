"""Scans, transactions and leases on a real 3-node cluster (processes, 8 partitions).

Requests are raw protocol messages (tests/integration/cluster.py's blocking
`WireConn`), sent to each partition's leader and re-sent elsewhere on
NOT_LEADER, so these tests check the servers alone, not the SDK.

One cluster serves the whole module (starting one costs seconds); the test
that kills a leader runs last. Ticks are 20 ms (election timeout 200-400 ms)
and the lease TTL floor is 1 s.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.wire.messages import (
    Batch,
    BatchOp,
    Compare,
    CompareOp,
    CompareTarget,
    Error,
    Get,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKeepAliveOk,
    LeaseOk,
    LeaseTimeToLive,
    OpKind,
    ReadConsistency,
    Scan,
    ScanOk,
    Txn,
    TxnOk,
    TxnOp,
    TxnOpKind,
    WriteOk,
)
from tests.integration.cluster import LocalCluster, WireConn

pytestmark = pytest.mark.slow

PARTITIONS = 8
TICK_MS = 20
ELECTION_S = 2 * 10 * TICK_MS / 1000  # the longest randomized election timeout
TTL_MS = 1000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("keyapi"), 3, partitions=PARTITIONS,
                     tick_ms=TICK_MS, extra=f"[limits]\nmin_lease_ttl_ms = {TTL_MS}\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


_CLIENT_IDS = itertools.count(4242)


class Router:
    """Sends a request to its partition's leader; follows NOT_LEADER and dead nodes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.conns: dict[int, WireConn] = {}
        self.leaders: dict[int, int] = {}
        self.rids = itertools.count(1)
        self.seqs = itertools.count(1)
        self.client_id = next(_CLIENT_IDS)  # a session of its own (seqs restart at 1)

    def conn(self, node: int) -> WireConn:
        if node not in self.conns:
            self.conns[node] = WireConn(self.cluster.client_ports[node - 1])
        return self.conns[node]

    def call(self, node: int, make: Callable[[int], Any]) -> Any:
        msg = make(next(self.rids))
        reply = self.conn(node).call(msg)
        assert reply.request_id == msg.request_id, reply
        return reply

    def to_leader(self, partition: int, make: Callable[[int], Any], timeout: float = 10.0
                  ) -> Any:
        """`make(request_id)`'s reply from the partition's leader (retries until `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.leaders.get(partition) or self._any_live()
            try:
                reply = self.call(node, make)
            except (OSError, ConnectionError):
                self.conns.pop(node, None)
                self.leaders.pop(partition, None)
                reply = None
            if isinstance(reply, Error) and reply.code in (ErrorCode.NOT_LEADER,
                                                            ErrorCode.UNAVAILABLE):
                leader = reply.details.get("leader_id") or 0
                if leader and self.cluster.alive(leader):
                    self.leaders[partition] = leader
                else:
                    self.leaders.pop(partition, None)
                reply = None
            if reply is not None:
                self.leaders[partition] = node
                return reply
            if time.monotonic() > deadline:
                raise AssertionError(f"partition {partition}: no leader answered in {timeout}s")
            time.sleep(0.05)

    def _any_live(self) -> int:
        live = [i for i in self.cluster.ids if self.cluster.alive(i)]
        return live[next(self.rids) % len(live)]

    def seq(self) -> int:
        return next(self.seqs)

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


@pytest.fixture
def router(cluster: LocalCluster) -> Iterator[Router]:
    r = Router(cluster)
    try:
        yield r
    finally:
        r.close()


def _keys_by_partition(prefix: bytes, n: int) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for i in range(n):
        key = prefix + b"%04d" % i
        out.setdefault(partition_for(key, PARTITIONS), []).append(key)
    return out


def test_a_scan_reads_keys_of_8_partitions_in_order(router: Router) -> None:
    by_partition = _keys_by_partition(b"scan/", 400)
    assert len(by_partition) == PARTITIONS
    for p, keys in by_partition.items():
        ok = router.to_leader(p, lambda rid, p=p, keys=keys: Batch(
            rid, p, tuple(BatchOp(OpKind.PUT, k, b"v" + k) for k in keys), router.client_id,
            router.seq()))
        assert isinstance(ok, WriteOk), ok
    # Page through every partition (30 keys a page) and merge by key, as the SDK does.
    pages = 0
    merged: list[tuple[bytes, bytes]] = []
    for p in range(PARTITIONS):
        start = b"scan/"
        while True:
            page = router.to_leader(p, lambda rid, p=p, start=start: Scan(
                rid, p, start, b"scan0", 30, False, False, ReadConsistency.LINEARIZABLE))
            assert isinstance(page, ScanOk), page
            pages += 1
            merged += [(kv.key, kv.value) for kv in page.kvs]
            keys = [kv.key for kv in page.kvs]
            assert keys == sorted(keys) and all(partition_for(k, PARTITIONS) == p for k in keys)
            if not page.more:
                break
            start = keys[-1] + b"\0"
    everything = sorted(k for keys in by_partition.values() for k in keys)
    assert sorted(merged) == [(k, b"v" + k) for k in everything]
    assert len(merged) == len(set(merged)) == 400 and pages >= 400 // 30
    # Counted without keys, and read by a follower (it asks the leader for a ReadIndex).
    p = 3
    leader = router.leaders[p]
    follower = next(i for i in router.cluster.ids if i != leader)
    counted = router.call(follower, lambda rid: Scan(rid, p, b"scan/", b"scan0", 0, False, True,
                                                     ReadConsistency.FOLLOWER))
    assert isinstance(counted, ScanOk) and counted.kvs == ()
    assert counted.count == len(by_partition[p])
    refused = router.call(follower, lambda rid: Scan(rid, p, b"", None, 0, False, False,
                                                     ReadConsistency.LINEARIZABLE))
    assert isinstance(refused, Error) and refused.code == ErrorCode.NOT_LEADER


def _version_is(key: bytes, op: CompareOp, n: int) -> Compare:
    return Compare(key, CompareTarget.VERSION, op, None, n)


def test_a_txn_takes_its_success_or_failure_branch(router: Router) -> None:
    keys = _keys_by_partition(b"txn/", 100)[5][:2]
    a, b = keys

    def txn(compares: list[Compare], success: list[TxnOp], failure: list[TxnOp]) -> Any:
        return router.to_leader(5, lambda rid: Txn(rid, 5, tuple(compares), tuple(success),
                                                   tuple(failure), router.client_id,
                                                   router.seq()))

    first = txn([_version_is(a, CompareOp.EQUAL, 0)],
                [TxnOp(TxnOpKind.PUT, a, b"mine"), TxnOp(TxnOpKind.PUT, b, b"1")],
                [TxnOp(TxnOpKind.GET, a)])
    assert isinstance(first, TxnOk) and first.succeeded
    assert [(r.version, r.prev_version) for r in first.results] == [(1, 0), (1, 0)]
    second = txn([_version_is(a, CompareOp.EQUAL, 0)], [TxnOp(TxnOpKind.PUT, a, b"theirs")],
                 [TxnOp(TxnOpKind.GET, a), TxnOp(TxnOpKind.DELETE, b)])
    assert isinstance(second, TxnOk) and not second.succeeded
    got, deleted = second.results
    assert (got.value, got.create_revision, got.mod_revision) == (b"mine", first.revision,
                                                                  first.revision)
    assert (deleted.version, deleted.prev_version) == (0, 1)
    # Every replica applied the same branch: a FOLLOWER read anywhere sees it.
    for node in router.cluster.ids:
        for key, want in ((a, b"mine"), (b, None)):
            reply = router.call(node, lambda rid, key=key: Get(rid, key, ReadConsistency.FOLLOWER,
                                                                5))
            assert reply.value == want
    other = _keys_by_partition(b"txn/", 100)[2][0]
    refused = txn([], [TxnOp(TxnOpKind.PUT, a, b"x"), TxnOp(TxnOpKind.PUT, other, b"y")], [])
    assert isinstance(refused, Error) and refused.code == ErrorCode.BAD_REQUEST
    assert "partitions [2, 5]" in refused.message and "hash tag" in refused.message


class KeepAlive:
    """Keeps leases of one partition alive from a thread, every TTL/3, wherever the leader is."""

    def __init__(self, router: Router, partition: int, *lease_ids: int) -> None:
        self.router = router
        self.partition = partition
        self.lease_ids = lease_ids
        self.stop = threading.Event()
        self.answers: list[tuple[int, ...]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(TTL_MS / 3000):
            reply = self.router.to_leader(self.partition, lambda rid: LeaseKeepAlive(
                rid, self.partition, self.lease_ids))
            assert isinstance(reply, LeaseKeepAliveOk), reply
            self.answers.append(reply.remaining_ms)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def test_a_kept_lease_survives_kill_9_of_its_leader_and_a_lapsed_one_expires(
        router: Router, cluster: LocalCluster) -> None:
    p = 6
    kept_key, lapsing_key = _keys_by_partition(b"lease/", 100)[p][:2]

    def grant() -> int:
        reply = router.to_leader(p, lambda rid: LeaseGrant(rid, p, TTL_MS, router.client_id,
                                                           router.seq()))
        assert isinstance(reply, LeaseOk) and reply.ttl_ms == TTL_MS, reply
        return reply.lease_id

    kept = grant()
    ok = router.to_leader(p, lambda rid: Txn(rid, p, (), (TxnOp(TxnOpKind.PUT, kept_key, b"k",
                                                                kept),), (), router.client_id,
                                              router.seq()))
    assert ok.succeeded
    leader = router.leaders[p]
    follower = next(i for i in cluster.ids if i != leader)
    refused = router.call(follower, lambda rid: LeaseKeepAlive(rid, p, (kept,)))
    assert isinstance(refused, Error) and refused.code == ErrorCode.NOT_LEADER
    # A keep-alive thread with its own connections (WireConn is not thread-safe).
    keeper = KeepAlive(Router(cluster), p, kept)
    try:
        t0 = time.monotonic()  # before the grant: its TTL runs from later on the leader
        lapsing = grant()
        ok = router.to_leader(p, lambda rid: Txn(rid, p, (), (TxnOp(
            TxnOpKind.PUT, lapsing_key, b"l", lapsing),), (), router.client_id, router.seq()))
        assert ok.succeeded
        cluster.kill(leader)  # kill -9: no handoff
        killed = time.monotonic()
        # The lapsing lease: gone with its key within TTL + an election, never before its TTL.
        gone = _wait_gone(router, p, lapsing_key, timeout=10)
        assert gone - t0 >= TTL_MS / 1000
        assert gone - killed <= TTL_MS / 1000 + ELECTION_S + 1.0, (
            f"expired {gone - killed:.2f}s after the kill")
        reply = router.to_leader(p, lambda rid: LeaseTimeToLive(rid, lapsing, False))
        assert isinstance(reply, Error) and reply.code == ErrorCode.LEASE_NOT_FOUND
        # The kept one lives on under the new leader (several TTLs after the kill).
        while time.monotonic() < killed + 3 * TTL_MS / 1000:
            time.sleep(0.1)
        status = router.to_leader(p, lambda rid: LeaseTimeToLive(rid, kept, True))
        assert isinstance(status, LeaseOk) and status.keys == (kept_key,), status
        assert router.leaders[p] != leader
    finally:
        keeper.close()
        keeper.router.close()
    assert keeper.answers and all(a == (TTL_MS,) for a in keeper.answers), keeper.answers
    # Not kept alive any more: it and its key go too.
    _wait_gone(router, p, kept_key, timeout=10)
    cluster.start(leader)  # leave the cluster whole (a module fixture)
    cluster.wait_ready()


def _wait_gone(router: Router, p: int, key: bytes, timeout: float) -> float:
    """Poll the leader until `key` is absent; the time it was first seen gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = router.to_leader(p, lambda rid: Get(rid, key, ReadConsistency.LINEARIZABLE, p))
        if reply.value is None:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{key!r} still there after {timeout}s")
