"""The partition supervisor: restart after a bug, stop the node after a storage failure.

A storage failure must stop the node even when it arrives wrapped in an
exception group (trio >= 0.25 wraps what escapes a nursery): that once
restarted the partition in a loop instead (found by tests/fault/test_disk_full.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from prkdb.config import NodeConfig
from prkdb.server.node import FatalStorageError, Node
from prkdb.storage import StorageError


class FakeDriver:
    partition = 3

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.runs = 0
        self.restarts = 0
        self.failed_with: list[Any] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        task_status.started()
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)

    def restart_core(self) -> None:
        self.restarts += 1

    def fail_all(self, err: Any) -> None:
        self.failed_with.append(err)


def _node() -> Node:
    return Node(NodeConfig.default())


async def test_a_bug_restarts_only_the_partition(autojump_clock: trio.testing.MockClock) -> None:
    driver = FakeDriver([ValueError("bug"), ExceptionGroup("g", [KeyError("bug 2")])])
    await _node()._supervise(driver)  # type: ignore[arg-type]
    assert driver.runs == 3 and driver.restarts == 2
    assert len(driver.failed_with) == 2  # waiting clients were told each time


@pytest.mark.parametrize(
    "failure",
    [
        StorageError("wal rollover failed: [Errno 28] No space left on device"),
        OSError(5, "Input/output error"),
        ExceptionGroup("nursery", [StorageError("wal failed earlier")]),
        ExceptionGroup("outer", [ExceptionGroup("inner", [OSError(28, "No space")])]),
    ],
    ids=["storage", "oserror", "grouped", "nested"],
)
async def test_a_storage_failure_stops_the_node(failure: BaseException) -> None:
    driver = FakeDriver([failure])
    with pytest.raises(FatalStorageError, match="partition 3: storage failed"):
        await _node()._supervise(driver)  # type: ignore[arg-type]
    assert driver.restarts == 0


async def test_cancellation_is_not_mistaken_for_a_bug() -> None:
    driver = FakeDriver([])

    async def forever(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    driver.run = forever  # type: ignore[method-assign]
    with trio.move_on_after(0.01):
        await _node()._supervise(driver)  # type: ignore[arg-type]
    assert driver.restarts == 0
