"""`Node`: one PrkDB process. Owns the WAL, the partitions, the listeners.

Start-up order (so systemd's READY=1 means "serving"): bind the listen
addresses (listen.py; they listen only once serving) -> open and replay the
WAL -> recover every partition -> start the peer transport -> start every
partition driver -> open the client listener -> READY=1.

Shutdown on SIGTERM/SIGINT: STOPPING=1, hand away every partition this node
leads (leadership transfer), wait a few seconds for that, fail the clients
still waiting, sync and close the WAL, exit 0.

One `RaftLoop` task drives all partitions (prkdb/server/raftloop.py). A
partition that hits a bug is logged and restarted from its durable
state; a storage failure (fsync error, disk full) stops the node: we never
keep serving on a WAL we could not make durable (fail-stop, never silent loss).
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import trio

from prkdb.config import NodeConfig
from prkdb.errors import Unavailable
from prkdb.logging import get_logger
from prkdb.raft import Message
from prkdb.security.tls import NodeTls, watch_reload_signal
from prkdb.server import systemd
from prkdb.server.client_service import ClientService
from prkdb.server.datadir import ensure_identity, open_storage
from prkdb.server.framed import ReplyOutbox
from prkdb.server.groupcommit import GroupCommitter
from prkdb.server.layout import check_peer_layouts
from prkdb.server.listen import BoundAddresses, bind_addresses, open_listeners
from prkdb.server.partition import PartitionDriver
from prkdb.server.raftloop import FatalStorageError, RaftLoop
from prkdb.server.rebuild import RebuildTracker, data_dir_is_empty, log_lost
from prkdb.server.rebuild import prepare as prepare_rebuild
from prkdb.server.transport import PeerTransport
from prkdb.storage import WriteAheadLog
from prkdb.storage.identity import DataDirIdentity

__all__ = ["FatalStorageError", "Node"]

SHUTDOWN_HANDOFF_S = 4.0
# How often an idle node makes its last sync mark durable (prkdb/storage/wal.py).
MARK_SYNC_S = 0.2


class Node:
    def __init__(self, cfg: NodeConfig, *, rebuild: bool = False,
                 bound: BoundAddresses | None = None, seed: int | None = None) -> None:
        self.cfg = cfg
        # The one source of this process's randomness (tick phase, election
        # timeouts, read contexts, reconnect jitter): logged at start, so a
        # run's timing decisions can be replayed with `prkdb serve --seed`.
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self.rng = random.Random(self.seed)
        # The listen addresses, bound by `prkdb serve` before anything else
        # (listen.py); None: `run` binds them first thing.
        self._bound = bound
        self.rebuild_requested = rebuild  # --rebuild: this node's data dir was lost
        self.log = get_logger(node=cfg.node_id)
        self.drivers: list[PartitionDriver] = []
        self.wal: WriteAheadLog | None = None
        self.stopping = False
        self.reply_outbox = ReplyOutbox()  # client connections the RaftLoop answered
        self.client_port = 0
        self.peer_port = 0
        self.tls: NodeTls | None = None  # [tls]: loaded first thing in `run`, reloaded on SIGHUP

    def _open_storage(self, identity: DataDirIdentity) -> None:
        cfg = self.cfg
        self.wal, self.snapshots = open_storage(cfg, identity, self.log)
        self.committer = GroupCommitter(self.wal, fsync=not cfg.storage.unsafe_no_fsync,
                                        in_thread=cfg.storage.sync_thread)
        if cfg.storage.unsafe_no_fsync:
            self.log.warning("fsync_disabled", detail="UNSAFE: acknowledged writes may be lost")

    def _deliver(self, partition: int, msg: Message) -> None:
        self.drivers[partition].deliver(msg)

    def _peer_down(self, peer: int) -> None:
        """A peer's process died (connection closed/refused): tell every partition."""
        for d in self.drivers:
            d.report_peer_down(peer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Before the data dir is looked at: a taken port must cost nothing.
        bound = self._bound or bind_addresses(self.cfg)
        self._bound = None
        try:
            await self._run(bound, task_status)
        finally:
            bound.close()

    async def _run(self, bound: BoundAddresses, task_status: Any) -> None:
        cfg = self.cfg
        # A certificate that does not load stops the start before any disk work.
        self.tls = NodeTls(cfg, self.log) if cfg.tls.enabled else None
        # Whose dir is this? Checked before anything is written into it.
        empty = data_dir_is_empty(cfg.data_dir)
        identity = ensure_identity(cfg, self.log)
        # From here on cfg.key_rule is the rule the data dir records.
        self.cfg = cfg = cfg.replace(key_rule=identity.rule)
        # Before the WAL is opened: a node that lost its data must learn from
        # its peers what it may have promised, and must not vote until it
        # has its log back (rebuild.py).
        rebuild = self.rebuild_requested
        if not rebuild and log_lost(cfg.data_dir):
            self.log.error("wal_missing", data_dir=str(cfg.data_dir),
                           detail="this node's WAL (its votes and acknowledged entries) is "
                                  "gone: rebuilding from the other nodes before it votes")
            rebuild = True
        targets = await prepare_rebuild(cfg, self.log, requested=rebuild, empty=empty,
                                        identity=identity, tls=self.tls)
        tracker = RebuildTracker(cfg.data_dir, cfg.node_id, targets, self.log) if targets \
            else None
        self._open_storage(identity)
        assert self.wal is not None
        rng = self.rng
        self.transport = PeerTransport(cfg, self._deliver, self.log,
                                       on_peer_down=self._peer_down,
                                       data_dir_id=identity.data_dir_id,
                                       on_dir_changed=self.fence_peer,
                                       rng=random.Random(rng.getrandbits(64)),
                                       tls=self.tls)
        self.raft_loop = RaftLoop(cfg, self.committer, self.log, outbox=self.transport,
                                  replies=self.reply_outbox,
                                  rng=random.Random(rng.getrandbits(64)))
        for p in range(cfg.partitions):
            self.drivers.append(
                PartitionDriver(cfg, p, self.wal, self.snapshots, self.committer,
                                self.transport.send, self.log, self.raft_loop.inbox,
                                flush=self.transport.flush, rebuild=tracker,
                                rng=random.Random(rng.getrandbits(64)))
            )
        self.raft_loop.partitions = self.drivers
        me = cfg.me
        peer_listeners = open_listeners(bound.peer, bound.peer_what)
        client_listeners = open_listeners(bound.client, bound.client_what)
        self.peer_port = peer_listeners[0].socket.getsockname()[1]
        self.client_port = client_listeners[0].socket.getsockname()[1]
        self.service = ClientService(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.transport.run, peer_listeners)
                await nursery.start(self.raft_loop.run)
                handler = (self.service.handle_connection if self.tls is None
                           else self.tls.wrap(self.service.handle_connection, "client"))
                nursery.start_soon(trio.serve_listeners, handler, client_listeners)
                nursery.start_soon(self._watch_signals)
                nursery.start_soon(watch_reload_signal, self.tls, self.log)
                nursery.start_soon(check_peer_layouts, cfg, self.transport, self.log, self.tls)
                nursery.start_soon(self._sync_marks)
                nursery.start_soon(self.service.auth.run)  # root user at first start
                interval = systemd.watchdog_interval()
                if interval:
                    nursery.start_soon(self._watchdog, interval)
                self.log.info(
                    "node_ready",
                    client=me.client_addr,
                    peer=me.peer_addr,
                    partitions=cfg.partitions,
                    voters=list(cfg.voter_ids),
                    data_dir=str(cfg.data_dir),
                    seed=self.seed,
                )
                systemd.notify("READY=1")
                task_status.started(self)
        finally:
            self._close_storage()

    async def fence_peer(self, node_id: int) -> None:
        """Forget every ack of `node_id`'s previous process (it is being rebuilt).

        First its incoming connections go, with whatever they hold unread;
        then a fence item per partition, queued behind every message of it
        already delivered, makes each leader drop the node's progress. When
        this returns no ack of that process can raise a commit index again.
        """
        self.transport.fence(node_id)
        remaining = len(self.drivers)
        all_done = trio.Event()

        def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                all_done.set()

        for d in self.drivers:
            await d.fence(node_id, one_done)
        await all_done.wait()
        self.log.info("fenced_peer", node=node_id)

    async def _sync_marks(self) -> None:
        """Make the WAL's last sync mark durable once the writes pause.

        Each sync leaves a mark saying how far the WAL is durable, and the
        next sync makes it durable; after the last write of a burst there is
        no next sync, so the acknowledged batch before it would otherwise
        stay unprovable after a power loss (docs/storage.md).
        """
        assert self.wal is not None
        while True:
            await trio.sleep(MARK_SYNC_S)
            if self.wal.needs_sync():
                await self.committer.sync()

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await trio.sleep(interval)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.log.info("received_signal", signal=signal.Signals(signum).name)
                await self.shutdown()
                return

    async def shutdown(self) -> None:
        """Hand leadership away, fail waiting clients, then stop everything."""
        if self.stopping:
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        led = [d for d in self.drivers if d.is_leader]
        self.log.info("shutting_down", leading=[d.partition for d in led])
        if len(self.cfg.peers) > 1:
            for d in led:
                try:
                    await d.transfer_leadership(0)
                except Exception as e:
                    self.log.info("handoff_failed", partition=d.partition, error=repr(e))
            with trio.move_on_after(SHUTDOWN_HANDOFF_S):
                for d in led:
                    await d.wait_not_leader()
        still = [d.partition for d in self.drivers if d.is_leader]
        self.log.info("handed_off_leadership", still_leading=still)
        for d in self.drivers:
            d.fail_all(Unavailable("the node is shutting down"))
        self._nursery.cancel_scope.cancel()

    def _close_storage(self) -> None:
        if self.wal is not None:
            self.committer.close()
            try:
                self.wal.sync()
                self.wal.close()
            except Exception as e:
                self.log.error("wal_close_failed", error=repr(e))
            self.wal = None
        self.log.info("node_stopped")

