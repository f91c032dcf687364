"""`RaftLoop`: one task drives every partition of the node (multi-Raft batching).

Theory of operation
-------------------
Partitions share one inbox. Each pass of the loop:

    wait for the inbox or the next tick -> hand every queued item to its
    partition -> per partition: propose what queued, expire deadlines, tick,
    take the Ready (send `messages`, append to the shared WAL)
    -> ONE WAL sync for all of them
    -> per partition: mirror, send `messages_after_persist`, apply, advance

While the loop awaits the sync it does not read the inbox: every partition
has one Ready outstanding and no input may reach its core in between (the
RawNode contract). Messages, proposals and reads queue meanwhile and the
next pass takes them all, which is where batching comes from: all of a
partition's proposals of one pass become one `propose_many` and one
AppendEntries per follower; all partitions' appends share one fsync; and
all their messages reach the transport together, one frame per peer. This
is the batch system of multi-Raft engines (TiKV's raftstore): a loop per
partition paid a wake-up, a Ready and a sync wait per partition per batch,
and its batches were smaller.

Failures stay per partition. A bug (any other exception) in one partition
fails its waiting clients and rebuilds its core from its durable state after
a backoff, while the others go on; a storage failure (fsync error, disk
full) stops the node, since we never serve on a WAL we could not make
durable. Rare slow steps (snapshot install, snapshot finish, a restart) run
in the background (`PartitionDriver.go_slow`); the loop parks that
partition's items until its "done" arrives, then replays them in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Protocol

import trio
import trio.testing

from prkdb.config import NodeConfig
from prkdb.errors import Unavailable
from prkdb.logging import NodeLogger
from prkdb.server.framed import ReplyOutbox
from prkdb.server.groupcommit import GroupCommitter
from prkdb.server.inbox import Inbox, InboxItem, PeerMessage, SlowStepDone
from prkdb.server.partition import PartitionDriver
from prkdb.storage import StorageError

INBOX_SIZE = 65536  # items for all partitions; beyond it requests get Unavailable
MAX_DEFERRED_MSGS = 10_000  # peer messages parked for a busy partition, then dropped
MAX_DRAIN = 2048  # items taken per pass (~60 ms of work), so ticks are never starved
# News of a commit index alone waits this long for a frame to ride on (the
# next write's append, usually well within it) before it leaves on its own.
COMMIT_NEWS_DELAY_S = 0.002
SETTLE_S = 0.0005  # most time a pass waits for the connection tasks to go idle


class Outbox(Protocol):
    """Where partitions' messages wait to leave (the peer transport)."""

    @property
    def lazy_pending(self) -> bool: ...

    def flush(self, lazy: bool = False) -> None: ...


class FatalStorageError(Exception):
    """The WAL or a snapshot could not be made durable; the node must stop."""


