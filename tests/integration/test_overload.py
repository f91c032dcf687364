"""A node at 100% CPU must not lose leadership (issue 7: heartbeats and
elections are never starved by request load).

Three nodes and this test's own load generator share the machine's cores:
hundreds of concurrent writers and readers saturate all of them. The Raft
loop bounds its work per pass (`MAX_DRAIN`, a bounded settle), ticks every
pass and sends heartbeats with the pass's other messages, so no follower may
time out its leader: every partition keeps its leader and term, and no node
even starts a pre-vote.
"""

from __future__ import annotations

import pytest
import trio

from prkdb.client import PrkDbClient, ReadConsistency
from prkdb.errors import PrkdbError
from tests.integration.cluster import CLUSTER_ID, LocalCluster

pytestmark = pytest.mark.slow

LOAD_S = 6.0


def _terms(c: LocalCluster) -> dict[int, tuple[int, int]]:
    views = [c.status(i, timeout=10) for i in c.ids]
    out: dict[int, tuple[int, int]] = {}
    for p in range(c.partitions):
        seen = {(v.partitions[p].leader, v.partitions[p].term) for v in views}
        assert len(seen) == 1, f"partition {p}: nodes disagree: {seen}"
        out[p] = seen.pop()
    return out


async def test_saturating_load_never_costs_a_leader_its_term(cluster3: LocalCluster) -> None:
    cluster3.wait_ready()
    before = _terms(cluster3)
    prevotes = [cluster3.log(i).count("became_pre_candidate") for i in cluster3.ids]
    done = {"writes": 0, "reads": 0}
    async with PrkDbClient.connect(cluster3.seeds, cluster_id=CLUSTER_ID, timeout=10) as client:
        stop = trio.current_time() + LOAD_S

        async def writer(i: int) -> None:
            while trio.current_time() < stop:
                try:
                    await client.put(b"ov-%d" % (i % 500), b"v" * 100)
                    done["writes"] += 1
                except PrkdbError:
                    pass  # overload may refuse a request; it may not cost a leader

        async def reader(i: int) -> None:
            while trio.current_time() < stop:
                try:
                    await client.get_with_consistency(b"ov-%d" % i, ReadConsistency.STALE)
                    done["reads"] += 1
                except PrkdbError:
                    pass

        async with trio.open_nursery() as nursery:
            for i in range(192):
                nursery.start_soon(writer, i)
            for i in range(64):
                nursery.start_soon(reader, i)
    assert done["writes"] > 1000 and done["reads"] > 1000, done
    assert _terms(cluster3) == before
    assert [cluster3.log(i).count("became_pre_candidate") for i in cluster3.ids] == prevotes
