"""The three SDK front ends against real `prkdb serve` processes: failover as users meet it.

- a leader frozen by SIGSTOP while the rest elect a new one: calls with a
  deadline shorter than the attempt timeout must reach the new leader;
- kill -9 of a leader under 64 concurrent asyncio tasks: every acknowledged
  write reads back;
- asking the current leader to transfer leadership to itself answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prkdb.client import AsyncClient, PrkdbError, ReadConsistency
from prkdb.client.core import DEFAULT_ATTEMPT_TIMEOUT
from tests.client.fake import key_in
from tests.client.fronts import Front, fronts_fixture_iter
from tests.integration.cluster import CLUSTER_ID, LocalCluster


@pytest.fixture(scope="module")
def shared3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("fronts"), 3)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


@pytest.fixture(params=["trio", "asyncio", "sync"])
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    yield from fronts_fixture_iter(request.param)


def test_transfer_to_the_current_leader_answers_at_once(
    shared3: LocalCluster, front: Front
) -> None:
    db = front.connect(shared3.seeds)  # no cluster id: learned from the node
    assert db.cluster_id == CLUSTER_ID
    leader = shared3.wait_ready()[1]
    reply = db.transfer_leader(1, leader, timeout=3.0)
    assert reply.details["leader"] == leader
    assert shared3.wait_ready()[1] == leader


def test_frozen_leader_is_replaced_within_the_callers_deadline(
    shared3: LocalCluster, front: Front
) -> None:
    """SIGSTOP the leader of partition 0 for 5 s; puts with a 1.0 s deadline go on.

    The attempt timeout stays at its default (2.0 s), longer than the
    deadline: the case where a client used to stay stuck on the frozen
    node until it resumed.
    """
    db = front.connect(shared3.seeds, attempt_timeout=DEFAULT_ATTEMPT_TIMEOUT)
    key = key_in(0, shared3.partitions, prefix="frozen")
    db.put(key, b"0")
    leader = shared3.wait_ready()[0]
    pid = shared3.procs[leader].pid
    failures: list[str] = []
    acked = 0
    os.kill(pid, signal.SIGSTOP)
    try:
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            try:
                db.put(key, b"%d" % (acked + 1), timeout=1.0)
                acked += 1
            except PrkdbError as exc:
                failures.append(f"{type(exc).__name__}: {exc.message[:200]}")
    finally:
        os.kill(pid, signal.SIGCONT)
    # An election takes ~0.5-1 s: at most the calls made during it may fail.
    assert len(failures) <= 2, failures
    assert acked >= 10, (acked, failures)
    assert db.get(key, timeout=10.0) == b"%d" % acked or failures  # the last ack is there
    shared3.wait_ready()


def test_asyncio_64_tasks_survive_a_leader_kill(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, 3)
    try:
        c.start_all()
        c.wait_ready()
        asyncio.run(_asyncio_kill_run(c))
    finally:
        c.close()


async def _asyncio_kill_run(c: LocalCluster) -> None:
    acked: dict[bytes, bytes] = {}
    errors: list[str] = []
    stop = asyncio.Event()

    async def writer(w: int, db: AsyncClient) -> None:
        i = 0
        while not stop.is_set():
            key, value = b"t%d-%d" % (w, i), b"v%d" % i
            try:
                await db.put(key, value, timeout=10.0)
                acked[key] = value
            except PrkdbError as exc:  # OutcomeUnknown: not acknowledged, not checked
                errors.append(repr(exc))
            i += 1

    async with AsyncClient.connect(c.seeds) as db:
        leader = c.wait_ready()[0]
        tasks = [asyncio.create_task(writer(w, db)) for w in range(64)]
        try:
            await asyncio.sleep(1.0)
            before = len(acked)
            await asyncio.to_thread(c.kill, leader)
            await asyncio.sleep(3.0)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks)
        assert len(acked) > before + 64, f"writes did not resume: {before} -> {len(acked)}"
        assert not errors, errors[:3]
        for key, value in acked.items():
            got = await db.get_with_consistency(key, ReadConsistency.LINEARIZABLE)
            assert got == value, key
