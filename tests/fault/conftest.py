"""Fixtures for the fault tests: namespaced clusters, and the CI guard.

Without root (or without `ip netns`) the namespaced tests skip, except in CI
(``CI=true``), where they fail: CI runs as root, so a skip there would mean the
fault tolerance silently went unproven. As a second guard, a session that ran
under CI=true and skipped any test of tests/fault for a netns reason ends
with a non-zero exit status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault.netns import NetnsCluster, cleanup_prefix, netns_unavailable

IN_CI = os.environ.get("CI") == "true"
NETNS_SKIP = "netns unavailable"
_skipped_here: list[str] = []


@pytest.fixture(scope="session")
def netns_ok() -> Iterator[None]:
    why = netns_unavailable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"CI=true but the fault tests cannot run: {why}", pytrace=False)
        pytest.skip(f"{NETNS_SKIP}: {why}")
    cleanup_prefix()  # leftovers of crashed earlier runs
    yield
    cleanup_prefix()


@pytest.fixture
def make_cluster(netns_ok: None, tmp_path: Path) -> Iterator[Callable[..., NetnsCluster]]:
    """`make_cluster(n, **kw)` -> a started, ready NetnsCluster, torn down after the test."""
    made: list[NetnsCluster] = []

    def make(nodes: int = 3, *, start: bool = True, **kw: object) -> NetnsCluster:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        cls = kw.pop("cluster_class", NetnsCluster)  # e.g. tests/fault/secure.py's
        c = cls(root, nodes, **kw)  # type: ignore[operator]
        made.append(c)
        if start:
            c.start_all()
            c.wait_ready()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "tests/fault" in report.nodeid.replace("\\", "/"):
        reason = str(report.longrepr)
        if NETNS_SKIP in reason:
            _skipped_here.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped_here and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if IN_CI and _skipped_here:
        terminalreporter.write_line(
            f"FAILED (CI=true): {len(_skipped_here)} fault tests skipped for lack of netns: "
            + ", ".join(_skipped_here[:5]),
            red=True,
        )
