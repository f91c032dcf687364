"""PrkDbClient against the fake cluster: routing, retries, exactly-once, concurrency.

Everything runs over in-memory streams, so tests that wait use trio's
`autojump_clock` and assert in virtual seconds.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio

from prkdb.client import (
    GetResult,
    InvalidRequest,
    OutcomeUnknown,
    PrkDbClient,
    ReadConsistency,
    Timeout,
    TooLarge,
    Unavailable,
    WrongCluster,
)
from prkdb.client.routing import Topology
from prkdb.errors import ErrorCode, InternalError
from prkdb.partitioning import partition_for
from prkdb.wire import NEED_DATA, FrameDecoder, from_wire
from prkdb.wire.messages import Delete, Get, Put, Status
from tests.client.fake import (
    DROP_AFTER,
    DROP_BEFORE,
    HANG,
    Delay,
    FakeCluster,
    FakeNode,
    WrappedStream,
    connect,
    error,
    key_in,
)

# --- basics and routing --------------------------------------------------------------


async def test_put_get_delete_route_to_partition_leaders(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    assert client.topology.partitions == 4
    for p in range(4):
        key = key_in(p, 4)
        result = await client.put(key, b"v%d" % p)
        assert (result.succeeded, result.version, result.prev_version) == (True, 1, 0)
        assert await client.get(key) == b"v%d" % p
    # every write and linearizable read went to its partition's leader, first time
    for node_id, msg in cluster.received:
        if isinstance(msg, Put):
            p = next(p for p in range(4) if key_in(p, 4) == msg.key)
            assert node_id == cluster.leaders[p]
        if isinstance(msg, Get):
            assert node_id == cluster.leaders[msg.partition]
    deleted = await client.delete(key_in(0, 4))
    assert deleted.prev_version == 1
    assert await client.get(key_in(0, 4)) is None
    await client.aclose()


async def test_get_entry_unpacks_and_has_fields(cluster: FakeCluster) -> None:
    async with await connect(cluster) as client:
        w = await client.put(b"a", b"1")
        entry = await client.get_entry(b"a")
        assert isinstance(entry, GetResult)
        value, version, mod_revision, applied = entry
        assert (value, version, mod_revision) == (b"1", 1, w.revision)
        assert applied >= w.revision
        assert await client.get_entry(b"missing") == GetResult(None, 0, 0, applied)


async def test_connect_is_an_async_context_manager(cluster: FakeCluster) -> None:
    async with PrkDbClient.connect(
        cluster.seeds[1:2], stream_factory=cluster.stream_factory
    ) as client:
        await client.put(b"x", b"y")
        assert await client.get(b"x") == b"y"
    with pytest.raises(InvalidRequest, match="closed"):
        await client.get(b"x")


async def test_follower_reads_spread_over_non_leaders(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    key = key_in(0, 4)
    leader = cluster.leaders[0]
    cluster.received.clear()
    for _ in range(6):
        await client.get_with_consistency(key, ReadConsistency.FOLLOWER)
    nodes = [n for n, m in cluster.received if isinstance(m, Get)]
    assert leader not in nodes
    assert set(nodes) == set(cluster.nodes) - {leader}  # round-robin over both followers
    cluster.received.clear()
    for _ in range(6):
        await client.get_with_consistency(key, ReadConsistency.STALE)
    assert {n for n, m in cluster.received if isinstance(m, Get)} == set(cluster.nodes)
    await client.aclose()


async def test_follower_read_falls_back_to_leader(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    key = key_in(0, 4)
    leader = cluster.leaders[0]

    async def followers_unavailable(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Get) and node.node_id != leader:
            return error(ErrorCode.UNAVAILABLE)
        return None

    cluster.hook = followers_unavailable
    await client.put(key, b"v")
    assert await client.get_with_consistency(key, ReadConsistency.FOLLOWER) == b"v"
    assert [n for n, m in cluster.received if isinstance(m, Get)][-1] == leader
    await client.aclose()


async def test_seed_list_skips_dead_seed(cluster: FakeCluster) -> None:
    cluster.nodes[1].up = False
    client = await connect(cluster, seeds=cluster.seeds)
    assert client.topology.partitions == 4
    await client.aclose()


# --- NOT_LEADER and topology ---------------------------------------------------------


async def test_not_leader_hint_is_followed(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    key = key_in(1, 4)
    old = cluster.leaders[1]
    new = old % 3 + 1
    cluster.leaders[1] = new  # the client's cache is now stale
    assert (await client.put(key, b"v")).succeeded
    writes = cluster.writes_received()
    assert [n for n, _ in writes] == [old, new]
    assert client.topology.leader_of(1) == new
    # the next write goes straight to the new leader
    await client.put(key, b"w")
    assert cluster.writes_received()[-1][0] == new
    await client.aclose()


async def test_unknown_leader_refreshes_topology_from_another_node(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    key = key_in(2, 4)
    old = cluster.leaders[2]
    new = old % 3 + 1
    cluster.leaders[2] = new
    cluster.nodes[old].view = {2: 0}  # the old leader knows no leader (election)
    cluster.received.clear()
    start = trio.current_time()
    assert (await client.put(key, b"v")).succeeded
    statuses = [n for n, m in cluster.received if isinstance(m, Status)]
    assert statuses and statuses[0] != old  # asked someone else
    assert cluster.writes_received()[-1][0] == new
    assert client.topology.leader_of(2) == new
    assert trio.current_time() - start < 1.0
    await client.aclose()


async def test_crashed_leader_is_forgotten(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    key = key_in(0, 4)
    await client.put(key, b"1")
    old = cluster.leaders[0]
    await cluster.crash(old)
    for p, leader in cluster.leaders.items():
        if leader == old:
            cluster.leaders[p] = old % 3 + 1
    assert (await client.put(key, b"2")).succeeded
    assert await client.get(key) == b"2"
    assert cluster.applied.count(cluster.applied[-1]) == 1
    await client.aclose()


async def test_status_transfer_leader_and_snapshot(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    status = await client.status()
    assert len(status.partitions) == 4 and len(status.nodes) == 3
    status2 = await client.status(node_id=2)
    assert status2.node_id == 2
    ok = await client.transfer_leader(0, to_node=3)
    assert ok.details == {"new_leader": 3}
    assert cluster.leaders[0] == 3
    await client.snapshot(1)
    await client.snapshot(node_id=2)
    assert cluster.snapshots == [(cluster.leaders[1], 1), (2, None)]
    with pytest.raises(InvalidRequest, match="partition 9"):
        await client.transfer_leader(9)
    await client.aclose()


# --- retries, deadlines, exactly-once ------------------------------------------------


async def test_unavailable_is_retried_with_backoff_within_deadline(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    attempts: list[float] = []

    async def flaky(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Put):
            attempts.append(trio.current_time())
            if len(attempts) <= 4:
                return error(ErrorCode.UNAVAILABLE, "no quorum")
        return None

    cluster.hook = flaky
    result = await client.put(b"k", b"v", timeout=2.0)
    assert result.succeeded
    assert len(attempts) == 5
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(g > 0 for g in gaps)
    assert gaps[-1] > gaps[0]  # exponential
    assert attempts[-1] - attempts[0] < 2.0
    # one logical write: one (client_id, seq), applied once
    assert {(m.client_id, m.seq) for _, m in cluster.writes_received()} == {(client.client_id, 1)}
    assert len(cluster.applied) == 1
    await client.aclose()


async def test_read_gives_up_with_timeout_naming_partition(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)

    async def down(node: FakeNode, msg: Any) -> Any:
        return error(ErrorCode.UNAVAILABLE, "no quorum") if isinstance(msg, Get) else None

    cluster.hook = down
    key = key_in(3, 4)
    start = trio.current_time()
    with pytest.raises(Timeout, match="partition 3") as info:
        await client.get(key, timeout=1.5)
    assert isinstance(info.value, Unavailable)
    assert "no quorum" in str(info.value)
    assert 1.5 <= trio.current_time() - start < 1.6
    await client.aclose()


async def test_write_retry_after_dropped_reply_reuses_seq_and_applies_once(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    dropped = []

    async def drop_first_reply(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Put) and not dropped:
            dropped.append(msg)
            return DROP_AFTER  # applied, then the connection dies
        return None

    cluster.hook = drop_first_reply
    result = await client.put(b"k", b"v")
    assert result.succeeded and result.version == 1
    sent = [(m.client_id, m.seq) for _, m in cluster.writes_received()]
    assert sent == [(client.client_id, 1), (client.client_id, 1)]
    assert cluster.applied == [(client.client_id, 1)]
    assert cluster.replayed == [(client.client_id, 1)]
    # the next write uses the next seq of the same session
    await client.put(b"k", b"w")
    assert cluster.writes_received()[-1][1].seq == 2
    await client.aclose()


async def test_server_outcome_unknown_is_retried_with_same_seq(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    calls = []

    async def lost_leadership(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Put):
            calls.append(msg)
            if len(calls) == 1:
                node.cluster.apply_write(msg, partition_for(msg.key, 4))  # it happened...
                return error(ErrorCode.OUTCOME_UNKNOWN, "leadership lost")  # ...but who knows
        return None

    cluster.hook = lost_leadership
    result = await client.put(b"k", b"v")
    assert result.version == 1
    assert {(m.client_id, m.seq) for m in calls} == {(client.client_id, 1)}
    assert len(calls) == 2 and len(cluster.applied) == 1
    await client.aclose()


@pytest.mark.parametrize("action", [DROP_AFTER, HANG])
async def test_outcome_unknown_after_ambiguous_attempt_and_deadline(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock, action: str
) -> None:
    client = await connect(cluster)

    async def never_answer_writes(node: FakeNode, msg: Any) -> Any:
        return action if isinstance(msg, Put) else None

    cluster.hook = never_answer_writes
    start = trio.current_time()
    with pytest.raises(OutcomeUnknown, match="may or may not"):
        await client.put(b"k", b"v", timeout=1.0)
    assert trio.current_time() - start == pytest.approx(1.0)
    seqs = {(m.client_id, m.seq) for _, m in cluster.writes_received()}
    assert seqs == {(client.client_id, 1)}  # every retry was the same write
    # the session moves on: the next write is seq 2
    cluster.hook = None
    await client.put(b"k", b"w")
    assert cluster.writes_received()[-1][1].seq == 2
    await client.aclose()


async def test_write_never_sent_is_timeout_not_outcome_unknown(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    for node_id in cluster.nodes:
        await cluster.crash(node_id)
    with pytest.raises(Timeout, match="partition") as info:
        await client.put(b"k", b"v", timeout=1.0)
    assert not isinstance(info.value, OutcomeUnknown)
    assert "cannot connect" in str(info.value)
    await client.aclose()


async def test_unavailable_answers_are_not_ambiguous(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)

    async def unavailable(node: FakeNode, msg: Any) -> Any:
        return error(ErrorCode.UNAVAILABLE) if isinstance(msg, Put) else None

    cluster.hook = unavailable
    with pytest.raises(Timeout):
        await client.put(b"k", b"v", timeout=0.5)
    await client.aclose()


async def test_dropped_read_is_retried(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    await client.put(b"k", b"v")
    drops = []

    async def drop_once(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Get) and not drops:
            drops.append(msg)
            return DROP_BEFORE
        return None

    cluster.hook = drop_once
    assert await client.get(b"k") == b"v"
    assert len(drops) == 1
    await client.aclose()


@pytest.mark.parametrize(
    ("code", "exc"),
    [
        (ErrorCode.BAD_REQUEST, InvalidRequest),
        (ErrorCode.TOO_LARGE, TooLarge),
        (ErrorCode.INTERNAL, InternalError),
    ],
)
async def test_permanent_errors_are_not_retried(
    cluster: FakeCluster, code: ErrorCode, exc: type[Exception]
) -> None:
    client = await connect(cluster)

    async def reject(node: FakeNode, msg: Any) -> Any:
        return error(code, "nope", limit=10) if isinstance(msg, Put) else None

    cluster.hook = reject
    with pytest.raises(exc, match="nope"):
        await client.put(b"k", b"v")
    assert len(cluster.writes_received()) == 1
    await client.aclose()


# --- concurrency -----------------------------------------------------------------------


async def test_100_concurrent_puts_share_connections_out_of_order(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    rng = random.Random(3)

    async def jitter(node: FakeNode, msg: Any) -> Any:
        return Delay(rng.uniform(0, 0.05))  # answers leave in a shuffled order

    cluster.hook = jitter
    results: dict[int, Any] = {}

    async def put(i: int) -> None:
        results[i] = await client.put(b"key-%d" % i, b"value-%d" % i)

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(put, i)
    assert len(results) == 100 and all(r.succeeded for r in results.values())
    # one connection per node, however many tasks
    assert [n.connections for n in cluster.nodes.values()] == [1, 1, 1]
    pairs = [(m.client_id, m.seq) for _, m in cluster.writes_received()]
    assert len(pairs) == len(set(pairs)) == 100
    assert client.sessions.size <= 100
    for i in range(100):
        assert cluster.store[b"key-%d" % i][0] == b"value-%d" % i
    await client.aclose()


async def test_responses_out_of_order_reach_the_right_caller(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    key_a, key_b = key_in(0, 4, "a"), key_in(0, 4, "b")  # same leader, same connection
    await client.put(key_a, b"A")
    await client.put(key_b, b"B")

    async def slow_a(node: FakeNode, msg: Any) -> Any:
        return Delay(1.0) if isinstance(msg, Get) and msg.key == key_a else None

    cluster.hook = slow_a
    finished: list[bytes] = []

    async def get(key: bytes) -> None:
        assert await client.get(key) == (b"A" if key == key_a else b"B")
        finished.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, key_a)
        await trio.sleep(0.01)
        nursery.start_soon(get, key_b)
    assert finished == [key_b, key_a]
    await client.aclose()


async def test_cancelled_call_does_not_break_the_connection(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster)
    await client.put(b"k", b"v")

    async def slow_get(node: FakeNode, msg: Any) -> Any:
        return Delay(10) if isinstance(msg, Get) else None

    cluster.hook = slow_get
    with trio.move_on_after(0.5):
        await client.get(b"k")
    cluster.hook = None
    assert await client.get(b"k") == b"v"
    assert sum(n.connections for n in cluster.nodes.values()) == 2  # seed + leader at most
    await client.aclose()


# --- API checks ------------------------------------------------------------------------


async def test_batch_must_stay_in_one_partition(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    k0, k1 = key_in(0, 4), key_in(1, 4)
    before = len(cluster.received)
    with pytest.raises(InvalidRequest, match=r"span partitions \[0, 1\]"):
        await client.batch([("put", k0, b"v"), ("delete", k1)])
    assert len(cluster.received) == before  # nothing sent
    k0b = key_in(0, 4, "other")
    result = await client.batch([("put", k0, b"1"), ("put", k0b, b"2"), ("delete", k0)])
    assert [(o.version, o.prev_version) for o in result.ops] == [(1, 0), (1, 0), (0, 1)]
    assert await client.get(k0b) == b"2" and await client.get(k0) is None
    for bad in ([], [("put", k0)], [("frob", k0)], [("put", "str", b"v")]):
        with pytest.raises(InvalidRequest):
            await client.batch(bad)
    await client.aclose()


async def test_cas(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    created = await client.cas(b"c", expected_value=None, new_value=b"1")
    assert created.succeeded and created.version == 1
    again = await client.cas(b"c", expected_value=None, new_value=b"1")
    assert not again.succeeded and again.version == 1
    swapped = await client.cas(b"c", expected_value=b"1", new_value=b"2")
    assert swapped.succeeded and await client.get(b"c") == b"2"
    by_version = await client.cas(b"c", expected_version=2, new_value=None)
    assert by_version.succeeded and await client.get(b"c") is None
    with pytest.raises(InvalidRequest, match="needs expected_value"):
        await client.cas(b"c", new_value=b"x")
    with pytest.raises(InvalidRequest, match="contradicts"):
        await client.cas(b"c", expected_value=None, expected_version=3, new_value=b"x")
    await client.aclose()


async def test_bad_arguments_raise_invalid_request(cluster: FakeCluster) -> None:
    client = await connect(cluster)
    with pytest.raises(InvalidRequest, match="must not be empty"):
        await client.put(b"", b"v")
    with pytest.raises(InvalidRequest, match="must be bytes"):
        await client.get("text")  # type: ignore[arg-type]
    with pytest.raises(TooLarge):
        await client.put(b"k", b"x" * (17 * 1024 * 1024))
    with pytest.raises(InvalidRequest, match="not host:port"):
        await PrkDbClient.connect(["nohost"])
    await client.aclose()


async def test_wrong_cluster_id(cluster: FakeCluster) -> None:
    with pytest.raises(WrongCluster, match="prkdb"):
        await connect(cluster, cluster_id="other")


async def test_connect_times_out_when_no_seed_answers(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    for node in cluster.nodes.values():
        node.up = False
    with pytest.raises(Timeout, match="status"):
        await connect(cluster, timeout=2.0)


async def test_http_seed_over_real_tcp(nursery: trio.Nursery) -> None:
    tcp = FakeCluster(nursery)
    await serve_tcp(tcp, nursery)
    seed = "http://" + tcp.nodes[1].address + "/"
    async with PrkDbClient.connect([seed], timeout=5.0) as client:
        for i in range(20):
            await client.put(b"t%d" % i, b"v")
        assert await client.get(b"t7") == b"v"
        assert client.topology.nodes == {n: tcp.nodes[n].address for n in tcp.nodes}


async def serve_tcp(cluster: FakeCluster, nursery: trio.Nursery) -> None:
    """Give every fake node a real 127.0.0.1 listener (its address changes to match)."""
    for node in cluster.nodes.values():
        listeners = await nursery.start(partial(trio.serve_tcp, node.serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        node.address = f"127.0.0.1:{port}"


async def test_silent_leader_is_abandoned_after_attempt_timeout(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A frozen (or partitioned-away) leader keeps its TCP connection but never answers."""
    client = await connect(cluster, seeds=cluster.seeds, attempt_timeout=2.0)
    key = key_in(0, 4)
    old = cluster.leaders[0]
    new = old % 3 + 1

    async def frozen(node: FakeNode, msg: Any) -> Any:
        return HANG if node.node_id == old else None

    cluster.hook = frozen
    cluster.leaders = {
        p: (new if leader == old else leader) for p, leader in cluster.leaders.items()
    }
    start = trio.current_time()
    result = await client.put(key, b"v", timeout=5.0)
    assert result.succeeded
    assert 2.0 <= trio.current_time() - start < 3.0
    writes = cluster.writes_received()
    assert [n for n, _ in writes] == [old, new]
    assert len({(m.client_id, m.seq) for _, m in writes}) == 1
    assert len(cluster.applied) == 1
    await client.aclose()


