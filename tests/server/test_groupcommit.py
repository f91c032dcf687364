"""Group commit: one fsync covers every append made before it started."""

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


async def test_concurrent_callers_share_fsyncs_and_are_durable_on_return() -> None:
    wal = FakeWal()
    gc = GroupCommitter(wal)  # type: ignore[arg-type]

    async def writer(n: int) -> None:
        for _ in range(n):
            mine = wal.append()
            await gc.sync()
            # Everything appended before sync() was called is durable now.
            assert wal.durable >= mine

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(writer, 5)
    # 250 durable appends, far fewer fsyncs: the whole point of group commit.
    assert wal.syncs < 50
    assert wal.durable == 250


async def test_sync_failure_is_raised_to_every_waiter_and_sticks() -> None:
    wal = FakeWal(fail_after=1)
    gc = GroupCommitter(wal)  # type: ignore[arg-type]
    wal.append()
    await gc.sync()
    wal.append()
    with pytest.raises(OSError, match="No space"):
        await gc.sync()
    # A WAL that failed to sync is never trusted again (fail-stop).
    with pytest.raises(OSError, match="No space"):
        await gc.sync()


async def test_no_fsync_mode_never_syncs() -> None:
    wal = FakeWal()
    gc = GroupCommitter(wal, fsync=False)  # type: ignore[arg-type]
    wal.append()
    await gc.sync()
    assert wal.syncs == 0
