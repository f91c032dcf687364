"""`prkctl bench`: load a cluster and report throughput and latency percentiles.

Workloads (the daemon/SDK issue's benchmark):
  W1      one writer, sequential puts
  W64     --concurrency writers (default 64) sharing one client
  R-LINEARIZABLE / R-FOLLOWER / R-STALE
          --concurrency readers at that consistency over --keys preloaded keys
Keys are 16 bytes ("bench-%010d", uniform over --keys), values --value-size
bytes. Latency is per acknowledged request, measured with trio's clock.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import click
import trio

from prkctl.cli import CtlContext, PrkctlError, pass_ctl, translate_errors
from prkctl.output import table

WORKLOADS = ("W1", "W64", "R-LINEARIZABLE", "R-FOLLOWER", "R-STALE")
PROGRESS_STEP = 0.2  # seconds between progress bar updates


def bench_key(i: int) -> bytes:
    return b"bench-%010d" % i


@dataclass
class Result:
    workload: str
    concurrency: int
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, acked requests only
    errors: int = 0
    first_error: str = ""

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (0 if nothing was acknowledged)."""
        if not self.latencies:
            return 0.0
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] * 1000

    def to_json(self) -> dict[str, Any]:
        ops = len(self.latencies)
        return {
            "workload": self.workload,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration, 3),
            "ops": ops,
            "errors": self.errors,
            "first_error": self.first_error or None,
            "ops_per_s": round(ops / self.duration, 1) if self.duration else 0.0,
            "p50_ms": round(self.percentile(0.50), 3),
            "p90_ms": round(self.percentile(0.90), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 3),
        }


async def _preload(client: Any, keys: int, value: bytes, concurrency: int) -> None:
    send, recv = trio.open_memory_channel[int](keys)
    for i in range(keys):
        send.send_nowait(i)
    send.close()

    async def loader() -> None:
        async for i in recv:
            await client.put(bench_key(i), value)

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, keys)):
            nursery.start_soon(loader)


async def run_workload(client: Any, name: str, duration: float, concurrency: int,
                       value: bytes, keys: int, rng: random.Random,
                       on_tick: Any = None) -> Result:
    from prkdb.client import PrkdbError, ReadConsistency

    workers = 1 if name == "W1" else concurrency
    res = Result(name, workers)
    if name.startswith("R-"):
        level = ReadConsistency[name[2:]]

        async def op(k: bytes) -> None:
            await client.get_entry(k, consistency=level)
    else:

        async def op(k: bytes) -> None:
            await client.put(k, value)

    start = trio.current_time()
    deadline = start + duration

    async def worker() -> None:
        while trio.current_time() < deadline:
            k = bench_key(rng.randrange(keys))
            t0 = trio.current_time()
            try:
                await op(k)
            except PrkdbError as e:
                res.errors += 1
                res.first_error = res.first_error or f"{type(e).__name__}: {e}"
                continue
            res.latencies.append(trio.current_time() - t0)

    async def ticker() -> None:
        while True:
            await trio.sleep(PROGRESS_STEP)
            if on_tick is not None:
                on_tick(min(trio.current_time(), deadline) - start, len(res.latencies))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as inner:
            for _ in range(workers):
                inner.start_soon(worker)
        nursery.cancel_scope.cancel()
    res.duration = trio.current_time() - start
    return res


@click.command()
@click.option("--workload", "-w", "workloads", multiple=True,
              type=click.Choice([*WORKLOADS, "all"], case_sensitive=False),
              help="Workload(s) to run, in order (repeatable). Default: all.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds per workload.")
@click.option("--concurrency", type=click.IntRange(min=1, max=4096), default=64,
              show_default=True, help="Concurrent requests for W64 and the reads.")
@click.option("--value-size", type=click.IntRange(min=0), default=100, show_default=True,
              help="Bytes per value.")
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Size of the key space (reads preload all of it).")
@click.option("--seed", type=int, default=0, help="Seed of the key choice.")
@pass_ctl
@translate_errors
def bench(ctl: CtlContext, workloads: tuple[str, ...], duration: float, concurrency: int,
          value_size: int, keys: int, seed: int) -> None:
    """Benchmark the cluster: ops/s and p50/p90/p99/max latency per workload.

    Writes real keys (bench-0000000000 ...) into the cluster. Exit 1 if any
    request failed (the summary is printed first).

    \b
    Example:
      prkctl bench                                  # all workloads, 5 s each
      prkctl bench -w W64 --duration 30 --concurrency 128
      prkctl --json bench -w R-STALE -w R-FOLLOWER --value-size 1024
    """
    chosen = [w.upper() for w in workloads] or ["ALL"]
    names = list(WORKLOADS) if "ALL" in chosen else list(dict.fromkeys(chosen))
    value = random.Random(seed).randbytes(value_size)
    rng = random.Random(seed)

    async def body(client: Any) -> list[Result]:
        results = []
        if any(n.startswith("R-") for n in names):
            click.echo(f"preloading {keys} keys ...", err=True)
            await _preload(client, keys, value, concurrency)
        for name in names:
            steps = max(1, round(duration / PROGRESS_STEP))
            with click.progressbar(length=steps, label=f"{name:<15}", file=sys.stderr,
                                   show_eta=False, show_percent=False, show_pos=False,
                                   item_show_func=lambda s: s) as bar:
                done = [0]

                def tick(elapsed: float, ops: int, bar: Any = bar, done: list[int] = done,
                         steps: int = steps) -> None:
                    target = min(steps, round(elapsed / PROGRESS_STEP))
                    bar.update(target - done[0], f"{ops} ops, {ops / max(elapsed, 1e-9):.0f}/s")
                    done[0] = target

                res = await run_workload(client, name, duration, concurrency, value, keys,
                                         rng, tick)
                bar.update(steps - done[0])
            results.append(res)
        return results

    results = ctl.run_client(body)
    rows = [r.to_json() for r in results]
    ctl.emit(
        {"value_size": value_size, "keys": keys, "workloads": rows},
        lambda: click.echo(table(
            ["WORKLOAD", "CONC", "OPS", "ERRORS", "OPS/S", "P50ms", "P90ms", "P99ms", "MAXms"],
            [[r["workload"], r["concurrency"], r["ops"], r["errors"], r["ops_per_s"],
              r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]] for r in rows],
        )),
    )
    failed = [r for r in rows if r["errors"]]
    if failed:
        raise PrkctlError(f"{sum(r['errors'] for r in failed)} requests failed; first: "
                          f"{failed[0]['first_error']}")
