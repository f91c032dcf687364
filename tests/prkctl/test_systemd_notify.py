"""The daemon under a fake systemd: a NOTIFY_SOCKET we bind, one real `prkdb serve`."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to ~108 bytes; tmp_path can be long.
    path = f"/tmp/prkdb-notify-{id(tmp_path)}-{time.monotonic_ns()}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        yield s, path
    finally:
        s.close()
        Path(path).unlink(missing_ok=True)


def receive_until(s: socket.socket, want: str, timeout: float) -> list[str]:
    """Datagrams received until one equals `want` (AssertionError on timeout)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want} within {timeout}s; got {got}")
        s.settimeout(left)
        try:
            got.append(s.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def test_ready_watchdog_stopping(tmp_path: Path, notify_socket: tuple[socket.socket, str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    node = LocalCluster(tmp_path, 1, partitions=2)
    try:
        node.start_all()
        got = receive_until(sock, "READY=1", timeout=20)
        assert "STOPPING=1" not in got
        # READY=1 means serving: a status answers at once, every partition has a leader.
        st = node.status(1)
        assert len(st.partitions) == 2
        assert "node_ready" in node.log(1)
        pings = receive_until(sock, "WATCHDOG=1", timeout=2)
        t0 = time.monotonic()
        receive_until(sock, "WATCHDOG=1", timeout=2)
        receive_until(sock, "WATCHDOG=1", timeout=2)
        assert time.monotonic() - t0 < 1.0, "pings should come every ~0.1 s"
        assert "READY=1" not in pings[1:]
        node.procs[1].send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", timeout=10)
        assert node.procs[1].wait(20) == 0
        assert "shutting_down" in node.log(1)
    finally:
        node.close()


def test_no_notify_socket_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    node = LocalCluster(tmp_path, 1, partitions=1)
    try:
        node.start_all()
        node.wait_ready()
        assert node.terminate(1) == 0
    finally:
        node.close()
