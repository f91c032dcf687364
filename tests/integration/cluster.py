"""Real `prkdb` processes on 127.0.0.1 for integration tests.

Every process is started by us, tracked by PID, and killed at teardown even
when the test fails. Ports are picked free by the kernel; data lives in the
test's tmp_path. `wire_call` is a tiny blocking client speaking the real
protocol (independent of the SDK, so it can also send garbage).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from prkdb.config import PeerConfig
from prkdb.server.clusterconf import write_cluster_configs
from prkdb.wire import NEED_DATA, PROTOCOL_VERSION, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import Hello, Status, StatusOk

CLUSTER_ID = "prkdb-test"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class WireConn:
    """A blocking connection that has said hello; for tests only (independent of the SDK)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", cluster_id: str = CLUSTER_ID,
                 timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.decoder = FrameDecoder()
        self.sock.sendall(encode_message(Hello(PROTOCOL_VERSION, cluster_id, "client", 0)))
        self.hello = self.recv()

    def send(self, msg: Any) -> None:
        self.sock.sendall(encode_message(msg))

    def recv(self) -> Any:
        while True:
            f = self.decoder.next_frame()
            if f is not NEED_DATA:
                return from_wire(f)
            data = self.sock.recv(1 << 16)
            self.decoder.receive_data(data)
            if not data:
                raise ConnectionError("closed")

    def call(self, msg: Any) -> Any:
        self.send(msg)
        return self.recv()

    def close(self) -> None:
        self.sock.close()


class NodeProcesses:
    """`prkdb serve` processes started by us, one per node, tracked by PID.

    Subclasses say how a node is launched (`_command`, `_env`, `_cwd`) and
    where it listens; the process handling is shared.
    """

    root: Path
    n: int

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def ids(self) -> range:
        return range(1, self.n + 1)

    def _command(self, i: int) -> list[str]:
        return [sys.executable, "-m", "prkdb", "serve", "--config",
                str(self.root / f"node{i}.toml")]

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def _cwd(self) -> Path | None:
        return None

    def start(self, i: int, extra_args: Sequence[str] = ()) -> None:
        """Launch node i; `extra_args` are appended to its command line (e.g. --rebuild)."""
        log = open(self.root / f"node{i}.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.procs[i] = subprocess.Popen(
            [*self._command(i), *extra_args], stdout=log, stderr=subprocess.STDOUT, env=self._env(),
            cwd=self._cwd(),
        )
        log.close()

    def start_all(self) -> Self:
        for i in self.ids:
            self.start(i)
        return self

    def alive(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.poll() is None

    def kill(self, i: int) -> None:
        """kill -9: no handoff, no flush."""
        p = self.procs[i]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def terminate(self, i: int, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code."""
        p = self.procs[i]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def log(self, i: int) -> str:
        return (self.root / f"node{i}.log").read_text(errors="replace")


class LocalCluster(NodeProcesses):
    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        partitions: int = 4,
        tick_ms: int = 20,
        snapshot_entries: int = 10_000,
        extra: str = "",
    ) -> None:
        super().__init__()
        self.root = root
        self.n = nodes
        self.partitions = partitions
        ports = free_ports(2 * nodes)
        self.client_ports = ports[:nodes]
        self.peer_ports = ports[nodes:]
        peers = [
            PeerConfig(i, f"127.0.0.1:{self.client_ports[i - 1]}",
                       f"127.0.0.1:{self.peer_ports[i - 1]}")
            for i in self.ids
        ]
        write_cluster_configs(
            root, peers, cluster_id=CLUSTER_ID,
            data_dirs={i: root / f"data{i}" for i in self.ids},
            partitions=partitions,
            raft={"tick_ms": tick_ms, "snapshot_entries": snapshot_entries},
            extra=extra,
        )

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)

    def wait_for_log(self, i: int, text: str, timeout: float = 20.0) -> bool:
        """Poll node i's log for `text` (an external process: polling is all we have)."""
        deadline = time.monotonic() + timeout
        while text not in self.log(i):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self, i: int, timeout: float = 2.0) -> StatusOk:
        conn = WireConn(self.client_ports[i - 1], timeout=timeout)
        try:
            return conn.call(Status(1))
        finally:
            conn.close()

    def leaders(self) -> dict[int, int]:
        """partition -> leader, as agreed by every live node (missing if unsettled)."""
        views = []
        for i in self.ids:
            if self.alive(i):
                try:
                    views.append(self.status(i))
                except OSError:
                    return {}
        agreed: dict[int, int] = {}
        for p in range(self.partitions):
            seen = {v.partitions[p].leader for v in views}
            leader = seen.pop() if len(seen) == 1 else 0
            if leader and self.alive(leader):
                agreed[p] = leader
        return agreed

    def wait_ready(self, timeout: float = 30.0) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in self.ids:
                if i in self.procs and self.procs[i].poll() is not None:
                    raise AssertionError(f"node {i} exited:\n{self.log(i)[-3000:]}")
            try:
                leaders = self.leaders()
            except (OSError, ConnectionError):
                leaders = {}
            if len(leaders) == self.partitions:
                return leaders
            time.sleep(0.1)
        raise AssertionError(f"cluster not ready after {timeout}s: leaders {self.leaders()}")
