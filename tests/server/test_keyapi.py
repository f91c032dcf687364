"""Scans, transactions and leases served by a real node (issue 16), over the real wire.

A single-node Node runs in-process on 127.0.0.1 (it leads every partition at
once); requests are the raw protocol messages, sent by the blocking test
client of tests/integration/cluster.py from a worker thread, so the node's
trio loop runs meanwhile. Ticks are 10 ms and the lease TTL floor 300 ms, so
lease expiry takes a fraction of a second of real time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.config import LimitSettings, NodeConfig, PeerConfig, RaftSettings
from prkdb.errors import ErrorCode
from prkdb.server.node import Node
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
    LeaseList,
    LeaseListOk,
    LeaseOk,
    LeaseRevoke,
    LeaseTimeToLive,
    OpKind,
    Put,
    ReadConsistency,
    Scan,
    ScanOk,
    Txn,
    TxnOk,
    TxnOp,
    TxnOpKind,
    WriteOk,
)
from tests.integration.cluster import CLUSTER_ID, WireConn
from tests.server.helpers import eventually, free_addr

PARTITIONS = 3
TTL_FLOOR_MS = 300
TICK_S = 0.01


def _config(tmp_path: Path, **limits: Any) -> NodeConfig:
    return dataclasses.replace(
        NodeConfig.default(),
        cluster_id=CLUSTER_ID,
        data_dir=tmp_path / "data",
        partitions=PARTITIONS,
        peers=(PeerConfig(1, free_addr(), free_addr()),),
        raft=RaftSettings(tick_ms=10, heartbeat_ticks=2, election_ticks=10),
        limits=LimitSettings(min_lease_ttl_ms=TTL_FLOOR_MS, **limits),
        log_level="warning",
    ).validate()


class Client:
    """The blocking wire client, driven from a worker thread (the node runs meanwhile)."""

    def __init__(self, node: Node, conn: WireConn) -> None:
        self.node = node
        self.conn = conn
        self.rid = 0
        self.seq = 0

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def call(self, make: Callable[[int], Any]) -> Any:
        msg = make(self.next_rid())
        reply = await trio.to_thread.run_sync(self.conn.call, msg)
        assert reply.request_id == msg.request_id
        return reply

    def partition_of(self, key: bytes) -> int:
        return self.node.service._partition_of(key)

    def keys_of(self, partition: int, n: int, prefix: bytes = b"k") -> list[bytes]:
        """`n` keys of `partition`, sorted."""
        out = []
        i = 0
        while len(out) < n:
            key = prefix + b"%05d" % i
            if self.partition_of(key) == partition:
                out.append(key)
            i += 1
        return out

    async def put(self, key: bytes, value: bytes) -> WriteOk:
        reply = await self.call(lambda rid: Put(rid, key, value, 7, self.next_seq()))
        assert isinstance(reply, WriteOk), reply
        return reply

    async def scan(self, partition: int, start: bytes = b"", end: bytes | None = None,
                   limit: int = 0, *, keys_only: bool = False, count_only: bool = False,
                   consistency: ReadConsistency = ReadConsistency.LINEARIZABLE) -> Any:
        return await self.call(lambda rid: Scan(rid, partition, start, end, limit, keys_only,
                                                count_only, consistency))

    async def txn(self, partition: int, compares: list[Compare], success: list[TxnOp],
                  failure: list[TxnOp] = ()) -> Any:  # type: ignore[assignment]
        return await self.call(lambda rid: Txn(rid, partition, tuple(compares), tuple(success),
                                               tuple(failure), 7, self.next_seq()))

    async def grant(self, partition: int, ttl_ms: int) -> Any:
        return await self.call(lambda rid: LeaseGrant(rid, partition, ttl_ms, 7,
                                                      self.next_seq()))

    async def keep_alive(self, partition: int, *ids: int) -> Any:
        return await self.call(lambda rid: LeaseKeepAlive(rid, partition, ids))

    async def ttl(self, lease_id: int, keys: bool = False) -> Any:
        return await self.call(lambda rid: LeaseTimeToLive(rid, lease_id, keys))

    async def revoke(self, lease_id: int) -> Any:
        return await self.call(lambda rid: LeaseRevoke(rid, lease_id, 7, self.next_seq()))

    async def get(self, key: bytes) -> Any:
        return await self.call(lambda rid: Get(rid, key, ReadConsistency.LINEARIZABLE,
                                               self.partition_of(key)))


@asynccontextmanager
async def serving(tmp_path: Path, **limits: Any) -> AsyncIterator[Client]:
    node = Node(_config(tmp_path, **limits))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await eventually(lambda: all(d.is_leader and d.leases.leading for d in node.drivers))
        client = Client(node, await trio.to_thread.run_sync(WireConn, node.client_port))
        try:
            yield client
        finally:
            client.conn.close()
            nursery.cancel_scope.cancel()


def put_op(key: bytes, value: bytes, lease: int = 0) -> TxnOp:
    return TxnOp(TxnOpKind.PUT, key, value, lease)


def get_op(key: bytes) -> TxnOp:
    return TxnOp(TxnOpKind.GET, key)


def version_is(key: bytes, op: CompareOp, n: int) -> Compare:
    return Compare(key, CompareTarget.VERSION, op, None, n)


# -- scans --------------------------------------------------------------------------

async def test_a_scan_pages_through_one_partition_in_key_order(tmp_path: Path) -> None:
    async with serving(tmp_path, max_scan_page=4) as c:
        keys = c.keys_of(1, 10)
        for k in keys:
            await c.put(k, b"v" + k)
        first = await c.scan(1, limit=3)
        assert isinstance(first, ScanOk)
        assert [kv.key for kv in first.kvs] == keys[:3]
        assert (first.count, first.more) == (10, True)
        kv = first.kvs[0]
        assert (kv.value, kv.version, kv.create_revision, kv.lease) == (b"v" + keys[0], 1,
                                                                         kv.mod_revision, 0)
        # A limit over the page cap (and 0) gets the cap; `more` until the end.
        got, start = [], b""
        while True:
            page = await c.scan(1, start, limit=100)
            assert len(page.kvs) <= 4 and page.count == 10 - len(got)
            got += [kv.key for kv in page.kvs]
            if not page.more:
                break
            start = page.kvs[-1].key + b"\0"
        assert got == keys
        # A bounded range, keys only, count only.
        page = await c.scan(1, keys[2], keys[5], keys_only=True)
        assert [(kv.key, kv.value) for kv in page.kvs] == [(k, b"") for k in keys[2:5]]
        assert (page.count, page.more) == (3, False)
        page = await c.scan(1, count_only=True)
        assert (page.kvs, page.count, page.more) == ((), 10, False)
        # Other partitions hold none of them.
        assert (await c.scan(0, count_only=True)).count == 0


@pytest.mark.parametrize("consistency", list(ReadConsistency), ids=lambda c: c.name)
async def test_a_scan_is_served_at_every_read_level(tmp_path: Path,
                                                    consistency: ReadConsistency) -> None:
    async with serving(tmp_path) as c:
        keys = c.keys_of(2, 3)
        for k in keys:
            put = await c.put(k, b"x")
        page = await c.scan(2, consistency=consistency)
        assert [kv.key for kv in page.kvs] == keys
        assert page.applied_index >= put.revision


async def test_a_scan_page_stops_before_the_byte_cap_but_holds_one_key(tmp_path: Path) -> None:
    async with serving(tmp_path, max_scan_bytes=1000) as c:
        keys = c.keys_of(0, 5)
        for k in keys:
            await c.put(k, b"x" * 400)
        page = await c.scan(0)
        assert [kv.key for kv in page.kvs] == keys[:2] and page.more  # 2 * 406 <= 1000
        await c.put(keys[0], b"y" * 5000)  # one value over the cap alone
        page = await c.scan(0)
        assert [kv.key for kv in page.kvs] == keys[:1] and page.more
        page = await c.scan(0, keys_only=True)  # keys only: values do not count
        assert len(page.kvs) == 5 and not page.more


async def test_a_scan_of_a_partition_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        err = await c.scan(PARTITIONS)
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_REQUEST
        assert "partition 3 does not exist" in err.message


# -- transactions ---------------------------------------------------------------------

async def test_a_txn_runs_the_branch_its_compares_choose(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        a, b = c.keys_of(1, 2)
        # Create a only if absent: success branch, then a read of what it wrote.
        ok = await c.txn(1, [version_is(a, CompareOp.EQUAL, 0)],
                         [put_op(a, b"1"), get_op(a), get_op(b)], [get_op(a)])
        assert isinstance(ok, TxnOk) and ok.succeeded
        put, read_a, read_b = ok.results
        assert (put.version, put.prev_version) == (1, 0)
        assert (read_a.value, read_a.version, read_a.create_revision, read_a.mod_revision) == (
            b"1", 1, ok.revision, ok.revision)
        assert read_b.value is None and read_b.version == 0
        # Again: a exists now, so the failure branch runs (an answer, not an error).
        again = await c.txn(1, [version_is(a, CompareOp.EQUAL, 0)], [put_op(a, b"2")],
                            [get_op(a), put_op(b, b"lost the race")])
        assert isinstance(again, TxnOk) and not again.succeeded
        assert again.results[0].value == b"1"
        assert again.revision > ok.revision
        # Value compares; an absent key has no value, so any VALUE compare on it is false.
        (absent,) = c.keys_of(1, 1, prefix=b"absent")
        eq = Compare(a, CompareTarget.VALUE, CompareOp.EQUAL, b"1", None)
        ne = Compare(a, CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"zzz", None)
        assert (await c.txn(1, [eq, ne], [get_op(a)])).succeeded
        ne_absent = Compare(absent, CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"zzz", None)
        assert not (await c.txn(1, [eq, ne_absent], [TxnOp(TxnOpKind.DELETE, a)])).succeeded
        assert (await c.get(a)).value == b"1"


async def test_a_txn_across_partitions_is_refused_naming_them(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        (a,) = c.keys_of(0, 1)
        (b,) = c.keys_of(2, 1)
        err = await c.txn(0, [version_is(a, CompareOp.GREATER, 0)], [put_op(b, b"x")])
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_REQUEST
        assert "partitions [0, 2]" in err.message and repr(b) in err.message
        assert "hash tag" in err.message


async def test_keys_of_one_hash_tag_make_one_txn(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        tagged = [b"{order:7}:items", b"{order:7}:total"]
        p = c.partition_of(tagged[0])
        assert c.partition_of(tagged[1]) == p
        # One txn, and one lease holding both (a lease holds keys of its partition).
        lease = (await c.grant(p, 1000)).lease_id
        ok = await c.txn(p, [], [put_op(tagged[0], b"3", lease), put_op(tagged[1], b"9.99", lease)])
        assert ok.succeeded
        assert (await c.ttl(lease, keys=True)).keys == tuple(sorted(tagged))
        assert (await c.revoke(lease)).version == 2


async def test_a_batch_is_a_txn_answered_as_before(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        a, b = c.keys_of(2, 2)
        ok = await c.call(lambda rid: Batch(rid, 2, (BatchOp(OpKind.PUT, a, b"1"),
                                                     BatchOp(OpKind.PUT, b, b"2"),
                                                     BatchOp(OpKind.DELETE, a, None)), 7, 99))
        assert isinstance(ok, WriteOk) and ok.succeeded
        assert [(o.version, o.prev_version) for o in ok.ops] == [(1, 0), (1, 0), (0, 1)]
        assert (await c.get(a)).value is None and (await c.get(b)).value == b"2"
        (other,) = c.keys_of(0, 1)
        err = await c.call(lambda rid: Batch(rid, 2, (BatchOp(OpKind.PUT, other, b"1"),), 7, 100))
        assert isinstance(err, Error) and "partitions [0]" in err.message


# -- leases ----------------------------------------------------------------------------

async def test_a_lease_grant_keep_alive_ttl_list_and_revoke(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        a, b = c.keys_of(1, 2)
        granted = await c.grant(1, 10)  # under the floor: raised to it
        assert isinstance(granted, LeaseOk)
        lease = granted.lease_id
        assert lease & 0xFFFF == 1
        assert (granted.ttl_ms, granted.remaining_ms) == (TTL_FLOOR_MS, TTL_FLOOR_MS)
        long = (await c.grant(1, 60_000)).lease_id
        ok = await c.txn(1, [], [put_op(a, b"1", lease), put_op(b, b"2", lease)])
        assert ok.succeeded
        assert (await c.get(a)).value == b"1"
        status = await c.ttl(lease, keys=True)
        assert isinstance(status, LeaseOk)
        assert status.keys == (a, b) and 0 < status.remaining_ms <= TTL_FLOOR_MS
        alive = await c.keep_alive(1, lease, long, (12345 << 16) | 1)
        assert isinstance(alive, LeaseKeepAliveOk)
        assert alive.remaining_ms == (TTL_FLOOR_MS, 60_000, 0)  # 0: no such lease
        listed = await c.call(lambda rid: LeaseList(rid, 1))
        assert isinstance(listed, LeaseListOk)
        assert [(i.lease_id, i.ttl_ms) for i in listed.leases] == [(lease, TTL_FLOOR_MS),
                                                                    (long, 60_000)]
        revoked = await c.revoke(lease)
        assert isinstance(revoked, WriteOk) and revoked.version == 2  # keys deleted
        assert (await c.get(a)).value is None and (await c.get(b)).value is None
        for err in (await c.revoke(lease), await c.ttl(lease)):
            assert isinstance(err, Error) and err.code == ErrorCode.LEASE_NOT_FOUND
        # A leased put naming a lease that is gone changes nothing.
        err = await c.txn(1, [], [put_op(a, b"1", lease)])
        assert isinstance(err, Error) and err.code == ErrorCode.LEASE_NOT_FOUND
        # A keep-alive names leases of its own partition only.
        err = await c.keep_alive(2, long)
        assert isinstance(err, Error) and err.code == ErrorCode.BAD_REQUEST


async def test_a_lease_nobody_keeps_alive_expires_with_its_keys(tmp_path: Path) -> None:
    async with serving(tmp_path) as c:
        (key,) = c.keys_of(0, 1)
        kept = (await c.grant(0, TTL_FLOOR_MS)).lease_id
        granted = await c.grant(0, TTL_FLOOR_MS)
        t0 = trio.current_time()
        lapsing = granted.lease_id
        assert (await c.txn(0, [], [put_op(key, b"v", lapsing)])).succeeded
        driver = c.node.drivers[0]
        # Keep the other one alive meanwhile: it must outlive several TTLs.
        while driver.sm.has_lease(lapsing):
            assert trio.current_time() - t0 < 3 * TTL_FLOOR_MS / 1000, "never expired"
            assert (await c.keep_alive(0, kept)).remaining_ms == (TTL_FLOOR_MS,)
            await trio.sleep(0.05)
        # Not before its TTL (granted after t0 on the leader's clock).
        assert trio.current_time() - t0 >= TTL_FLOOR_MS / 1000
        assert (await c.get(key)).value is None
        assert (await c.keep_alive(0, lapsing, kept)).remaining_ms == (0, TTL_FLOOR_MS)
        err = await c.ttl(lapsing)
        assert isinstance(err, Error) and err.code == ErrorCode.LEASE_NOT_FOUND
        for _ in range(2 * TTL_FLOOR_MS // 50):
            await trio.sleep(0.05)
            assert (await c.keep_alive(0, kept)).remaining_ms == (TTL_FLOOR_MS,)
        assert driver.sm.has_lease(kept)


async def test_more_leases_than_the_limit_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path, max_leases=2) as c:
        for _ in range(2):
            assert isinstance(await c.grant(2, 1000), LeaseOk)
        err = await c.grant(2, 1000)
        assert isinstance(err, Error) and err.code == ErrorCode.TOO_MANY_LEASES
        assert isinstance(await c.grant(1, 1000), LeaseOk)  # per partition


async def test_a_new_leader_term_gives_every_lease_its_full_ttl(tmp_path: Path) -> None:
    """A restarted core (as after a bug) leads a new term: every TTL starts again."""
    async with serving(tmp_path) as c:
        lease = (await c.grant(1, 1000)).lease_id
        driver = c.node.drivers[1]
        await trio.sleep(0.5)
        before = (await c.ttl(lease)).remaining_ms
        assert before <= 520
        term = driver.raw.term
        driver.restart_core()
        await eventually(lambda: driver.is_leader and driver.raw.term > term
                         and driver.leases.leading)
        after = await c.ttl(lease)
        assert isinstance(after, LeaseOk) and after.remaining_ms > 900
