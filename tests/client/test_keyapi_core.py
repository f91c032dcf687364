"""The key API plans of `ClientCore` (scans, txns, leases), driven without any I/O.

Each plan runs under `drive_blocking` with a send that hands the request
straight to a fake node (tests/client/fake.py `run_plan`), so these tests are
synchronous and deterministic, and hypothesis can run hundreds of scans.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.client.core import ClientCore, Gather, Sleep
from prkdb.client.lease import KeepAliveState, keep_alive_loop
from prkdb.client.results import Lease
from prkdb.client.scan import KeyRange, decode_token, key_range
from prkdb.client.txn import Compare, Delete, Get, Put, absent, exists
from prkdb.errors import InvalidRequest, LeaseNotFound, ProtocolError
from prkdb.wire.messages import ReadConsistency, Scan, ScanOk, Txn
from tests.client.fake import FakeCluster, ManualClock, key_in, run_plan

LIN = ReadConsistency.LINEARIZABLE


def make(partitions: int = 4, clock: ManualClock | None = None) -> tuple[FakeCluster, ClientCore]:
    cluster = FakeCluster(None, partitions=partitions)
    clock = clock or ManualClock()
    cluster.clock = clock
    core = ClientCore(cluster.seeds[:1], clock=clock, rng=random.Random(3))
    run_plan(cluster, core.refresh_topology(None), clock)
    return cluster, core


def load(cluster: FakeCluster, core: ClientCore, keys: list[bytes]) -> None:
    for key in keys:
        run_plan(cluster, core.put(key, b"v:" + key, None))


def scans(cluster: FakeCluster) -> list[Scan]:
    return cluster.received_of(Scan)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.sets(st.binary(min_size=1, max_size=4), max_size=60),
    page_size=st.integers(1, 9),
    cap=st.integers(1, 9),
    limit=st.integers(0, 40),
    prefix=st.none() | st.binary(max_size=1),
)
def test_scan_returns_sorted_keys_once(keys: set[bytes], page_size: int, cap: int, limit: int,
                                       prefix: bytes | None) -> None:
    """Random contents, page sizes, server page caps and limits: exactly the sorted keys."""
    cluster, core = make()
    load(cluster, core, sorted(keys))
    cluster.scan_page_cap = cap  # the server may return fewer keys than asked
    rng = key_range(prefix)
    want = sorted(k for k in keys if k in rng)
    want = want[:limit] if limit else want
    got = run_plan(cluster, core.scan(rng, limit, False, LIN, page_size, None))
    assert [kv.key for kv in got] == want
    assert all(kv.value == b"v:" + kv.key and kv.version == 1 for kv in got)
    # Page by page through tokens (what a web API's "next" link does).
    pages, token = [], None
    while True:
        page = run_plan(cluster, core.scan_page(None if token else rng, limit, False, LIN, token,
                                                page_size, None))
        pages.append([kv.key for kv in page.items])
        token = page.token
        if token is None:
            break
        assert len(page.items) == page_size
    assert [k for p in pages for k in p] == want
    assert run_plan(cluster, core.count(rng, LIN, None)) == len(
        [k for k in keys if k in rng])


def test_small_limit_reads_a_page_per_partition_not_every_key() -> None:
    cluster, core = make(partitions=8)
    load(cluster, core, [b"k%04d" % i for i in range(400)])
    cluster.received.clear()
    got = run_plan(cluster, core.scan(key_range(b"k"), 3, True, LIN, 1000, None))
    assert [kv.key for kv in got] == [b"k0000", b"k0001", b"k0002"]
    assert all(kv.value == b"" for kv in got)  # keys_only
    assert len(scans(cluster)) == 8 and {m.limit for m in scans(cluster)} == {3}


def test_scan_fetches_partitions_together_and_only_when_needed() -> None:
    cluster, core = make(partitions=4)
    load(cluster, core, [b"k%03d" % i for i in range(40)])
    cluster.received.clear()
    cursor = run_plan(cluster, core.scan_cursor(key_range(), 0, False, LIN, 5, None))
    plan = cursor.next_batch()
    first = next(plan)
    assert isinstance(first, Gather) and len(first.plans) == 4  # every partition at once
    plan.close()
    first_batch = run_plan(cluster, cursor.next_batch())
    assert first_batch and first_batch == sorted(first_batch, key=lambda kv: kv.key)
    assert [kv.key for kv in run_plan(cluster, core.scan(key_range(), 0, False, LIN, 5, None))
            ] == [b"k%03d" % i for i in range(40)]


def test_hash_tagged_prefix_scans_one_partition() -> None:
    cluster, core = make(partitions=8)
    tagged = [b"user:{42}:%d" % i for i in range(20)]
    load(cluster, core, [*tagged, b"user:{43}:0", b"other"])
    cluster.received.clear()
    got = run_plan(cluster, core.scan(key_range(b"user:{42}:"), 0, False, LIN, 7, None))
    assert [kv.key for kv in got] == sorted(tagged)
    assert {m.partition for m in scans(cluster)} == {cluster.partition_of(b"{42}")}
    # A resumed page of it too.
    page = run_plan(cluster, core.scan_page(key_range(b"user:{42}:"), 0, False, LIN, None, 5,
                                            None))
    assert page.token is not None
    cluster.received.clear()
    run_plan(cluster, core.scan_page(None, 0, False, LIN, page.token, 5, None))
    assert len({m.partition for m in scans(cluster)}) == 1


def test_scan_page_token_carries_range_keys_only_and_limit() -> None:
    cluster, core = make()
    load(cluster, core, [b"a%d" % i for i in range(10)])
    page = run_plan(cluster, core.scan_page(key_range(b"a"), 7, True, LIN, None, 3, None))
    assert [kv.key for kv in page.items] == [b"a0", b"a1", b"a2"]
    assert page.token is not None
    token = decode_token(page.token)
    assert token.keys_only and token.limit_left == 4 and token.range.end == b"b"
    rest = run_plan(cluster, core.scan_page(key_range(b"a"), 0, False, LIN, page.token, 10,
                                            None))
    assert [kv.key for kv in rest.items] == [b"a3", b"a4", b"a5", b"a6"]
    assert all(kv.value == b"" for kv in rest.items) and rest.token is None
    with pytest.raises(InvalidRequest, match="token continues a scan"):
        run_plan(cluster, core.scan_page(key_range(b"b"), 0, False, LIN, page.token, 3, None))


def test_a_page_that_breaks_the_contract_is_a_protocol_error() -> None:
    cluster, core = make(partitions=1)
    load(cluster, core, [b"a", b"b"])
    real = cluster.scan

    def backwards(msg: Scan) -> ScanOk:
        reply = real(msg)
        assert isinstance(reply, ScanOk)
        return ScanOk(reply.request_id, reply.kvs[::-1], reply.count, reply.more,
                      reply.applied_index)

    cluster.scan = backwards  # type: ignore[method-assign]
    with pytest.raises(ProtocolError, match="ascending"):
        run_plan(cluster, core.scan(key_range(), 0, False, LIN, 10, None))


def test_empty_range_asks_nobody() -> None:
    cluster, core = make()
    cluster.received.clear()
    assert run_plan(cluster, core.scan(KeyRange(b"b", b"a"), 0, False, LIN, 10, None)) == []
    assert run_plan(cluster, core.count(KeyRange(b"b", b"a"), LIN, None)) == 0
    assert scans(cluster) == []


# --- transactions ------------------------------------------------------------------------


def test_txn_compares_pick_the_branch_and_gets_read_the_branch_state() -> None:
    cluster, core = make()
    a, b = b"acct:{7}:state", b"acct:{7}:lock"
    run_plan(cluster, core.put(a, b"open", None))
    result = run_plan(cluster, core.txn(
        [Compare.value(a) == b"open", absent(b), Compare.version(a) > 0],
        [Put(a, b"closed"), Delete(b), Get(a), Get(b)],
        [Get(a)], None))
    assert result.succeeded
    put, delete, get_a, get_b = result.results
    assert (put.version, put.prev_version) == (2, 1)
    assert delete.prev_version == 0
    assert get_a.value == b"closed" and get_a.version == 2 and get_a.create_revision > 0
    assert get_a.mod_revision == result.revision
    assert get_b.value is None and get_b.version == 0
    again = run_plan(cluster, core.txn([Compare.value(a) == b"open"], [Put(a, b"x")],
                                       [Get(a)], None))
    assert not again.succeeded and again.results[0].value == b"closed"


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Compare.version(b"k") >= 1, "support =="),
        (lambda: Compare(b"k", 1, 0, b"x"), "must be an int"),
        (lambda: Compare.value(b"k") == 3, "must be bytes"),
        (lambda: bool(Compare.version(b"k")), "needs a comparison"),
    ],
    ids=["ge", "bytes for version", "int for value", "bool"],
)
def test_compare_builders_refuse_mistakes(build: object, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        build()  # type: ignore[operator]


def test_compare_builders_make_wire_compares() -> None:
    assert exists(b"k") == Compare(b"k", 1, 3, 0)
    assert (Compare.mod_revision(b"k") < 9).operand == 9
    assert (Compare.lease(b"k") != 5).op.name == "NOT_EQUAL"
    assert (Compare.create_revision(b"k") == 0).target.name == "CREATE_REVISION"


def test_txn_across_partitions_is_refused_before_sending_naming_them() -> None:
    cluster, core = make(partitions=8)
    k1, k2 = key_in(1, 8), key_in(2, 8)
    cluster.received.clear()
    with pytest.raises(InvalidRequest) as info:
        run_plan(cluster, core.txn([exists(k1)], [Put(k2, b"v")], [], None))
    message = info.value.message
    assert "span partitions [1, 2]" in message
    assert f"partition 1: {k1!r}" in message and f"partition 2: {k2!r}" in message
    assert "hash tag" in message and "{42}" in message
    assert info.value.details == {"partitions": [1, 2]}
    assert cluster.received_of(Txn) == []
    cluster.key_rule = "crc32"
    run_plan(cluster, core.refresh_topology(None))
    with pytest.raises(InvalidRequest, match="key rule is 'crc32'"):
        run_plan(cluster, core.txn([exists(k1)], [Put(k2, b"v")], [], None))


def test_txn_needs_a_key_and_real_ops() -> None:
    _, core = make()
    with pytest.raises(InvalidRequest, match="at least one key"):
        run_plan(FakeCluster(None), core.txn([], [], [], None))
    with pytest.raises(InvalidRequest, match="not Put, Delete or Get"):
        run_plan(FakeCluster(None), core.txn([], [("put", b"k", b"v")], [], None))  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="list of ops"):
        run_plan(FakeCluster(None), core.txn([], Put(b"k", b"v"), [], None))  # type: ignore[arg-type]


def test_batch_goes_as_a_txn_without_compares() -> None:
    cluster, core = make()
    k, k2 = b"{t}1", b"{t}2"
    result = run_plan(cluster, core.batch([("put", k, b"1"), ("put", k2, b"2"),
                                           ("delete", k)], None))
    (txn,) = cluster.received_of(Txn)
    assert txn.compares == () and txn.failure == () and len(txn.success) == 3
    assert [(o.version, o.prev_version) for o in result.ops] == [(1, 0), (1, 0), (0, 1)]
    assert result.succeeded and result.revision == cluster.revision


# --- leases ------------------------------------------------------------------------------


def test_lease_grant_put_ttl_list_revoke() -> None:
    clock = ManualClock()
    cluster, core = make(partitions=8, clock=clock)
    key = b"svc:{a}:1"
    lease = run_plan(cluster, core.grant_lease(0.5, key, None), clock)
    assert lease.partition == cluster.partition_of(key) == lease.id & 0xFFFF
    assert lease.ttl == 2.0  # raised to the server's minimum
    run_plan(cluster, core.put_leased(key, b"up", lease, None), clock)
    assert cluster.store[key].lease == lease.id
    clock.now += 0.5
    status = run_plan(cluster, core.lease_ttl(lease.id, True, None), clock)
    assert (status.ttl, status.remaining, status.keys) == (2.0, 1.5, (key,))
    assert run_plan(cluster, core.keep_alive_once(lease.id, None), clock) == 2.0
    other = run_plan(cluster, core.grant_lease(3, b"", None), clock)
    listed = run_plan(cluster, core.leases(None), clock)
    assert [s.id for s in listed] == sorted([lease.id, other.id])
    many = run_plan(cluster, core.keep_alive([lease.id, other.id, lease.id], None), clock)
    assert many == {lease.id: 2.0, other.id: 3.0}
    assert run_plan(cluster, core.revoke_lease(lease.id, None), clock) == 1
    assert key not in cluster.store
    with pytest.raises(LeaseNotFound):
        run_plan(cluster, core.keep_alive_once(lease.id, None), clock)
    with pytest.raises(LeaseNotFound):
        run_plan(cluster, core.revoke_lease(lease.id, None), clock)
    with pytest.raises(LeaseNotFound):
        run_plan(cluster, core.lease_ttl(lease.id, False, None), clock)
    with pytest.raises(LeaseNotFound, match="names partition 9"):
        run_plan(cluster, core.revoke_lease(5 << 16 | 9, None), clock)


def test_leased_put_in_another_partition_is_refused_before_sending() -> None:
    cluster, core = make(partitions=8)
    lease = run_plan(cluster, core.grant_lease(5, key_in(1, 8), None))
    cluster.received.clear()
    with pytest.raises(InvalidRequest, match=r"lives in partition 1, but the key is in "
                                             r"partition 2"):
        run_plan(cluster, core.put_leased(key_in(2, 8), b"v", lease.id, None))
    assert cluster.received_of(Txn) == []


def test_keep_alive_loop_renews_every_third_of_the_ttl_until_lost() -> None:
    clock = ManualClock()
    cluster, core = make(clock=clock)
    lease = run_plan(cluster, core.grant_lease(3, b"k", None), clock)
    state = KeepAliveState(lease, clock.now)
    loop = keep_alive_loop(core, state)
    action = next(loop)
    for _ in range(6):
        assert isinstance(action, Sleep) and action.seconds == pytest.approx(1.0)
        clock.now += action.seconds
        action = loop.send(None)
        # drive the keep-alive request
        while not isinstance(action, Sleep):
            action = loop.send(cluster.node_at(action.address).execute(  # type: ignore[union-attr]
                _decode(action.build(1))))
    assert state.renewals == 6 and not state.lost
    assert state.expires_at == pytest.approx(clock.now + 3)
    cluster.leases.clear()  # revoked behind our back
    clock.now += action.seconds
    action = loop.send(None)
    with pytest.raises(StopIteration):
        while True:
            action = loop.send(cluster.node_at(action.address).execute(  # type: ignore[union-attr]
                _decode(action.build(1))))
    assert state.lost and "gone" in (state.reason or "")


def test_keep_alive_loop_gives_up_when_the_lease_must_have_expired() -> None:
    clock = ManualClock()
    cluster, core = make(clock=clock)
    state = KeepAliveState(Lease(1 << 16 | 0, 3.0, 0), clock.now)
    for node in cluster.nodes.values():
        node.up = False  # every keep-alive fails to connect
    run_plan(cluster, keep_alive_loop(core, state), clock)
    assert state.lost and "before it expired" in (state.reason or "")
    assert 3.0 <= clock.now < 4.0


def _decode(built: object) -> object:
    from prkdb.wire import from_wire
    return from_wire(built)  # type: ignore[arg-type]