class RaftLoop:
    def __init__(self, cfg: NodeConfig, committer: GroupCommitter, log: NodeLogger,
                 outbox: Outbox, replies: ReplyOutbox, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.committer = committer
        self.outbox = outbox  # the transport: sends what partitions produced
        self.replies = replies  # client connections answered in a pass
        self.log = log
        self.tick_s = cfg.raft.tick_ms / 1000
        self.inbox = Inbox(INBOX_SIZE)
        self.partitions: list[PartitionDriver] = []
        self.restarts = 0
        # This node's tick phase, a fraction of a tick (see _next_tick_after).
        self.tick_phase = (rng if rng is not None else random.Random()).random()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as background:
            for p in self.partitions:
                p.background = background
            background.start_soon(self.inbox.run_timer)
            task_status.started()
            await self._loop()

    def _next_tick_after(self, now: float) -> float:
        # Nodes sharing a machine (and its monotonic clock) must not tick in
        # lockstep, or their election timers would expire together and split
        # votes more often: the grid's phase is random per process.
        t = self.tick_s
        phase = self.tick_phase * t
        return (math.floor((now - phase) / t) + 1) * t + phase

    async def _loop(self) -> None:
        parts = self.partitions
        inbox = self.inbox
        next_tick = self._next_tick_after(trio.current_time())
        outbox = self.outbox
        replies = self.replies
        load = 0.0  # moving average of the items a pass takes beyond the first
        lazy_due = math.inf  # when the commit news waiting in the outbox must leave
        while True:
            # Only a partition something happened to can have a Ready: asking
            # the 7 idle ones every pass cost more than the busy one's work.
            if not inbox and not any(p.touched and not p.busy and p.has_ready()
                                     for p in parts):
                await inbox.wait(min(next_tick, lazy_due))
                woken_by_item = len(inbox) > 0
            else:
                woken_by_item = False
            # Settling pays off when passes carry many items (a batch gathers
            # in the meantime); when they carry one or two (a lone writer) it
            # only adds a scheduler round to the latency.
            if load > 2.0:
                await self._settle()
            else:
                await trio.lowlevel.checkpoint()
            n = 0
            for _ in range(MAX_DRAIN):
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                self._dispatch(item)
                n += 1
            load = load * 0.75 + (n - woken_by_item) * 0.25  # beyond the one that woke us
            now = trio.current_time()
            if now >= lazy_due:
                outbox.flush(lazy=True)
                lazy_due = math.inf
            tick = now >= next_tick
            if tick:
                next_tick = self._next_tick_after(now)
            readies = []
            must_sync = False
            for p in parts:
                try:
                    p.expire(now)  # even when busy: a client's deadline is its own
                    if p.busy:
                        continue
                    if tick:
                        p.tick(now)
                    elif not p.touched:
                        continue
                    p.touched = False
                    p.flush_queued()
                    if p.has_ready():
                        rd = p.begin_ready()
                        if rd is not None:
                            readies.append((p, rd))
                            must_sync = must_sync or rd.must_sync
                except Exception as e:
                    self._failed(p, e)
            outbox.flush()  # followers write their copy while we sync ours
            if must_sync:
                try:
                    await self.committer.sync()
                except (OSError, StorageError) as e:
                    self.log.critical("storage_failed", error=repr(e))
                    raise FatalStorageError(f"WAL sync failed: {e}") from e
            for p, rd in readies:
                p.touched = True  # advancing may leave more to do (e.g. entries to apply)
                try:
                    p.finish_ready(rd)
                    p.maybe_snapshot()
                except Exception as e:
                    self._failed(p, e)
            for p in parts:  # a snapshot written in the background, or asked for
                if p.has_snapshot_work and not p.busy:
                    try:
                        p.maybe_snapshot()
                    except Exception as e:
                        self._failed(p, e)
            replies.flush()  # the clients' answers first: they are what someone waits for
            outbox.flush()
            # Commit news alone wakes a follower for nothing but an apply; a
            # lone writer's next append carries it for free (W1: 2 of 7 passes
            # per write). It still leaves within the delay, so followers apply
            # (and serve stale reads) promptly once writes stop.
            if not outbox.lazy_pending:
                lazy_due = math.inf
            elif lazy_due == math.inf:
                lazy_due = trio.current_time() + COMMIT_NEWS_DELAY_S

    async def _settle(self) -> None:
        """Let every connection task run until idle (bounded) before a batch.

        They read what has arrived (with the sync in the loop, nothing was
        read while it ran) and write the replies queued: bigger batches, less
        CPU per request, replies before lazy messages. Bounded, so a flood of
        input cannot starve ticks and heartbeats.
        """
        # trio's own idle detection: it wakes us only once no task is
        # runnable AND an I/O poll found nothing new. Emulating it with
        # `current_statistics().tasks_runnable` (the queue of the *next*
        # batch only) settled too early: W64 fell to 0.55-0.66x in
        # scripts/bench_ab.py. trio.testing is part of trio's public API; this
        # is its one use outside tests (pyproject.toml's ruff ignores say so).
        with trio.move_on_after(SETTLE_S):
            await trio.testing.wait_all_tasks_blocked()

    def _dispatch(self, item: InboxItem) -> None:
        p = self.partitions[item.partition]
        if type(item) is SlowStepDone:
            self._slow_done(p, item.error)
            return
        if p.busy:
            if type(item) is PeerMessage and len(p.deferred) >= MAX_DEFERRED_MSGS:
                p.dropped_inbox += 1  # Raft resends what matters; memory stays bounded
            else:
                p.deferred.append(item)
            return
        p.touched = True
        try:
            p.handle(item)
        except Exception as e:
            self._failed(p, e)

    def _slow_done(self, p: PartitionDriver, error: Exception | None) -> None:
        p.busy = False
        p.touched = True
        if error is not None:
            self._failed(p, error)
            return
        deferred, p.deferred = p.deferred, []
        for i, item in enumerate(deferred):
            if p.busy:  # failed while replaying: keep the rest for after the restart
                p.deferred.extend(deferred[i:])
                return
            self._dispatch(item)

    def _failed(self, p: PartitionDriver, error: Exception) -> None:
        """A partition raised: stop the node (storage) or restart the partition (bug)."""
        leaves = list(_leaves(error))
        storage = next((x for x in leaves if isinstance(x, OSError | StorageError)), None)
        if storage is not None:
            self.log.critical("storage_failed", partition=p.partition, error=repr(storage))
            raise FatalStorageError(
                f"partition {p.partition}: storage failed: {storage}"
            ) from storage
        self.restarts += 1
        self.log.error("partition_failed", partition=p.partition, error=repr(error),
                       exc_info=error)
        p.fail_all(Unavailable(f"partition {p.partition} restarted"))
        delay, p.restart_backoff = p.restart_backoff, min(p.restart_backoff * 2, 5.0)
        p.go_slow(p.restart_after, delay)


def _leaves(e: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or `e` itself."""
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            yield from _leaves(sub)
    else:
        yield e
