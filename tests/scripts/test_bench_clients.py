"""scripts/bench_clients.py in its fastest mode: it runs, prints a row per client, cleans up.

No timing is asserted: the numbers belong to the benchmark, never to pass/fail.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_clients.py"
OFFSETS = (0, 1, 2, 100, 101, 102)  # the script's client and peer ports


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base() -> int:
    for _ in range(50):
        base = random.randrange(30000, 50000)
        if all(bindable(base + d) for d in OFFSETS):
            return base
    raise RuntimeError("no free port range found")


def test_fastest_mode_prints_a_row_per_client(tmp_path: Path) -> None:
    port = free_base()
    env = dict(os.environ, TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-etcd", "--seconds", "0.3", "--warmup", "0.2",
         "--rounds", "1", "--port", str(port), "--json"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table, _, raw = r.stdout.partition("\n{")
    for client in ("SyncClient", "AsyncClient", "PrkDbClient"):
        for workload in ("put", "get-stale"):
            assert f"| {client} | {workload} |" in table, table
    assert "etcd" not in table.split("| ratio")[0]  # no baseline rows with --no-etcd
    assert "n/a: no baseline, etcd not run" in table and "--no-etcd" in table
    data = json.loads("{" + raw)
    runs = {(run["client"], run["workload"]): run for run in data["runs"]}
    assert len(runs) == 6 == len(data["runs"])
    for (client, workload), run in runs.items():
        assert run["ops"] > 0 and run["errors"] == 0, (client, workload, run["first_error"])
    # cleaned up: the temp dir is gone and every server let go of its port
    assert list(tmp_path.iterdir()) == []
    assert all(bindable(port + d) for d in OFFSETS)
