#!/usr/bin/env python3
"""Restart every node of a local cluster, one at a time, while it keeps serving.

For each node in turn:
  1. wait until `prkctl status` exits 0 (every partition led, quorum up);
  2. move every partition it leads to another node (`prkctl leader transfer`),
     so clients never wait for an election;
  3. SIGTERM it (the PID from CLUSTER_DIR/nodeN.pid) and wait for its exit;
  4. start it again (`scripts/local-cluster.sh start-node N`);
  5. wait until it answers and `prkctl status` exits 0 again.
Finally `prkctl leader balance` spreads the leaders again.

Usage:
  CLUSTER_DIR=prkdb-local scripts/rolling-restart.py [--seeds A,B,C] [--nodes 1,2,3]

It drives prkctl as a subprocess (the same commands an operator would type),
so what it does is what docs/operations.md describes. For systemd
deployments replace steps 3-4 with `systemctl restart prkdb@nodeN`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"rolling-restart: {msg}", flush=True)


class Restarter:
    def __init__(self, cluster_dir: Path, seeds: str, cluster_id: str | None,
                 timeout: float) -> None:
        self.dir = cluster_dir
        self.timeout = timeout
        base = os.environ.get("PRKCTL")
        self.prkctl = base.split() if base else [sys.executable, "-m", "prkctl"]
        self.prkctl += ["--seeds", seeds, "--timeout", "3"]
        if cluster_id:
            self.prkctl += ["--cluster-id", cluster_id]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prkctl, *args], capture_output=True, text=True,
                              timeout=60)

    def status(self) -> tuple[int, dict | None]:
        r = self.ctl("--json", "status")
        try:
            return r.returncode, json.loads(r.stdout)
        except ValueError:
            return r.returncode, None

    def wait_healthy(self, node: int | None = None) -> dict:
        """Poll `prkctl status` until exit 0 (and `node` is up); returns the view."""
        deadline = time.monotonic() + self.timeout
        while True:
            rc, view = self.status()
            if rc == 0 and view is not None and (
                node is None or any(n["id"] == node and n["up"] for n in view["nodes"])
            ):
                return view
            if time.monotonic() > deadline:
                raise SystemExit(f"rolling-restart: cluster not healthy after {self.timeout}s "
                                 f"(status exit {rc})")
            time.sleep(0.2)

    def drain(self, node: int) -> None:
        """Move every partition `node` leads to the least-loaded other live node."""
        for _attempt in range(5):
            view = self.wait_healthy()
            led = [p["partition"] for p in view["partitions"] if p["leader"] == node]
            if not led:
                return
            others = {n["id"]: n["leading"] for n in view["nodes"]
                      if n["up"] and n["id"] != node}
            for p in led:
                to = min(others, key=lambda n: (others[n], n))
                r = self.ctl("leader", "transfer", str(p), str(to))
                log(f"partition {p}: node {node} -> node {to}: "
                    f"{(r.stdout or r.stderr).strip()}")
                others[to] += 1
        log(f"node {node} still leads partitions after 5 rounds; its SIGTERM hands them off")

    def pid(self, node: int) -> int | None:
        try:
            pid = int((self.dir / f"node{node}.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def stop(self, node: int) -> None:
        pid = self.pid(node)
        if pid is None:
            log(f"node {node} is not running")
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.pid(node) is not None:
            if time.monotonic() > deadline:
                raise SystemExit(f"rolling-restart: node {node} (pid {pid}) ignored SIGTERM")
            time.sleep(0.05)
        log(f"node {node} stopped")

    def start(self, node: int) -> None:
        env = dict(os.environ, CLUSTER_DIR=str(self.dir))
        subprocess.run([str(HERE / "local-cluster.sh"), "start-node", str(node)], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        log(f"node {node} started")

    def restart_all(self, nodes: list[int]) -> None:
        self.wait_healthy()
        for node in nodes:
            log(f"node {node}: moving leadership away")
            self.drain(node)
            self.stop(node)
            self.start(node)
            self.wait_healthy(node)
            log(f"node {node}: back and healthy")
        # The last node restarted leads nothing now: spread the leaders again.
        r = self.ctl("leader", "balance")
        log(f"leader balance: exit {r.returncode}")
        log("done")


def seeds_from_configs(cluster_dir: Path) -> tuple[str, list[int]]:
    import tomllib

    configs = sorted(cluster_dir.glob("node*.toml"))
    if not configs:
        raise SystemExit(f"rolling-restart: no node*.toml in {cluster_dir}")
    raw = tomllib.loads(configs[0].read_text())
    peers = sorted(raw.get("peers", []), key=lambda p: p["id"])
    return ",".join(p["client"] for p in peers), [p["id"] for p in peers]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster-dir", type=Path,
                    default=Path(os.environ.get("CLUSTER_DIR", "prkdb-local")))
    ap.add_argument("--seeds", help="default: the client addresses in the node configs")
    ap.add_argument("--nodes", help="comma-separated node ids, in order (default: all)")
    ap.add_argument("--cluster-id", default=os.environ.get("PRKDB_CLUSTER_ID"))
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for health after each step")
    args = ap.parse_args()
    seeds, ids = seeds_from_configs(args.cluster_dir)
    nodes = [int(n) for n in args.nodes.split(",")] if args.nodes else ids
    Restarter(args.cluster_dir, args.seeds or seeds, args.cluster_id,
              args.timeout).restart_all(nodes)


if __name__ == "__main__":
    main()
