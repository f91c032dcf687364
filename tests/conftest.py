"""Shared pytest options.

--sim-seeds N   how many random schedules the Raft simulation runs (default 1000)
--sim-start S   first seed (to replay or extend a soak)
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sim-seeds", type=int, default=1000, help="random Raft schedules to run")
    parser.addoption("--sim-start", type=int, default=0, help="first seed of the schedules")


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> range:
    start = request.config.getoption("--sim-start")
    return range(start, start + request.config.getoption("--sim-seeds"))
