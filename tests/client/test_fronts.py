"""The same client behaviour, checked for all three front ends (trio, asyncio, sync).

Each test takes `front` (parametrized over the three) and `tcp_fake` (a fake
cluster on real TCP, tests/client/fronts.py); calls are blocking through the
`Front` facade, and waits are real but short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from prkdb.client import (
    InvalidRequest,
    OutcomeUnknown,
    ReadConsistency,
    Timeout,
    WrongCluster,
)
from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.wire.messages import Put, Status
from tests.client.fake import DROP_AFTER, HANG, FakeNode, error, key_in
from tests.client.fronts import Front, TcpFake


def test_put_get_delete_route_to_partition_leaders(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds[:1], cluster_id="prkdb")
    for p in range(cluster.partitions):
        key = key_in(p, cluster.partitions)
        assert db.put(key, b"v%d" % p).version == 1
        assert db.get(key) == b"v%d" % p
        entry = db.get_entry(key, consistency=ReadConsistency.STALE)
        assert (entry.value, entry.version) == (b"v%d" % p, 1)
        assert db.delete(key).prev_version == 1
        assert db.get(key) is None
    writes = cluster.writes_received()
    assert len(writes) == 2 * cluster.partitions
    assert all(node == cluster.leaders[partition_for(m.key, cluster.partitions)]
               for node, m in writes)


def test_cluster_id_is_learned_and_pinned(front: Front) -> None:
    """No cluster id given: the first node names it; a node of another cluster is refused."""
    ours, theirs = TcpFake(cluster_id="prod-eu"), TcpFake(cluster_id="prod-us")
    try:
        db = front.connect(ours.cluster.seeds[:1])
        assert db.cluster_id == "prod-eu"
        assert db.put(b"k", b"v").succeeded
        with pytest.raises(WrongCluster) as info:
            other = front.connect(theirs.cluster.seeds[:1], cluster_id="prod-eu")
            other.put(b"k", b"v")
        assert "prod-us" in info.value.message and "prod-eu" in info.value.message
        # Pinned: a seed list mixing clusters never talks to the second one.
        mixed = front.connect([ours.cluster.seeds[0], theirs.cluster.seeds[0]])
        assert mixed.cluster_id == "prod-eu"
        assert mixed.get(b"k") == b"v"
    finally:
        front.close()
        ours.close()
        theirs.close()


def test_given_cluster_id_is_checked(front: Front, tcp_fake: TcpFake) -> None:
    with pytest.raises(WrongCluster, match=r"'prkdb'.*'other'|'other'.*'prkdb'"):
        front.connect(tcp_fake.cluster.seeds[:1], cluster_id="other")


def test_not_leader_hint_is_followed(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    key = key_in(1, cluster.partitions)
    old = cluster.leaders[1]
    new = old % 3 + 1
    tcp_fake.run(cluster.leaders.__setitem__, 1, new)  # an election the client missed
    assert db.put(key, b"v").succeeded
    nodes = [n for n, m in cluster.writes_received()]
    assert nodes == [old, new]


def test_dropped_reply_is_retried_with_the_same_seq_and_applied_once(
    front: Front, tcp_fake: TcpFake
) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    dropped: list[int] = []

    async def drop_first_write(node: FakeNode, msg: Any) -> Any:
        if isinstance(msg, Put) and not dropped:
            dropped.append(node.node_id)
            return DROP_AFTER
        return None

    cluster.hook = drop_first_write
    result = db.put(b"once", b"v")
    assert result.version == 1
    writes = cluster.writes_received()
    assert len(writes) == 2 and len({(m.client_id, m.seq) for _, m in writes}) == 1
    assert len(cluster.applied) == 1


def test_unanswered_write_is_outcome_unknown(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")

    async def hang(node: FakeNode, msg: Any) -> Any:
        return HANG if isinstance(msg, Put) else None

    cluster.hook = hang
    with pytest.raises(OutcomeUnknown, match="may or may not"):
        db.put(b"k", b"v", timeout=0.4)


def test_unavailable_everywhere_is_timeout_naming_the_partition(
    front: Front, tcp_fake: TcpFake
) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")

    async def unavailable(node: FakeNode, msg: Any) -> Any:
        return error(ErrorCode.UNAVAILABLE, "no quorum") if isinstance(msg, Put) else None

    cluster.hook = unavailable
    key = key_in(2, cluster.partitions)
    with pytest.raises(Timeout, match=r"partition 2.*no quorum"):
        db.put(key, b"v", timeout=0.3)
    assert len(cluster.writes_received()) >= 2  # retried, with backoff


def test_permanent_errors_are_raised_at_once(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")

    async def bad(node: FakeNode, msg: Any) -> Any:
        return error(ErrorCode.BAD_REQUEST, "no thanks") if isinstance(msg, Put) else None

    cluster.hook = bad
    with pytest.raises(InvalidRequest, match="no thanks"):
        db.put(b"k", b"v")
    assert len(cluster.writes_received()) == 1


def test_bad_arguments_and_cross_partition_batches(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    with pytest.raises(InvalidRequest, match="must not be empty"):
        db.put(b"", b"v")
    with pytest.raises(InvalidRequest, match="must be bytes"):
        db.get("text")
    with pytest.raises(InvalidRequest, match="needs expected_value or expected_version"):
        db.cas(b"k", new_value=b"v")
    a, b = key_in(0, cluster.partitions), key_in(1, cluster.partitions)
    with pytest.raises(InvalidRequest, match="span partitions"):
        db.batch([("put", a, b"1"), ("put", b, b"2")])
    same = key_in(0, cluster.partitions, prefix="other")
    result = db.batch([("put", a, b"1"), ("put", same, b"2"), ("delete", a)])
    assert [op.version for op in result.ops] == [1, 1, 0]
    assert db.cas(same, expected_value=b"2", new_value=b"3").succeeded
    assert not db.cas(same, expected_version=7, new_value=b"4").succeeded
    assert cluster.writes_received()  # something reached the nodes


def test_concurrent_writes_are_each_applied_once(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    if front.kind == "sync":
        results = front.concurrently(16, lambda i: db.put(b"c%d" % i, b"v"))
    else:
        inner = db.inner
        results = front.concurrently(64, lambda i: inner.put(b"c%d" % i, b"v"))
    assert all(r.version == 1 for r in results)
    assert len(cluster.applied) == len(results) == len(set(cluster.applied))


def test_frozen_leader_is_left_for_the_new_one_within_a_short_deadline(
    front: Front, tcp_fake: TcpFake
) -> None:
    """A leader that stops answering (SIGSTOP) while the cluster elects another.

    With a call deadline (1.0 s) shorter than the attempt timeout (2.0 s),
    an attempt may take at most half the deadline, so the call itself can
    reach the new leader; the calls after it avoid the silent node at once.
    """
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb", attempt_timeout=2.0)
    key = key_in(0, cluster.partitions)
    assert db.put(key, b"before").succeeded
    old = cluster.leaders[0]
    new = old % 3 + 1

    async def frozen(node: FakeNode, msg: Any) -> Any:
        return HANG if node.node_id == old else None

    cluster.hook = frozen
    tcp_fake.run(cluster.leaders.__setitem__, 0, new)
    # Within its 1.0 s deadline, so after at most a half-deadline attempt on the frozen node.
    assert db.put(key, b"during", timeout=1.0).succeeded
    for i in range(5):
        assert db.put(key, b"after%d" % i, timeout=1.0).succeeded
    # None of the later calls went to the frozen node (it is suspected): only
    # "before" and the first attempt of "during" reached it.
    frozen_writes = [m for n, m in cluster.writes_received() if n == old]
    assert len(frozen_writes) == 2


def test_status_and_closed_client(front: Front, tcp_fake: TcpFake) -> None:
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")
    status = db.status(2)
    assert status.node_id == 2 and len(status.partitions) == cluster.partitions
    db.close()
    with pytest.raises(InvalidRequest, match="closed"):
        db.put(b"k", b"v")


def test_give_up_messages_name_the_call(front: Front, tcp_fake: TcpFake) -> None:
    """Each call describes itself as before (partition, session and seq for writes)."""
    cluster = tcp_fake.cluster
    db = front.connect(cluster.seeds, cluster_id="prkdb")

    async def unavailable(node: FakeNode, msg: Any) -> Any:
        return None if isinstance(msg, Status) else error(ErrorCode.UNAVAILABLE, "no quorum")

    cluster.hook = unavailable
    key = key_in(2, cluster.partitions)
    client = db.client_id
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: db.get_entry(key, consistency=ReadConsistency.STALE, timeout=0.2),
         f"get key={key!r} (stale): partition 2 did not answer within 0.2s"),
        (lambda: db.get(key, timeout=0.2),
         f"get key={key!r} (linearizable): partition 2 did not answer"),
        (lambda: db.put(key, b"v", timeout=0.2),
         f"put key={key!r} (partition 2, client {client} seq 1): partition 2 did not"),
        (lambda: db.delete(key, timeout=0.2),
         f"delete key={key!r} (partition 2, client {client} seq 2): partition 2"),
        (lambda: db.cas(key, expected_version=3, new_value=b"w", timeout=0.2),
         f"cas key={key!r} (partition 2, client {client} seq 3): partition 2"),
        (lambda: db.batch([("put", key, b"v"), ("delete", key)], timeout=0.2),
         f"batch of 2 ops (partition 2, client {client} seq 4): partition 2"),
    ]
    for k, (call, text) in enumerate(calls):
        with pytest.raises((Timeout, OutcomeUnknown)) as info:
            call()
        message = info.value.message
        if isinstance(info.value, OutcomeUnknown):
            # A loaded machine: a write's last attempt was still in flight at
            # the deadline. The message names the call all the same.
            assert k >= 2, message  # never for a read
            what = text.split(": partition 2")[0]
            assert message.startswith(f"{what}: deadline of 0.2s passed"), message
        else:
            assert message.startswith(text), message
        assert "no quorum" in message
