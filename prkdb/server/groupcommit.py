"""Group commit: one WAL `sync()` (fdatasync) makes a whole batch durable.

The RaftLoop appends every partition's entries of a pass to the shared WAL,
then awaits `sync()` once (DESIGN: "one fdatasync makes a whole batch durable
across partitions").

By default the fdatasync runs right in the event loop (`in_thread=False`):
the Raft loop, its only hot caller, waits for it anyway, and handing it to a
thread cost a thread wake-up, a wake-up of the event loop and two task
switches per sync, where the woken thread often took the CPU from the loop
(measured: about 25% more server CPU per write). The price is that the
node reads no connection during a sync; `storage.sync_thread = true` keeps
the thread for disks whose syncs are slow.

In thread mode, a round starts when nobody is syncing; callers that arrive
while a round runs wait for the next one, which then covers all of their
appends.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import trio

from prkdb.storage import WriteAheadLog


class GroupCommitter:
    def __init__(self, wal: WriteAheadLog, *, fsync: bool = True,
                 in_thread: bool = False) -> None:
        self.wal = wal
        self.fsync = fsync
        self.in_thread = in_thread
        self._requested = 0  # highest round some caller needs
        self._done = 0  # highest round completed
        self._running = False
        self._round_done = trio.Event()
        self._error: BaseException | None = None
        # One long-lived thread does the fsyncs: cheaper than trio.to_thread's
        # per-call machinery, and fsyncs are serial anyway.
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def sync(self) -> None:
        """Return once everything appended before this call is durable.

        Raises the sync's OSError (disk full, I/O error): an fsync failure is
        never ignored; the caller must stop using the WAL (fail-stop).
        """
        if self._error is not None:
            raise self._error
        if not self.fsync:
            return
        if not self.in_thread:
            try:
                self.wal.sync()
            except Exception as e:
                self._error = e
                raise
            await trio.lowlevel.checkpoint()
            return
        my_round = self._done + 1 if not self._running else self._done + 2
        self._requested = max(self._requested, my_round)
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run_rounds)
        while self._done < my_round:
            if self._error is not None:
                raise self._error
            await self._round_done.wait()
        if self._error is not None:
            raise self._error

    async def _sync_in_thread(self) -> None:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def finished(err: BaseException | None) -> None:
            outcome.append(err)
            done.set()

        def job() -> None:
            try:
                self.wal.sync()
                err = None
            except BaseException as e:  # handed back to the event loop
                err = e
            # If the node is gone, nobody waits for this sync any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished, err)

        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="prkdb-wal-sync",
                                            daemon=True)
            self._thread.start()
        self._jobs.put(job)
        with trio.CancelScope(shield=True):  # the fsync runs to completion regardless
            await done.wait()
        if outcome[0] is not None:
            raise outcome[0]

    def _worker(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def close(self) -> None:
        """Stop the sync thread (after the last sync)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    async def _run_rounds(self) -> None:
        try:
            while self._done < self._requested:
                await self._sync_in_thread()
                self._done += 1
                done, self._round_done = self._round_done, trio.Event()
                done.set()
        except BaseException as e:
            self._error = e if isinstance(e, Exception) else RuntimeError("sync cancelled")
            done, self._round_done = self._round_done, trio.Event()
            done.set()
        finally:
            self._running = False
