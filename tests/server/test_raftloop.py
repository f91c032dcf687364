"""The node's RaftLoop: failures stay per partition, slow steps park one partition.

One loop drives every partition, so it must keep the isolation a task per
partition gave: a bug in one partition restarts only that partition (its
clients are told), a storage failure stops the node (also when it arrives
wrapped in an exception group, as trio >= 0.25 does: that once restarted a
partition in a loop instead, found by tests/fault/test_disk_full.py), and a
partition busy with a slow step (snapshot install/finish, restart) neither
blocks the others nor loses the items that arrive for it meanwhile.

These run a real single-node Node in-process on 127.0.0.1 (ephemeral ports).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.config import NodeConfig, PeerConfig
from prkdb.errors import PrkdbError, Unavailable
from prkdb.server.node import FatalStorageError, Node
from prkdb.server.partition import PartitionDriver
from prkdb.server.pending import Waiter
from prkdb.server.raftloop import _leaves
from prkdb.state.commands import PutCommand, encode_command
from prkdb.storage import StorageError
from tests.server.helpers import eventually, free_addr


def _config(tmp_path: Path) -> NodeConfig:
    return dataclasses.replace(
        NodeConfig.default(),
        data_dir=tmp_path / "data",
        partitions=3,
        peers=(PeerConfig(1, free_addr(), free_addr()),),
        log_level="warning",
    )


@asynccontextmanager
async def running_node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(_config(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await eventually(lambda: all(d.is_leader for d in node.drivers))
        yield node
        nursery.cancel_scope.cancel()


async def put(d: PartitionDriver, key: bytes, value: bytes) -> Any:
    w = Waiter()
    d.submit_write(encode_command(PutCommand(key, value)), trio.current_time() + 5, w.set)
    return await w.get()


def _value(d: PartitionDriver, key: bytes) -> bytes | None:
    rec = d.sm.get(key)
    return None if rec is None else rec[0]


async def test_a_bug_restarts_only_its_partition(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        sick, healthy = node.drivers[1], node.drivers[2]
        await put(sick, b"before", b"1")
        real_apply = sick._apply
        calls = 0

        def buggy_apply(rd: Any, decoded: Any) -> None:
            nonlocal calls
            if rd.committed_entries:
                calls += 1
                if calls == 1:
                    raise ValueError("injected bug")
            real_apply(rd, decoded)

        sick._apply = buggy_apply  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match="partition 1 restarted"):
            await put(sick, b"k", b"v")
        # The other partition never noticed.
        await put(healthy, b"h", b"1")
        assert node.raft_loop.restarts == 1
        # The sick one comes back from its durable state and applies the
        # entry it lost (the client was told Unavailable: safe to retry).
        await eventually(lambda: sick.is_leader and not sick.busy)
        await put(sick, b"after", b"2")
        assert _value(sick, b"before") == b"1"
        assert _value(sick, b"k") == b"v"
        assert _value(sick, b"after") == b"2"
        assert node.raft_loop.restarts == 1


async def test_items_for_a_busy_partition_are_kept_and_replayed_in_order(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        d, other = node.drivers[0], node.drivers[1]
        release = trio.Event()
        d.go_slow(release.wait)  # as a snapshot install would
        results: list[Any] = []

        async def write(i: int) -> None:
            results.append((i, await put(d, b"k", str(i).encode())))

        async with trio.open_nursery() as n:
            for i in range(5):
                n.start_soon(write, i)
                await trio.sleep(0.01)
            await put(other, b"o", b"1")  # the other partitions go on meanwhile
            assert results == [] and len(d.deferred) == 5
            release.set()
        assert sorted(i for i, _ in results) == list(range(5))
        assert _value(d, b"k") == b"4"  # replayed in the order they arrived
        assert not d.busy and d.deferred == []


async def test_a_failed_slow_step_restarts_the_partition(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        d = node.drivers[2]

        async def broken() -> None:
            raise KeyError("bug in a slow step")

        d.go_slow(broken)
        await eventually(lambda: node.raft_loop.restarts == 1 and not d.busy and d.is_leader)
        await put(d, b"k", b"v")
        assert _value(d, b"k") == b"v"


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
async def test_a_storage_failure_stops_the_node(tmp_path: Path, failure: BaseException) -> None:
    stopped: list[BaseException] = []
    try:
        async with running_node(tmp_path) as node:
            d = node.drivers[1]

            def failing_append(*args: Any) -> None:
                raise failure

            d.wal.append_entries = failing_append  # type: ignore[method-assign]
            with trio.fail_after(10):
                with suppress(PrkdbError):
                    await put(d, b"k", b"v")
                await trio.sleep_forever()
    except BaseException as e:  # what the node stopped with
        stopped = list(_leaves(e))
    fatal = [e for e in stopped if isinstance(e, FatalStorageError)]
    assert fatal, f"node did not stop with FatalStorageError: {stopped!r}"
    assert "partition 1: storage failed" in str(fatal[0])
    assert node.raft_loop.restarts == 0


async def test_a_failed_sync_stops_the_node(tmp_path: Path) -> None:
    stopped: list[BaseException] = []
    try:
        async with running_node(tmp_path) as node:
            async def failing_sync() -> None:
                raise OSError(28, "No space left on device")

            node.committer.sync = failing_sync  # type: ignore[method-assign]
            with trio.fail_after(10):
                with suppress(PrkdbError):
                    await put(node.drivers[0], b"k", b"v")
                await trio.sleep_forever()
    except BaseException as e:
        stopped = list(_leaves(e))
    assert any(isinstance(e, FatalStorageError) and "WAL sync failed" in str(e) for e in stopped)


async def test_the_reads_of_one_pass_share_one_read_index(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        d = node.drivers[0]
        await put(d, b"k", b"v1")
        write_index = d.sm.applied_index
        calls: list[bytes] = []
        real = d.raw.read_index

        def counting(ctx: bytes) -> None:
            calls.append(ctx)
            real(ctx)

        d.raw.read_index = counting  # type: ignore[method-assign]
        waiters = [Waiter() for _ in range(10)]
        for w in waiters:  # queued before the loop runs again: one pass takes all
            d.submit_read(trio.current_time() + 5, w.set)
        applied = [await w.get() for w in waiters]
        assert len(calls) == 1
        # Each is confirmed at an index covering the write acknowledged before it.
        assert all(a >= write_index for a in applied)


async def test_a_snapshot_finishes_while_other_partitions_are_busy(tmp_path: Path) -> None:
    async with running_node(tmp_path) as node:
        quiet, busy = node.drivers[0], node.drivers[1]
        await put(quiet, b"q", b"1")
        stop = trio.Event()

        async def writer(i: int) -> None:
            while not stop.is_set():
                await put(busy, b"b-%d" % i, b"x")

        async with trio.open_nursery() as nursery:
            for i in range(8):  # every pass of the loop has a Ready of `busy`
                nursery.start_soon(writer, i)
            await trio.sleep(0.2)
            with trio.fail_after(10):
                index = await quiet.snapshot_now()
            stop.set()
        assert index >= 2 and quiet._snapshot_index == index
