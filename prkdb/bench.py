"""Closed-loop load generation against a cluster, through the SDK.

Shared by `scripts/bench_cluster.py` and `prkctl bench`. A workload runs
`concurrency` tasks, each issuing one request at a time for `duration`
seconds; every completed request's latency is kept, so the summary is exact
(p50/p90/p99/max over all of them), not sampled.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import trio

from prkdb.client import PrkDbClient, ReadConsistency
from prkdb.errors import PrkdbError

WORKLOADS = ("put", "get-linearizable", "get-follower", "get-stale")


@dataclass(frozen=True)
class BenchResult:
    workload: str
    concurrency: int
    duration_s: float
    ops: int
    errors: int
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"{self.workload:<17} c={self.concurrency:<3} {self.ops_per_s:>9,.0f} ops/s  "
            f"p50 {self.p50_ms:6.2f} ms  p90 {self.p90_ms:6.2f}  p99 {self.p99_ms:6.2f}  "
            f"max {self.max_ms:7.2f}  errors {self.errors}"
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (nan if there are none)."""
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def key_of(i: int) -> bytes:
    """16-byte keys, as the issue's workloads specify."""
    return b"bench-%010d" % i


async def preload(client: PrkDbClient, keys: int, value_size: int | bytes,
                  concurrency: int = 64) -> None:
    """Write every key of the key space once (reads need something to read)."""
    value = value_size if isinstance(value_size, bytes) else b"v" * value_size
    it = iter(range(keys))

    async def worker() -> None:
        for i in it:
            await client.put(key_of(i), value)

    async with trio.open_nursery() as n:
        for _ in range(min(concurrency, keys)):
            n.start_soon(worker)


async def run_workload(
    client: PrkDbClient,
    workload: str,
    *,
    concurrency: int,
    duration: float,
    value_size: int | bytes = 100,
    keys: int = 1000,
    rng: random.Random | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> BenchResult:
    """Run one workload for `duration` seconds with `concurrency` closed-loop tasks.

    Keys are drawn uniformly from `keys` with `rng` (default: each task walks
    the key space in its own stride). `progress(ops_so_far, elapsed_s)` is
    called about 5 times a second. Failed requests are counted, not raised.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    value = value_size if isinstance(value_size, bytes) else b"x" * value_size
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    # Everything decided once, outside the loop: this loop shares the CPU with
    # the servers it measures, so its own cost per request lowers the result.
    keyspace = [key_of(i) for i in range(keys)]
    is_put = workload == "put"
    level = {
        "get-linearizable": ReadConsistency.LINEARIZABLE,
        "get-follower": ReadConsistency.FOLLOWER,
        "get-stale": ReadConsistency.STALE,
    }.get(workload, ReadConsistency.LINEARIZABLE)
    put, get = client.put, client.get_with_consistency
    now, record = time.perf_counter, latencies.append

    async def worker(w: int) -> None:
        nonlocal errors, first_error
        i = w
        while True:
            key = keyspace[rng.randrange(keys) if rng is not None else i % keys]
            t0 = now()
            try:
                if is_put:
                    await put(key, value)
                else:
                    await get(key, level)
            except PrkdbError as e:
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
            else:
                record(now() - t0)
            i += concurrency

    start = time.perf_counter()
    async with trio.open_nursery() as n:
        for w in range(concurrency):
            n.start_soon(worker, w)
        end = trio.current_time() + duration
        while trio.current_time() < end:
            await trio.sleep(min(0.2, max(0.0, end - trio.current_time())))
            if progress is not None:
                progress(len(latencies), time.perf_counter() - start)
        n.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    ms = 1000.0
    return BenchResult(
        workload=workload,
        concurrency=concurrency,
        duration_s=round(elapsed, 3),
        ops=len(lat),
        errors=errors,
        ops_per_s=len(lat) / elapsed if elapsed else 0.0,
        p50_ms=percentile(lat, 0.50) * ms,
        p90_ms=percentile(lat, 0.90) * ms,
        p99_ms=percentile(lat, 0.99) * ms,
        max_ms=(lat[-1] * ms) if lat else math.nan,
        first_error=first_error,
    )
