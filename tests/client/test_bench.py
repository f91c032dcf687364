"""`prkdb.bench.run_workload` against the fake cluster (virtual time: each answer takes 1 ms)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from prkdb.bench import WORKLOADS, key_of, preload, run_workload
from tests.client.fake import Delay, FakeCluster, FakeNode, connect


@pytest.mark.parametrize("workload", WORKLOADS)
async def test_run_workload_counts_completed_requests(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock, workload: str
) -> None:
    client = await connect(cluster)
    await preload(client, 20, 10)
    assert {key_of(i) for i in range(20)} <= set(cluster.store)

    async def one_ms(node: FakeNode, msg: Any) -> Any:
        return Delay(0.001)

    cluster.hook = one_ms
    before = len(cluster.received)
    result = await run_workload(client, workload, concurrency=4, duration=0.1, keys=20)
    assert result.errors == 0 and result.first_error is None
    assert result.ops > 0 and result.p50_ms <= result.p99_ms <= result.max_ms
    served = cluster.received[before:]
    assert len(served) >= result.ops  # the last in-flight requests were cancelled
    assert {m.key for _, m in served} <= {key_of(i) for i in range(20)}
    await client.aclose()


async def test_failed_requests_are_counted_not_raised(
    cluster: FakeCluster, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(cluster, timeout=0.05)

    async def silent(node: FakeNode, msg: Any) -> Any:
        return Delay(1.0)

    cluster.hook = silent
    result = await run_workload(client, "get-stale", concurrency=2, duration=0.2, keys=5)
    assert result.ops == 0 and result.errors > 0
    assert result.first_error is not None and result.first_error.startswith("Timeout")
    await client.aclose()
