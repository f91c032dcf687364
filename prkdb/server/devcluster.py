"""`prkdb dev`: a local cluster of `prkdb serve` child processes, kept running.

Theory of operation
-------------------
Each node is a child process in its own session (so a Ctrl-C in the terminal
reaches only this supervisor, which then stops the nodes in order). Its
output goes to `DATA_DIR/node<i>.log`, its PID to `DATA_DIR/node<i>.pid`, so
a user can `kill -9` one and watch the others elect new leaders.

When a node dies the others keep serving (a majority is enough), and after
`restart_delay` seconds the node is started again on its own data dir; it
catches up from the leaders. A node that dies by itself soon after a start
(`RestartPolicy.quick_exit` seconds) is failing at start, e.g. on a damaged
data dir: each such exit doubles the wait, and after `give_up_after` of them
in a row that node is left down, with its log named. Exits someone asked for
(a signal such as SIGKILL or SIGTERM, or exit 0 after a SIGTERM) never count.

What to do after an exit is decided by `RestartPolicy` (pure, unit tested);
`DevCluster` only waits, polls and spawns.

SIGTERM, SIGINT and SIGHUP stop every node with SIGTERM (a second signal
kills them at once). On Linux each node also gets SIGTERM if this process
dies without doing so (even by SIGKILL): no node outlives its supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

POLL_S = 0.2  # how often the supervisor looks at its children
STOP_TIMEOUT_S = 15.0  # SIGTERM'd nodes hand off leadership; after this they are killed

# Deaths someone asked for: never a sign that the node cannot start.
REQUESTED_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to start a dead node again.

    Attributes:
        delay: seconds before the first restart; 0 means never restart.
        quick_exit: a node that exits by itself sooner than this (seconds)
            after its start failed at start.
        give_up_after: that many failures at start in a row and the node is left down.
    """

    delay: float = 5.0
    quick_exit: float = 10.0
    give_up_after: int = 3

    def failed_at_start(self, returncode: int, uptime: float) -> bool:
        """True if this exit counts towards giving up (not one someone asked for)."""
        requested = returncode == 0 or (returncode < 0 and -returncode in REQUESTED_SIGNALS)
        return not requested and uptime < self.quick_exit

    def next_delay(self, failures_in_a_row: int) -> float | None:
        """Seconds to wait before the restart, or None to leave the node down.

        `failures_in_a_row` counts this exit if it failed at start: the wait
        doubles from `delay` with each, and reaching `give_up_after` gives up.
        """
        if self.delay <= 0 or failures_in_a_row >= self.give_up_after:
            return None
        return self.delay * 2 ** max(0, failures_in_a_row - 1)


