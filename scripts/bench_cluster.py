#!/usr/bin/env python3
"""Benchmark a local 3-node PrkDB cluster (fsync on, default config) through the SDK.

Starts the cluster itself (127.0.0.1, ports from --port), preloads keys, then
runs, one after the other:
  W1   one client, sequential puts (16-byte keys, 100-byte values)
  W64  64 concurrent puts
  R64  64 concurrent gets at each read level (linearizable, follower, stale)
and, for scale, this machine's physical floor measured in the same run: one
128-byte write + fdatasync in the data dir, and one loopback TCP round trip.

    python scripts/bench_cluster.py [--duration 5] [--port 18500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prkdb.bench import preload, run_workload
from prkdb.client import PrkDbClient
from prkdb.server.main import dev_configs


def fsync_floor(directory: Path, n: int = 500) -> float:
    """Median seconds of one 128-byte write + fdatasync (the durability floor)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def loopback_rtt(n: int = 2000) -> float:
    """Median seconds of one 64-byte ping-pong over loopback TCP."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def echo() -> None:
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := c.recv(64):
            c.sendall(data)
        c.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    cli = socket.create_connection(srv.getsockname())
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        cli.sendall(b"p" * 64)
        got = 0
        while got < 64:
            got += len(cli.recv(64))
        samples.append(time.perf_counter() - t0)
    cli.close()
    srv.close()
    return statistics.median(samples)


def start_cluster(root: Path, port: int) -> list[subprocess.Popen]:
    paths = dev_configs(3, port, root, 8)
    procs = []
    for i, p in enumerate(paths, 1):
        log = open(root / f"node{i}.log", "ab")  # noqa: SIM115 - the child owns it
        procs.append(subprocess.Popen([sys.executable, "-m", "prkdb", "serve", "--config",
                                       str(p), "--log-level", "warning"],
                                      stdout=log, stderr=subprocess.STDOUT))
    return procs


async def wait_ready(seeds: list[str]) -> None:
    deadline = trio.current_time() + 30
    while True:
        try:
            async with PrkDbClient.connect(seeds, cluster_id="prkdb-dev", timeout=2) as c:
                st = await c.status()
                if all(p.leader for p in st.partitions):
                    return
        except Exception:
            if trio.current_time() > deadline:
                raise
        await trio.sleep(0.2)


async def bench(seeds: list[str], duration: float, keys: int) -> list:
    await wait_ready(seeds)
    results = []
    async with PrkDbClient.connect(seeds, cluster_id="prkdb-dev", timeout=10) as client:
        await preload(client, keys, 100)
        for workload, conc in (("put", 1), ("put", 64), ("get-linearizable", 64),
                               ("get-follower", 64), ("get-stale", 64)):
            r = await run_workload(client, workload, concurrency=conc, duration=duration,
                                   keys=keys)
            print(r.line(), flush=True)
            results.append(r)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per workload")
    ap.add_argument("--port", type=int, default=18500, help="client port of node 1")
    ap.add_argument("--keys", type=int, default=1000, help="keys preloaded and read")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="prkdb-bench-"))
    fs = fsync_floor(root)
    rtt = loopback_rtt()
    floor = fs + 2 * rtt
    print(f"physical floor: fdatasync {fs * 1e3:.3f} ms + 2 x loopback RTT {rtt * 1e3:.3f} ms "
          f"= {floor * 1e3:.3f} ms")
    procs = start_cluster(root, args.port)
    seeds = [f"127.0.0.1:{args.port + i}" for i in range(3)]
    try:
        results = trio.run(bench, seeds, args.duration, args.keys)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)
    w1 = results[0]
    print(f"W1 p50 / physical floor = {w1.p50_ms / (floor * 1e3):.2f}x")
    if args.json:
        print(json.dumps({"floor_ms": floor * 1e3, "fsync_ms": fs * 1e3, "rtt_ms": rtt * 1e3,
                          "results": [r.as_dict() for r in results]}, indent=2))


if __name__ == "__main__":
    main()
