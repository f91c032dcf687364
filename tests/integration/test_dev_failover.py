"""`prkdb dev` through a kill -9, as real processes (issue 14 item 2).

The README's failover demo: kill -9 the node leading a partition (its PID
from DATA_DIR/node<i>.pid), a new leader is elected, writes go on, the dev
supervisor says what happened and starts the node again, and the node
catches up. Also: a node that cannot start is given up after a few tries
while the others serve, and no node outlives the supervisor (SIGTERM, or
even SIGKILL on Linux).

Every process is killed at the end even when a test fails: the supervisor
by PID (SIGTERM, then SIGKILL), then any node it started that is still alive
(found by the PIDs it printed, checked against /proc so a reused PID is never
killed). The tests then assert there was none.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prkdb.client import ReadConsistency, SyncClient
from prkdb.partitioning import partition_for
from prkdb.raft.types import Role
from prkdb.wire.messages import Get, GetOk, HelloOk, Status, StatusOk
from tests.integration.cluster import WireConn, free_ports

DEV_CLUSTER_ID = "prkdb-dev"
PARTITIONS = 8  # `prkdb dev`'s default
EVENT_TIMEOUT = 30.0  # generous: 2 cores shared with other tests


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _dev_base_port() -> int:
    """A PORT with PORT..PORT+2 (clients) and PORT+100..PORT+102 (peers) all free."""
    for _ in range(200):
        base = free_ports(1)[0]
        if base + 102 <= 65535 and all(_port_free(base + d) for d in (0, 1, 2, 100, 101, 102)):
            return base
    raise AssertionError("no free port range for a dev cluster")


def _wait(what: str, check: Callable[[], Any], timeout: float = EVENT_TIMEOUT) -> Any:
    """Poll `check` until it returns something truthy (an external process: polling is all
    we have); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (OSError, ConnectionError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def _node_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs (not a zombie) and is a node of ours (`marker` in its command line)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and marker in cmdline


class DevRun:
    """`python -m prkdb dev` started by us on free ports, output in ROOT/dev.out."""

    def __init__(self, root: Path, *extra: str, nodes: int = 3) -> None:
        self.data = root / "data"
        self.n = nodes
        self.port = _dev_base_port()
        self.out_path = root / "dev.out"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prkdb", "dev", "--nodes", str(nodes),
                 "--port", str(self.port), "--data-dir", str(self.data), *extra],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{self.port + i}" for i in range(self.n)]

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log(self, i: int) -> str:
        return (self.data / f"node{i}.log").read_text(errors="replace")

    def pid(self, i: int) -> int | None:
        """Node i's PID from its pid file (None while it is down)."""
        try:
            return int((self.data / f"node{i}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def printed_pids(self, i: int) -> list[int]:
        """Every PID the supervisor printed for node i, oldest first."""
        return [int(m) for m in re.findall(rf"node {i} (?:re)?started: pid (\d+)", self.output())]

    def status(self, i: int) -> StatusOk:
        conn = WireConn(self.port + i - 1, cluster_id=DEV_CLUSTER_ID, timeout=2.0)
        try:
            assert isinstance(conn.hello, HelloOk) and conn.hello.node_id == i, conn.hello
            return conn.call(Status(1))
        finally:
            conn.close()

    def views(self, nodes: list[int]) -> dict[int, StatusOk]:
        out = {}
        for i in nodes:
            with contextlib.suppress(OSError, ConnectionError):
                out[i] = self.status(i)
        return out

    def leaders(self, nodes: list[int]) -> dict[int, tuple[int, int]]:
        """partition -> (leader, term) as every answering node of `nodes` agrees."""
        views = self.views(nodes)
        agreed = {}
        for p in range(PARTITIONS):
            seen = {(v.partitions[p].leader, v.partitions[p].term) for v in views.values()}
            if len(seen) == 1 and len(views) > len(nodes) // 2:
                leader, term = seen.pop()
                if leader in views:
                    agreed[p] = (leader, term)
        return agreed

    def wait_ready(self, nodes: list[int]) -> dict[int, tuple[int, int]]:
        def ready() -> dict[int, tuple[int, int]] | None:
            assert self.proc.poll() is None, f"prkdb dev exited:\n{self.output()}"
            leaders = self.leaders(nodes)
            return leaders if len(leaders) == PARTITIONS else None
        return _wait(f"every partition led by one of nodes {nodes}", ready)

    def stale_get(self, i: int, key: bytes) -> bytes | None:
        """`key` as node i itself has it (the SDK cannot pin a read to one node)."""
        conn = WireConn(self.port + i - 1, cluster_id=DEV_CLUSTER_ID, timeout=2.0)
        try:
            reply = conn.call(Get(1, key, ReadConsistency.STALE, partition_for(key, PARTITIONS)))
            assert isinstance(reply, GetOk), reply
            return reply.value
        finally:
            conn.close()

    def close(self) -> list[int]:
        """Stop the supervisor (SIGTERM, then SIGKILL); kill -9 any node left; return those."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        marker = str(self.data)
        left = [pid for i in range(1, self.n + 1) for pid in self.printed_pids(i)
                if _node_alive(pid, marker)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def _keys_in(partition: int, prefix: bytes, count: int) -> list[bytes]:
    keys, i = [], 0
    while len(keys) < count:
        k = b"%s-%d" % (prefix, i)
        if partition_for(k, PARTITIONS) == partition:
            keys.append(k)
        i += 1
    return keys


def test_kill_9_of_a_leader_fails_over_and_the_node_returns_and_catches_up(
        tmp_path: Path) -> None:
    # With the defaults, as in the README (a dead node is started again after 5 s).
    dev = DevRun(tmp_path)
    try:
        dev.wait_ready([1, 2, 3])
        for i in (1, 2, 3):
            assert dev.printed_pids(i) == [dev.pid(i)], dev.output()
        with SyncClient(dev.seeds, cluster_id=DEV_CLUSTER_ID) as db:
            for k in range(20):
                db.put(b"before-%d" % k, b"v%d" % k)

        # Partition 0's leader, as it says itself just before the kill (leaders
        # still move at boot, when each partition's preferred node campaigns).
        victim, _ = dev.wait_ready([1, 2, 3])[0]
        own = dev.status(victim).partitions
        assert own[0].role == Role.LEADER, own[0]
        old_term = own[0].term
        led = [p.partition for p in own if p.role == Role.LEADER]
        survivors = [i for i in (1, 2, 3) if i != victim]
        victim_pid = dev.pid(victim)
        assert victim_pid is not None
        os.kill(victim_pid, signal.SIGKILL)
        # The supervisor notices (and removes the pid file) before any write below.
        _wait("prkdb dev reports the death", lambda: dev.pid(victim) is None)

        def failed_over() -> bool:
            now = dev.leaders(survivors)
            return all(p in now and now[p][0] != victim for p in led)
        _wait(f"new leaders for partitions {led} after node {victim} was killed", failed_over)
        after = dev.leaders(survivors)
        assert after[0][1] > old_term, (old_term, after[0])

        # Writes go on, to the partition the dead node led among others.
        down_keys = _keys_in(0, b"while-down", 10)
        with SyncClient(dev.seeds, cluster_id=DEV_CLUSTER_ID) as db:
            revisions = [db.put(k, b"fresh").revision for k in down_keys]
            assert db.get(down_keys[-1]) == b"fresh"
        assert dev.pid(victim) is None, "the node came back before the writes: no catch-up"

        # The supervisor is still running and said what happened.
        assert dev.proc.poll() is None, dev.output()
        out = dev.output()
        assert f"node {victim} was killed by SIGKILL (signal 9)" in out, out
        assert f"node{victim}.log" in out and "keep serving" in out, out
        assert f"node {victim}: restarting in 5s" in out, out

        # It comes back on its own, with a new PID ...
        new_pid = _wait(f"node {victim} restarted", lambda: (
            len(dev.printed_pids(victim)) == 2 and dev.printed_pids(victim)[1]))
        assert new_pid != victim_pid and dev.pid(victim) == new_pid
        assert f"--- prkdb dev: restarting node {victim}" in dev.log(victim)
        # ... and catches up: its own state machine has what was written while it was down.
        _wait(f"node {victim} applied the writes it missed", lambda: (
            dev.status(victim).partitions[0].applied >= max(revisions)))
        assert all(dev.stale_get(victim, k) == b"fresh" for k in down_keys)
        assert dev.stale_get(victim, b"before-7") == b"v7"
        dev.wait_ready([1, 2, 3])
        assert dev.proc.poll() is None
    finally:
        left = dev.close()
    assert not left, f"nodes outlived prkdb dev: {left}"
    assert dev.proc.returncode == 0, dev.output()
    assert "cluster stopped" in dev.output()
    assert not list(dev.data.glob("*.pid"))


def test_a_node_failing_at_start_is_given_up_while_the_others_serve(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node3").write_text("not a data dir\n")  # node 3 cannot start
    dev = DevRun(tmp_path, "--restart-delay", "0.2")
    try:
        _wait("prkdb dev gives up on node 3", lambda: "giving up" in dev.output())
        out = dev.output()
        assert "node 3: giving up on it, it failed 3 times in a row" in out, out
        assert "node3.log" in out and "Not a directory" in out, out
        assert len(dev.printed_pids(3)) == 3, out  # the first start and two restarts
        dev.wait_ready([1, 2])
        with SyncClient(dev.seeds[:2], cluster_id=DEV_CLUSTER_ID) as db:
            db.put(b"k", b"v")
        assert dev.proc.poll() is None, dev.output()
    finally:
        left = dev.close()
    assert not left, f"nodes outlived prkdb dev: {left}"
    assert dev.proc.returncode == 1, dev.output()  # a node was given up


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_no_node_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    dev = DevRun(tmp_path)
    try:
        dev.wait_ready([1, 2, 3])
        pids = [dev.pid(i) for i in (1, 2, 3)]
        dev.proc.kill()
        dev.proc.wait(10)
        marker = str(dev.data)
        _wait("every node stops after prkdb dev is killed",
              lambda: not any(_node_alive(p, marker) for p in pids if p))
    finally:
        left = dev.close()
    assert not left, f"nodes outlived prkdb dev: {left}"