def describe_exit(returncode: int) -> str:
    """`exited with code 1` / `was killed by SIGKILL (signal 9)`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {-returncode})"
    return f"exited with code {returncode}"


@dataclass(slots=True)
class DevNode:
    """One child node and what the supervisor knows of it."""

    node_id: int
    config: Path
    client_addr: str
    log_path: Path
    pid_path: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # time.monotonic() of the last start
    restart_at: float | None = None  # when a dead node is due to start again
    failures_in_a_row: int = 0  # exits by itself soon after a start, in a row
    starts: int = 0
    given_up: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DevCluster:
    """Run the nodes of `configs` (node i = configs[i-1]) until a stop signal."""

    def __init__(self, configs: Sequence[Path], client_addrs: Sequence[str], data_dir: Path,
                 policy: RestartPolicy, *, echo: Callable[..., None] = click.echo) -> None:
        self.nodes = [
            DevNode(i, path, addr, data_dir / f"node{i}.log", data_dir / f"node{i}.pid")
            for i, (path, addr) in enumerate(zip(configs, client_addrs, strict=True), 1)
        ]
        self.data_dir = data_dir
        self.policy = policy
        self.echo = echo
        self.stop_requested = 0  # how many stop signals arrived

    # -- the loop ---------------------------------------------------------------------

    def run(self, banner: Callable[[], None]) -> int:
        """Start every node, keep them running until a stop signal; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        clean = False
        try:
            for node in self.nodes:
                self._start(node)
            banner()
            clean = self._supervise()
        finally:
            clean = self._stop_all() and clean
        return 0 if clean else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested += 1

    def _supervise(self) -> bool:
        """Poll until a stop signal (True) or until no node is left to run (False)."""
        while not self.stop_requested:
            now = time.monotonic()
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    self._on_exit(node, now)
                elif node.restart_at is not None and now >= node.restart_at:
                    self._start(node)
            if all(n.given_up for n in self.nodes):
                self._say("no node is left to run; stopping", err=True)
                return False
            time.sleep(POLL_S)
        return not any(n.given_up for n in self.nodes)

    def _on_exit(self, node: DevNode, now: float) -> None:
        assert node.proc is not None
        rc = node.proc.returncode
        node.proc = None
        with contextlib.suppress(FileNotFoundError):
            node.pid_path.unlink()
        if self.policy.failed_at_start(rc, now - node.started_at):
            node.failures_in_a_row += 1
        else:
            node.failures_in_a_row = 0
        delay = self.policy.next_delay(node.failures_in_a_row)
        self._say(f"node {node.node_id} {describe_exit(rc)} (log: {node.log_path}); "
                  f"{self._survivors()}", err=True)
        if delay is not None:
            node.restart_at = now + delay
            self._say(f"node {node.node_id}: restarting in {delay:g}s")
        elif self.policy.delay <= 0:
            node.given_up = True
            self._say(f"node {node.node_id}: not restarting it (--restart-delay 0)")
        else:
            node.given_up = True
            self._say(f"node {node.node_id}: giving up on it, it failed "
                      f"{node.failures_in_a_row} times in a row within "
                      f"{self.policy.quick_exit:g}s of starting; see {node.log_path}, "
                      f"which ends: {last_line(node.log_path)}", err=True)

    def _survivors(self) -> str:
        up = [n.node_id for n in self.nodes if n.running]
        if not up:
            return "no node is running"
        who = f"node {up[0]}" if len(up) == 1 else "nodes " + ", ".join(map(str, up))
        if len(up) > len(self.nodes) // 2:
            return f"{who} keep{'s' if len(up) == 1 else ''} serving"
        return (f"only {who} of {len(self.nodes)} running: no majority, the cluster "
                f"is unavailable until a node returns")

    # -- processes --------------------------------------------------------------------

    def _start(self, node: DevNode) -> None:
        node.restart_at = None
        node.starts += 1
        with open(node.log_path, "ab") as log:
            if node.starts > 1:
                log.write(f"--- prkdb dev: restarting node {node.node_id} (start "
                          f"{node.starts}) at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n"
                          .encode())
                log.flush()
            node.proc = subprocess.Popen(
                [sys.executable, "-m", "prkdb", "serve", "--config", str(node.config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        node.started_at = time.monotonic()
        tmp = node.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(f"{node.proc.pid}\n")
        tmp.replace(node.pid_path)
        verb = "started" if node.starts == 1 else "restarted"
        self._say(f"node {node.node_id} {verb}: pid {node.proc.pid}, client "
                  f"{node.client_addr}, log {node.log_path}")

    def _stop_all(self) -> bool:
        """SIGTERM every node, wait, SIGKILL the stragglers; True if all exited 0."""
        live = [n for n in self.nodes if n.running]
        for n in live:
            assert n.proc is not None
            n.proc.send_signal(signal.SIGTERM)
        signals_seen = self.stop_requested
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(n.running for n in live):
            # A second Ctrl-C (or the timeout) does not wait for the handoff.
            if time.monotonic() > deadline or self.stop_requested > max(1, signals_seen):
                for n in live:
                    if n.running:
                        assert n.proc is not None
                        n.proc.kill()
                break
            time.sleep(0.05)
        clean = True
        for n in live:
            assert n.proc is not None
            rc = n.proc.wait()
            if rc != 0:
                clean = False
                self._say(f"node {n.node_id} {describe_exit(rc)} while stopping "
                          f"(log: {n.log_path})", err=True)
        for n in self.nodes:
            with contextlib.suppress(FileNotFoundError):
                n.pid_path.unlink()
        self._say("cluster stopped")
        return clean

    def _say(self, text: str, *, err: bool = False) -> None:
        self.echo(f"[{time.strftime('%H:%M:%S')}] {text}", err=err)


def last_line(path: Path) -> str:
    """The last non-empty line of a log (its last 4 KiB), for a one-line report."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError as e:
        return f"(unreadable: {e})"
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "(empty)")


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before fork
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
