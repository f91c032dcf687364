#!/usr/bin/env python3
"""CPU cost per operation of the client SDK + load generator, against a local cluster.

The load generator shares this machine's cores with the servers, so every
client µs per op lowers the measured throughput. This script starts a local
3-node cluster (fsync on, default config), preloads keys, and then runs each
workload in a fresh client process per tree, reporting ops/s, the client
process's CPU µs per op (user + system time from getrusage, what
`time.process_time` counts; the system part shown apart) and the servers' CPU
µs per op (utime + stime from /proc/<pid>/stat).

Compare two versions of the SDK against the same servers by passing several
source trees (each is put first on the client's PYTHONPATH), e.g.:

    git worktree add /tmp/clienttree_base HEAD~3
    python scripts/bench_client_cpu.py --trees /tmp/clienttree_base,. --reps 3

The servers run the code of ``--server-tree`` (default: this checkout), so
pin it to a committed worktree while others edit the server.

Prints one line per (rep, tree, workload) and a table of medians at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = ("get-stale", "get-linearizable", "put")
CLUSTER_ID = "prkdb-dev"
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# --- client side (runs in a child process, importing prkdb from --tree) ---------------


async def _client_main(seeds: list[str], pids: list[int], duration: float,
                       concurrency: int, warmup: float) -> None:
    from prkdb.bench import run_workload
    from prkdb.client import PrkDbClient

    async with PrkDbClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=10) as client:
        for workload in WORKLOADS:
            await run_workload(client, workload, concurrency=concurrency, duration=warmup)
            srv0 = sum(proc_cpu_s(p) for p in pids)
            t0 = resource.getrusage(resource.RUSAGE_SELF)
            r = await run_workload(client, workload, concurrency=concurrency, duration=duration)
            t1 = resource.getrusage(resource.RUSAGE_SELF)
            user, system = t1.ru_utime - t0.ru_utime, t1.ru_stime - t0.ru_stime
            cpu = user + system  # = the time.process_time() delta, split
            srv = sum(proc_cpu_s(p) for p in pids) - srv0
            ops = r.ops + r.errors
            print(json.dumps({
                "workload": workload, "ops_per_s": r.ops_per_s, "errors": r.errors,
                "client_us": cpu / ops * 1e6 if ops else float("nan"),
                "client_sys_us": system / ops * 1e6 if ops else float("nan"),
                "server_us": srv / ops * 1e6 if ops else float("nan"),
                "p50_ms": r.p50_ms,
            }), flush=True)


# --- driver --------------------------------------------------------------------------


def start_cluster(root: Path, port: int, tree: str) -> list[subprocess.Popen]:
    """Three `prkdb serve` processes running the server code of `tree`."""
    from prkdb.server.main import dev_configs

    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    procs = []
    for i, path in enumerate(dev_configs(3, port, root, 8), 1):
        log = open(root / f"node{i}.log", "ab")  # noqa: SIM115 - the child owns it
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "prkdb", "serve", "--config", str(path),
             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


async def prepare(seeds: list[str], keys: int) -> None:
    """Wait until every partition has a leader, then write the key space once."""
    import trio

    from prkdb.bench import preload
    from prkdb.client import PrkDbClient

    deadline = trio.current_time() + 30
    while True:
        try:
            async with PrkDbClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=2) as c:
                if all(p.leader for p in (await c.status()).partitions):
                    break
        except Exception:
            if trio.current_time() > deadline:
                raise
        await trio.sleep(0.2)
    async with PrkDbClient.connect(seeds, cluster_id=CLUSTER_ID, timeout=10) as c:
        await preload(c, keys, 100)


def run_client(tree: str, args: argparse.Namespace, seeds: list[str],
               pids: list[int]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    cmd = [sys.executable, __file__, "--client", "--seeds", ",".join(seeds),
           "--pids", ",".join(map(str, pids)), "--duration", str(args.duration),
           "--concurrency", str(args.concurrency), "--warmup", str(args.warmup)]
    if args.profile:
        cmd[1:1] = ["-m", "cProfile", "-o", f"{args.profile}.{Path(tree).resolve().name}"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=".", help="comma-separated source trees to compare")
    ap.add_argument("--server-tree", default=".",
                    help="source tree the servers run (pin it while others edit the server)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--port", type=int, default=21000, help="client port of node 1")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--profile", help="cProfile each client run to PROFILE.<tree name>")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seeds", help=argparse.SUPPRESS)
    ap.add_argument("--pids", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import trio

    if args.client:
        trio.run(_client_main, args.seeds.split(","), [int(p) for p in args.pids.split(",")],
                 args.duration, args.concurrency, args.warmup)
        return

    trees = args.trees.split(",")
    root = Path(tempfile.mkdtemp(prefix="prkdb-clientcpu-"))
    seeds = [f"127.0.0.1:{args.port + i}" for i in range(3)]
    procs = start_cluster(root, args.port, args.server_tree)
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        try:
            trio.run(prepare, seeds, args.keys)
        except Exception:
            for log in sorted(root.glob("node*.log")):
                print(f"--- {log.name}:\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
        for rep in range(args.reps):
            for tree in trees:
                for row in run_client(tree, args, seeds, [p.pid for p in procs]):
                    rows.setdefault((tree, row["workload"]), []).append(row)
                    print(f"rep {rep} {tree:<24} {row['workload']:<17} "
                          f"{row['ops_per_s']:>8,.0f} ops/s  client {row['client_us']:6.1f} "
                          f"µs/op (sys {row['client_sys_us']:4.1f})  "
                          f"servers {row['server_us']:6.1f} µs/op  "
                          f"p50 {row['p50_ms']:.2f} ms  errors {row['errors']}", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmedians of {args.reps} (c={args.concurrency}, {args.duration}s each)")
    print(f"{'tree':<24} {'workload':<17} {'ops/s':>9} {'client µs/op':>13} {'server µs/op':>13}")
    for (tree, workload), rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("ops_per_s", "client_us", "server_us")}
        print(f"{tree:<24} {workload:<17} {med['ops_per_s']:>9,.0f} "
              f"{med['client_us']:>13.1f} {med['server_us']:>13.1f}")


if __name__ == "__main__":
    main()
