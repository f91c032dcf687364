"""Shared pytest options.

--sim-seeds N   how many random schedules the Raft simulation runs (default 1000)
--sim-start S   first seed (to replay or extend a soak)
--lease-seeds N how many random schedules the lease simulation runs per cluster size
                (default 160; tests/sim/test_leases.py)
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sim-seeds", type=int, default=1000, help="random Raft schedules to run")
    parser.addoption("--sim-start", type=int, default=0, help="first seed of the schedules")
    parser.addoption("--lease-seeds", type=int, default=160,
                     help="random lease schedules to run per cluster size")


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> range:
    start = request.config.getoption("--sim-start")
    return range(start, start + request.config.getoption("--sim-seeds"))


@pytest.fixture
def lease_seeds(request: pytest.FixtureRequest) -> range:
    start = request.config.getoption("--sim-start")
    return range(start, start + request.config.getoption("--lease-seeds"))
