"""Peer transport: every partition's Raft messages between nodes, batched per write.

Each node dials every other node once and keeps that connection for its
outgoing messages (so a pair of nodes shares two connections, one per
direction: simpler than multiplexing both directions on one, and it never
needs a tie-break between simultaneous dials). Outgoing messages queue per
peer, bounded: Raft tolerates loss, so a full queue drops rather than
buffering without bound for a dead peer. One sender task per peer takes
everything queued and writes it as one `RaftBatch` frame. It reconnects with
capped exponential backoff and jitter.

Incoming connections must open with a peer Hello of this cluster; their
`RaftBatch` frames are checked (known partition, sender matches the hello)
and handed to the partition drivers through `deliver`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from prkdb.config import NodeConfig, parse_addr
from prkdb.errors import PrkdbError
from prkdb.raft import Message
from prkdb.server.framed import FramedStream, StreamClosed
from prkdb.wire import PROTOCOL_VERSION, RemoteProtocolError, from_wire
from prkdb.wire.messages import ROLE_PEER, Error, Hello, HelloOk, RaftBatch, check_hello, error_for

PEER_QUEUE = 8192  # messages per peer before we start dropping
MAX_ITEMS_PER_BATCH = 4096
MAX_BATCH_BYTES = 4 * 1024 * 1024  # start a new frame past this (a snapshot may exceed it)
HELLO_MAX_FRAME = 64 * 1024  # until a peer said a valid hello
HELLO_TIMEOUT = 5.0


class PeerTransport:
    def __init__(
        self,
        config: NodeConfig,
        deliver: Callable[[int, Message], None],
        log: Any,
        on_peer_down: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = config
        self.deliver = deliver
        self.log = log
        self.on_peer_down = on_peer_down
        self._queues: dict[int, tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]] = {}
        for p in config.peers:
            if p.id != config.node_id:
                self._queues[p.id] = trio.open_memory_channel(PEER_QUEUE)
        self.dropped = 0
        self.connected: dict[int, bool] = dict.fromkeys(self._queues, False)

    def send(self, partition: int, msgs: tuple[Message, ...] | list[Message]) -> None:
        """Queue messages for their peers; never blocks (drops when a queue is full)."""
        for m in msgs:
            q = self._queues.get(m.to)
            if q is None:
                self.dropped += 1
                continue
            try:
                q[0].send_nowait((partition, m))
            except trio.WouldBlock:
                self.dropped += 1

    async def run(self, listeners: list[trio.SocketListener], *, task_status: Any =
                  trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for peer_id in self._queues:
                nursery.start_soon(self._sender, peer_id)
            nursery.start_soon(self._serve, listeners)
            task_status.started()

    def _peer_down(self, peer_id: int) -> None:
        if self.on_peer_down is not None:
            self.on_peer_down(peer_id)

    # -- outgoing -------------------------------------------------------------
    async def _sender(self, peer_id: int) -> None:
        peer = self.cfg.peer(peer_id)
        assert peer is not None
        host, port = parse_addr(peer.peer_addr)
        recv = self._queues[peer_id][1]
        backoff = 0.05
        rng = random.Random()
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                # Refused: nothing listens there, the process is gone.
                self._peer_down(peer_id)
                await self._backoff(peer_id, backoff, rng, recv)
                backoff = min(backoff * 2, 1.0)
                continue
            framed = FramedStream(stream, self.cfg.limits.max_peer_frame)
            try:
                with trio.fail_after(HELLO_TIMEOUT):
                    await framed.send_now(
                        Hello(PROTOCOL_VERSION, self.cfg.cluster_id, ROLE_PEER, self.cfg.node_id)
                    )
                    reply = from_wire(await framed.receive())
                if not isinstance(reply, HelloOk):
                    self.log.warning("peer_refused_hello", peer=peer_id, reply=repr(reply)[:200])
                    await framed.aclose()
                    await trio.sleep(1.0)
                    continue
                self.connected[peer_id] = True
                self.log.info("peer_connected", peer=peer_id, addr=peer.peer_addr)
                backoff = 0.05
                await self._pump(framed, recv)
            except (StreamClosed, OSError, trio.TooSlowError, trio.BrokenResourceError,
                    PrkdbError) as e:
                if self.connected.get(peer_id):
                    why = str(e) or type(e).__name__
                    self.log.info("peer_disconnected", peer=peer_id, error=why)
                    self._peer_down(peer_id)
            finally:
                self.connected[peer_id] = False
                await framed.aclose()
            await self._backoff(peer_id, backoff, rng, recv)

    async def _backoff(self, peer_id: int, delay: float, rng: random.Random,
                       recv: trio.MemoryReceiveChannel) -> None:
        # Messages queued for an unreachable peer are stale by the time it is
        # back (Raft will resend what matters): drop them instead of flooding.
        while True:
            try:
                recv.receive_nowait()
                self.dropped += 1
            except trio.WouldBlock:
                break
        await trio.sleep(delay * (0.5 + rng.random()))

    async def _pump(self, framed: FramedStream, recv: trio.MemoryReceiveChannel) -> None:
        me = self.cfg.node_id
        async for first in recv:
            items = [first]
            size = _approx_size(first[1])
            while len(items) < MAX_ITEMS_PER_BATCH and size < MAX_BATCH_BYTES:
                try:
                    item = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                items.append(item)
                size += _approx_size(item[1])
            await framed.send_now(RaftBatch(me, tuple(items)))

    # -- incoming -------------------------------------------------------------
    async def _serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._handle_incoming, listeners)

    async def _handle_incoming(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, HELLO_MAX_FRAME)
        peer_id = 0
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                hello = from_wire(await framed.receive())
            if not isinstance(hello, Hello):
                await framed.send_now(Error(0, 4, "the first frame must be a hello"))
                return
            err = check_hello(hello, cluster_id=self.cfg.cluster_id, role=ROLE_PEER)
            if err is None and self.cfg.peer(hello.node_id) is None:
                err = Error(0, 4, f"node {hello.node_id} is not a member of this cluster")
            if err is not None:
                self.log.warning("rejected_peer", node=hello.node_id, reason=err.message)
                await framed.send_now(err)
                return
            peer_id = hello.node_id
            framed.decoder.max_frame = framed.max_frame = self.cfg.limits.max_peer_frame
            await framed.send_now(HelloOk(self.cfg.node_id, self.cfg.cluster_id))
            partitions = self.cfg.partitions
            while True:
                batch = from_wire(await framed.receive())
                if not isinstance(batch, RaftBatch) or batch.from_node != peer_id:
                    raise RemoteProtocolError("peers may only send RaftBatch frames of their own")
                for partition, msg in batch.items:
                    if 0 <= partition < partitions:
                        self.deliver(partition, msg)
        except RemoteProtocolError as e:
            self.log.warning("bad_peer_input", peer=peer_id, error=e.message)
            with trio.move_on_after(1):
                await framed.send_now(error_for(e, 0))
        except (StreamClosed, trio.BrokenResourceError, OSError):
            # The peer's end closed: a crashed process's sockets are closed by
            # its kernel at once, which is how we learn of it before any timeout.
            if peer_id:
                self._peer_down(peer_id)
        except trio.TooSlowError:
            pass
        finally:
            await framed.aclose()


def _approx_size(m: Message) -> int:
    n = 64
    for e in m.entries:
        n += len(e.data) + 16
    if m.snapshot is not None:
        n += len(m.snapshot.data)
    return n
