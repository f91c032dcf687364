"""`prkctl bench`: load a cluster and report throughput and latency percentiles.

Workloads (the daemon/SDK issue's benchmark):
  W1      one writer, sequential puts
  W64     --concurrency writers (default 64) sharing one client
  R-LINEARIZABLE / R-FOLLOWER / R-STALE
          --concurrency readers at that consistency over --keys preloaded keys
Keys are 16 bytes ("bench-%010d", uniform over --keys), values --value-size
bytes. Latency is per acknowledged request. The load generator is
prkdb.bench, shared with scripts/bench_cluster.py.
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import table
from prkdb.bench import BenchResult, preload, run_workload

WORKLOADS = ("W1", "W64", "R-LINEARIZABLE", "R-FOLLOWER", "R-STALE")
PROGRESS_STEP = 0.2  # seconds between progress bar updates


# prkctl's workload names -> (prkdb.bench workload, fixed concurrency or None)
_PLAN = {
    "W1": ("put", 1),
    "W64": ("put", None),
    "R-LINEARIZABLE": ("get-linearizable", None),
    "R-FOLLOWER": ("get-follower", None),
    "R-STALE": ("get-stale", None),
}


def _row(name: str, r: BenchResult) -> dict[str, Any]:
    """One workload's JSON row (NaN percentiles of an empty run become 0)."""
    def ms(x: float) -> float:
        return 0.0 if math.isnan(x) else round(x, 3)

    return {
        "workload": name,
        "concurrency": r.concurrency,
        "duration_s": r.duration_s,
        "ops": r.ops,
        "errors": r.errors,
        "first_error": r.first_error,
        "ops_per_s": round(r.ops_per_s, 1),
        "p50_ms": ms(r.p50_ms),
        "p90_ms": ms(r.p90_ms),
        "p99_ms": ms(r.p99_ms),
        "max_ms": ms(r.max_ms),
    }


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

    async def body(client: Any) -> list[dict[str, Any]]:
        rows = []
        if any(n.startswith("R-") for n in names):
            click.echo(f"preloading {keys} keys ...", err=True)
            await preload(client, keys, value, concurrency)
        for name in names:
            workload, fixed = _PLAN[name]
            steps = max(1, round(duration / PROGRESS_STEP))
            with click.progressbar(length=steps, label=f"{name:<15}", file=sys.stderr,
                                   show_eta=False, show_percent=False, show_pos=False,
                                   item_show_func=lambda s: s) as bar:
                done = [0]

                def tick(ops: int, elapsed: float, bar: Any = bar, done: list[int] = done,
                         steps: int = steps) -> None:
                    target = min(steps, round(elapsed / PROGRESS_STEP))
                    bar.update(target - done[0], f"{ops} ops, {ops / max(elapsed, 1e-9):.0f}/s")
                    done[0] = target

                res = await run_workload(client, workload, concurrency=fixed or concurrency,
                                         duration=duration, value_size=value, keys=keys,
                                         rng=rng, progress=tick)
                bar.update(steps - done[0])
            rows.append(_row(name, res))
        return rows

    rows = ctl.run_client(body)
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
