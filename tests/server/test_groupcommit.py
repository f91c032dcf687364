"""Group commit: one fsync covers every append made before it started.

Both modes (in the event loop, the default, and in a helper thread) must make
every append made before `sync()` durable by its return, and fail-stop.
"""

from __future__ import annotations

import threading
import time

import pytest
import trio

from prkdb.server.groupcommit import GroupCommitter


class FakeWal:
    """Counts syncs; `appended` is what a sync makes durable when it starts."""

    def __init__(self, delay: float = 0.01, fail_after: int | None = None) -> None:
        self.appended = 0
        self.durable = 0
        self.syncs = 0
        self.delay = delay
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def append(self) -> int:
        self.appended += 1
        return self.appended

    def sync(self) -> None:
        with self.lock:
            snapshot = self.appended
        time.sleep(self.delay)
        self.syncs += 1
        if self.fail_after is not None and self.syncs > self.fail_after:
            raise OSError(28, "No space left on device")
        self.durable = max(self.durable, snapshot)


MODES = pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])


async def _writers(wal: FakeWal, gc: GroupCommitter, writers: int, each: int) -> None:
    """Concurrent callers that append, sync, and check their append is durable."""

    async def writer() -> None:
        for _ in range(each):
            mine = wal.append()
            await gc.sync()
            # Everything appended before sync() was called is durable now.
            assert wal.durable >= mine

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)


@MODES
async def test_every_append_is_durable_when_sync_returns(in_thread: bool) -> None:
    wal = FakeWal(delay=0.001)
    gc = GroupCommitter(wal, in_thread=in_thread)  # type: ignore[arg-type]
    await _writers(wal, gc, writers=10, each=5)
    assert wal.durable == 50


async def test_concurrent_callers_share_fsyncs_in_thread_mode() -> None:
    wal = FakeWal()
    gc = GroupCommitter(wal, in_thread=True)  # type: ignore[arg-type]
    await _writers(wal, gc, writers=50, each=5)
    # 250 durable appends, far fewer fsyncs: the whole point of group commit.
    assert wal.syncs < 50
    assert wal.durable == 250


@MODES
async def test_sync_failure_is_raised_and_sticks(in_thread: bool) -> None:
    wal = FakeWal(fail_after=1)
    gc = GroupCommitter(wal, in_thread=in_thread)  # type: ignore[arg-type]
    wal.append()
    await gc.sync()
    wal.append()
    with pytest.raises(OSError, match="No space"):
        await gc.sync()
    # A WAL that failed to sync is never trusted again (fail-stop).
    with pytest.raises(OSError, match="No space"):
        await gc.sync()
    assert wal.syncs == 2  # ... not even retried


async def test_no_fsync_mode_never_syncs() -> None:
    wal = FakeWal()
    gc = GroupCommitter(wal, fsync=False)  # type: ignore[arg-type]
    wal.append()
    await gc.sync()
    assert wal.syncs == 0