class _CountingStream(WrappedStream):
    """Counts the client's writes (one per send_all) on a real stream."""

    def __init__(self, inner: trio.abc.Stream, counter: list[int]) -> None:
        super().__init__(inner)
        self.counter = counter

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.counter.append(len(data))
        await self.inner.send_all(data)


async def test_concurrent_requests_leave_in_few_writes(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    writes: list[int] = []

    async def counting_factory(host: str, port: int) -> trio.abc.Stream:
        return _CountingStream(await cluster.stream_factory(host, port), writes)

    client = await PrkDbClient.connect(
        cluster.seeds, cluster_id=cluster.cluster_id, stream_factory=counting_factory
    )
    keys = [k for k in (b"w-%d" % i for i in range(2000)) if partition_for(k, 4) == 0][:100]
    writes.clear()

    async def put(key: bytes) -> None:
        await client.put(key, b"v")

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(put, key)
    assert all(cluster.store[k][0] == b"v" for k in keys)
    # 100 requests to one leader share a handful of writes, not one each.
    assert len(writes) <= 10, len(writes)
    await client.aclose()


# --- per-request deadlines (one timer per connection, no cancel scope per request) ---


async def test_short_deadline_is_kept_while_longer_ones_wait_on_the_same_connection(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A call with a short timeout must not wait for the timer set by an earlier, longer one."""
    client = await connect(cluster, attempt_timeout=10.0)
    await client.put(b"k", b"v")

    async def hang_gets(node: FakeNode, msg: Any) -> Any:
        return HANG if isinstance(msg, Get) else None

    cluster.hook = hang_gets
    ended: dict[str, float] = {}
    start = trio.current_time()

    async def get(name: str, timeout: float) -> None:
        with pytest.raises(Timeout):
            await client.get(b"k", timeout=timeout)
        ended[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, "long", 30.0)
        await trio.sleep(0.01)  # the long one waits first: the timer sleeps towards 10 s
        nursery.start_soon(get, "short", 0.5)
    assert ended["short"] == pytest.approx(0.51)
    assert ended["long"] == pytest.approx(30.0)
    cluster.hook = None
    assert await client.get(b"k") == b"v"  # expired requests left the connection usable
    await client.aclose()


async def test_expired_attempt_does_not_disturb_others_on_the_connection(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster, attempt_timeout=1.0)
    slow, fast = key_in(0, 4, "slow"), key_in(0, 4, "fast")
    await client.put(slow, b"s")
    await client.put(fast, b"f")

    async def hang_slow(node: FakeNode, msg: Any) -> Any:
        return HANG if isinstance(msg, Get) and msg.key == slow else None

    cluster.hook = hang_slow
    with pytest.raises(Timeout, match="no answer"):
        await client.get(slow, timeout=2.5)
    for _ in range(3):
        assert await client.get(fast) == b"f"
    await client.aclose()


def test_topology_address_orders_follow_membership_changes() -> None:
    topo = Topology(["127.0.0.1:9"])
    topo.set_leader(0, 3, "h:3")
    topo.set_leader(1, 1, "z:1")
    assert topo.addresses_by_id() == ("z:1", "h:3")
    assert topo.sorted_addresses() == ("h:3", "z:1")
    topo.set_leader(2, 2, "a:2")  # a hint teaches a new node
    assert topo.addresses_by_id() == ("z:1", "a:2", "h:3")
    assert topo.sorted_addresses() == ("a:2", "h:3", "z:1")
    topo.set_leader(2, 2, "b:2")  # the node moved
    assert topo.sorted_addresses() == ("b:2", "h:3", "z:1")


async def test_hand_built_requests_decode_as_the_messages_they_stand_for(
    cluster: FakeCluster,
) -> None:
    """get/put/delete build their wire arrays without the dataclasses; check the bytes."""
    sent = bytearray()

    class Recording(_CountingStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            sent.extend(data)
            await self.inner.send_all(data)

    async def factory(host: str, port: int) -> trio.abc.Stream:
        return Recording(await cluster.stream_factory(host, port), [])

    client = await PrkDbClient.connect(
        cluster.seeds, cluster_id=cluster.cluster_id, stream_factory=factory
    )
    key = key_in(2, 4)
    await client.put(key, b"value")
    for level in ReadConsistency:
        await client.get_with_consistency(key, level)
    await client.delete(key)
    await client.aclose()

    decoder = FrameDecoder()
    decoder.receive_data(bytes(sent))
    msgs = []
    while (item := decoder.next_frame()) is not NEED_DATA:
        msgs.append(from_wire(item))
    requests = [m for m in msgs if isinstance(m, Get | Put | Delete)]
    slot = client.client_id
    assert [replace(m, request_id=0) for m in requests] == [
        Put(0, key, b"value", slot, 1),
        *(Get(0, key, level, 2) for level in ReadConsistency),
        Delete(0, key, slot, 2),
    ]
