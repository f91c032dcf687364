"""`prkdb dev`'s restart decisions (prkdb/server/devcluster.py), without processes.

The supervisor itself is tested with real processes in
tests/integration/test_dev_failover.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

from prkdb.server.devcluster import RestartPolicy, describe_exit, last_line


def test_deaths_someone_asked_for_never_count_towards_giving_up() -> None:
    policy = RestartPolicy(delay=3, quick_exit=10)
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        assert not policy.failed_at_start(-sig, uptime=0.5)
    assert not policy.failed_at_start(0, uptime=0.5)  # a clean stop after `kill PID`
    assert policy.failed_at_start(1, uptime=0.5)
    assert policy.failed_at_start(2, uptime=9.9)
    assert policy.failed_at_start(-signal.SIGSEGV, uptime=0.5)
    assert not policy.failed_at_start(1, uptime=10.0)  # it ran: a crash, not a failed start


def test_the_wait_doubles_with_each_failed_start_then_the_node_is_left_down() -> None:
    policy = RestartPolicy(delay=3, give_up_after=3)
    assert [policy.next_delay(n) for n in range(4)] == [3, 3, 6, None]
    assert RestartPolicy(delay=0).next_delay(0) is None  # --restart-delay 0: never


def test_exits_are_described_by_code_or_signal(tmp_path: Path) -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by SIGKILL (signal 9)"
    assert describe_exit(-200) == "was killed by an unknown signal (signal 200)"
    log = tmp_path / "node1.log"
    log.write_text("a\nprkdb: node 1 stopped: boom\n\n")
    assert last_line(log) == "prkdb: node 1 stopped: boom"
    assert last_line(tmp_path / "missing.log").startswith("(unreadable: ")
