"""`prkctl watch` against a real 3-node cluster: a real process per watch (its output
read line by line while the test writes), stopped with Ctrl-C or by --max-events,
also across a killed node; COMPACTED and a dead cluster in-process (CliRunner).

The cluster keeps a short event history (`limits.history_events`), so a few writes
push an old cursor out of it. Each test writes under its own hash tag or prefix.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from prkdb.client import WatchCursor
from prkdb.partitioning import partition_for
from tests.integration.cluster import LocalCluster, free_ports
from tests.prkctl.helpers import invoke

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
HISTORY = 20  # events each partition keeps


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("watch"), 3, partitions=PARTITIONS,
                     extra=f"[limits]\nhistory_events = {HISTORY}\n\n")
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


def start_watch(cluster: LocalCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "prkctl", "--seeds", ",".join(cluster.seeds), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def read_line(out: IO[str] | None) -> str:
    assert out is not None
    line = out.readline()
    assert line, "the watch ended early"
    return line.rstrip("\n")


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    """Wait for the exit, then the rest of the output (communicate would read around the
    lines `read_line` already buffered)."""
    proc.wait(timeout=timeout)
    assert proc.stdout is not None and proc.stderr is not None
    return proc.stdout.read(), proc.stderr.read()


def test_events_in_order_json_and_ctrl_c(cluster: LocalCluster) -> None:
    s = cluster.seeds
    proc = start_watch(cluster, "--json", "watch", "--prefix", "{w1}/", "--prev-kv",
                       "--print-cursor")
    try:
        first = json.loads(read_line(proc.stdout))
        start = WatchCursor.decode(first["cursor"])  # the watch is open: nothing is missed
        p = partition_for(b"{w1}/", PARTITIONS)
        assert list(start) == [p]  # a hash-tagged prefix: one partition
        for args in (["put", "{w1}/a", "1"], ["put", "{w1}/a", "2"], ["put", "{w1}/b", "x"],
                     ["delete", "{w1}/a"], ["put", "{w1}0", "outside"]):
            assert invoke(s, *args).exit_code == 0
        events: list[dict[str, Any]] = []
        cursors: list[dict[str, Any]] = []
        while len(events) < 4:
            line = json.loads(read_line(proc.stdout))
            (cursors if "cursor" in line else events).append(line)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err
    assert [(e["kind"], e["key"], e["value"], e["prev_value"]) for e in events] == [
        ("PUT", "{w1}/a", "1", None), ("PUT", "{w1}/a", "2", "1"), ("PUT", "{w1}/b", "x", None),
        ("DELETE", "{w1}/a", None, "2")]
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(set(revisions)) and revisions[0] > start[p]
    assert {e["partition"] for e in events} == {p}
    # a cursor line after each revision; the last one is at (or past) the delete
    rest = [json.loads(x) for x in out.splitlines()]
    assert all(set(x) == {"cursor"} for x in rest)
    last = WatchCursor.decode((cursors + rest)[-1]["cursor"])
    assert last[p] >= revisions[-1]

    # resume from a saved cursor line: exactly what came after it
    mid = next(c for c in cursors if WatchCursor.decode(c["cursor"])[p] == revisions[1])
    assert invoke(s, "put", "{w1}/c", "later").exit_code == 0
    proc = start_watch(cluster, "watch", "--prefix", "{w1}/", "--cursor", json.dumps(mid),
                       "--max-events", "3")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["PUT", "{w1}/b", "x", "DELETE", "{w1}/a", "PUT", "{w1}/c",
                                "later"]


def test_one_key_and_a_range_in_text(cluster: LocalCluster) -> None:
    s = cluster.seeds
    one = start_watch(cluster, "watch", "k1", "--print-cursor", "--max-events", "2")
    rng = start_watch(cluster, "--hex", "watch", "6b31", "6b33", "--print-cursor",
                      "--max-events", "3")
    try:
        for proc in (one, rng):
            assert read_line(proc.stdout).startswith("CURSOR ")
        for k, v in (("k1", "a"), ("k10", "b"), ("k2", "c"), ("k3", "d"), ("k1", "e")):
            assert invoke(s, "put", k, v).exit_code == 0
        out1, err1 = finish(one)
        out2, err2 = finish(rng)
    finally:
        for proc in (one, rng):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (one.returncode, rng.returncode) == (0, 0), err1 + err2
    assert [x for x in out1.splitlines() if not x.startswith("CURSOR ")] == [
        "PUT", "k1", "a", "PUT", "k1", "e"]
    # k1, k10, k2 are in [k1, k3); k3 is not; across partitions there is no order
    lines = [x for x in out2.splitlines() if not x.startswith("CURSOR ")]
    got = {(lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)}
    assert got == {("6b31", "61"), ("6b3130", "62"), ("6b32", "63")}
    assert out2.splitlines()[-1].startswith("CURSOR ")  # the cursor at exit


def test_compacted_exits_1_saying_to_relist(cluster: LocalCluster) -> None:
    s = cluster.seeds
    p = partition_for(b"{w2}/", PARTITIONS)
    for i in range(HISTORY + 5):
        assert invoke(s, "put", f"{{w2}}/k{i}", "v").exit_code == 0
    old = WatchCursor({p: 1}).encode()
    res = invoke(s, "watch", "--prefix", "{w2}/", "--cursor", old)
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith(f"prkctl: compacted: partition {p} no longer keeps the "
                                 "events after the cursor (it keeps those after revision ")
    assert "prkctl get --prefix '{w2}/'" in res.stderr and res.stderr.count("\n") == 1
    res = invoke(s, "watch", "{w2}/k1", "{w2}/k2", "--cursor", old)
    assert res.exit_code == 1 and "prkctl scan '{w2}/k1' '{w2}/k2'" in res.stderr


def test_dead_cluster_exits_1_with_one_line() -> None:
    seeds = [f"127.0.0.1:{p}" for p in free_ports(2)]
    for extra in ([], ["--print-cursor"]):
        t0 = time.monotonic()
        res = invoke(seeds, "watch", "--prefix", "x", *extra, timeout=0.3)
        assert res.exit_code == 1, res.output
        assert res.stderr.startswith("prkctl: cluster unavailable:")
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
        assert time.monotonic() - t0 < 5


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout lines, read by a thread (None at EOF), so a test can wait
    with a deadline instead of blocking on a missing line."""
    q: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def test_resumes_through_a_killed_node_without_gap_or_duplicate(cluster: LocalCluster) -> None:
    # Last in the module: it kills a node.
    s = cluster.seeds
    proc = start_watch(cluster, "--json", "watch", "--prefix", "~fo/")
    lines = lines_of(proc)
    try:
        # no --print-cursor: the first event shows that the watch is open
        deadline = time.monotonic() + 10
        while True:
            assert invoke(s, "put", "~fo/ready", "1").exit_code == 0
            try:
                first = lines.get(timeout=0.5)
                break
            except queue.Empty:
                assert time.monotonic() < deadline, "the watch never started"
        assert first is not None and json.loads(first)["key"] == "~fo/ready"
        keys = [f"~fo/k{i:02d}" for i in range(24)]
        for k in keys[:12]:
            assert invoke(s, "put", k, "before").exit_code == 0
        victim = cluster.leaders()[0]  # leads a partition, serves some streams
        cluster.kill(victim)
        for k in keys[12:]:
            assert invoke(s, "put", k, "after", timeout=10).exit_code == 0
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len([e for e in events if e["key"] != "~fo/ready"]) < len(keys):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the watch ended"
            events.append(json.loads(line))
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    # every write exactly once (across partitions the order is free) ...
    got = [(e["key"], e["value"]) for e in events if e["key"] != "~fo/ready"]
    assert sorted(got) == [(k, "before" if i < 12 else "after") for i, k in enumerate(keys)]
    # ... and per partition in revision order, which is the order they were written in
    for p in range(PARTITIONS):
        revisions = [e["revision"] for e in events if e["partition"] == p]
        assert revisions == sorted(set(revisions)), p  # in order, none twice
        mine = [e["key"] for e in events if e["partition"] == p and e["key"] != "~fo/ready"]
        assert mine == [k for k in keys if partition_for(k.encode(), PARTITIONS) == p]
