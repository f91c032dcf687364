"""Running prkctl in-process (CliRunner) against a cluster, and small WAL helpers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from prkctl.cli import CtlContext, cli


def invoke(seeds: Sequence[str], *args: str, input: bytes | str | None = None,
           timeout: float = 5.0, obj: CtlContext | None = None) -> Result:
    """`prkctl --seeds ... --timeout T ARGS`; stdout and stderr kept apart."""
    runner = CliRunner()
    return runner.invoke(
        cli, ["--seeds", ",".join(seeds), "--timeout", str(timeout), *args],
        input=input, obj=obj, catch_exceptions=False,
    )


def invoke_json(seeds: Sequence[str], *args: str, **kw: Any) -> tuple[int, Any]:
    res = invoke(seeds, "--json", *args, **kw)
    return res.exit_code, json.loads(res.stdout)


def segments(wal_dir: Path) -> list[Path]:
    return sorted(p for p in wal_dir.iterdir() if p.suffix == ".wal")


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ 0x08]))


def leaders(cluster: Any) -> dict[int, int]:
    """partition -> leader, agreed by every node that answers; a node answering means up.

    Unlike LocalCluster.leaders it does not need the cluster to own the processes
    (scripts/local-cluster.sh starts them in test_scripts.py).
    """
    views = {}
    for i in cluster.ids:
        try:
            views[i] = cluster.status(i, timeout=1.0)
        except (OSError, ConnectionError):
            continue
    agreed: dict[int, int] = {}
    for p in range(cluster.partitions):
        seen = {v.partitions[p].leader for v in views.values()}
        lead = seen.pop() if len(seen) == 1 else 0
        if lead in views:
            agreed[p] = lead
    return agreed


def wait_leaders(cluster: Any, timeout: float = 20.0) -> dict[int, int]:
    """Like LocalCluster.wait_ready, but tolerating nodes that are down on purpose."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        got = leaders(cluster)
        if len(got) == cluster.partitions:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader for every partition after {timeout}s: {got}")
        time.sleep(0.1)
