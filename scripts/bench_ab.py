#!/usr/bin/env python3
"""A/B a cluster benchmark between two checkouts in one run: the ratios, new / base.

Runs ``scripts/bench_cluster.py --json`` alternately from this checkout
(new) and from BASE (for example ``git worktree add /tmp/base <commit>``),
``--rounds`` times each, so that the noise of a shared machine falls on both
alike, then prints per workload the median ops/s and p50 of each side and
their ratio (new / base: above 1 is faster for ops/s, below 1 is faster for
p50).

    git worktree add /tmp/base HEAD~5
    python scripts/bench_ab.py --base /tmp/base --rounds 3 --duration 3

Each side runs from its own directory with its own code (``PYTHONPATH``),
on the same ports one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def run_once(checkout: Path, duration: float, port: int) -> dict[str, dict[str, float]]:
    """One bench_cluster run from `checkout`: workload name -> its JSON numbers."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run(
        [sys.executable, str(checkout / "scripts" / "bench_cluster.py"), "--json",
         "--duration", str(duration), "--port", str(port)],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    ).stdout
    data: dict[str, Any] = json.loads(out[out.index("{"):])
    return {f"{r['workload']} c={r['concurrency']}": r for r in data["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout to compare against")
    parser.add_argument("--new", type=Path, default=HERE,
                        help="checkout measured against it (default: this one)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per workload")
    parser.add_argument("--port", type=int, default=18500, help="client port of node 1")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"new": [], "base": []}
    for i in range(args.rounds):
        for side, checkout in (("base", args.base.resolve()), ("new", args.new.resolve())):
            print(f"round {i + 1}/{args.rounds}: {side} ({checkout})", file=sys.stderr)
            runs[side].append(run_once(checkout, args.duration, args.port))
    print(f"{'workload':<24} {'base ops/s':>11} {'new ops/s':>11} {'ratio':>6}   "
          f"{'base p50':>9} {'new p50':>9} {'ratio':>6}")
    for name in runs["new"][0]:
        def med(side: str, key: str, name: str = name) -> float:
            return statistics.median(r[name][key] for r in runs[side])
        b_ops, n_ops = med("base", "ops_per_s"), med("new", "ops_per_s")
        b_p50, n_p50 = med("base", "p50_ms"), med("new", "p50_ms")
        print(f"{name:<24} {b_ops:>11,.0f} {n_ops:>11,.0f} {n_ops / b_ops:>6.3f}   "
              f"{b_p50:>7.2f}ms {n_p50:>7.2f}ms {n_p50 / b_p50:>6.3f}")


if __name__ == "__main__":
    main()
