"""Peer transport: every partition's Raft messages between nodes, batched per write.

Each node dials every other node once and keeps that connection for its
outgoing messages (so a pair of nodes shares two connections, one per
direction: simpler than multiplexing both directions on one, and it never
needs a tie-break between simultaneous dials).

Outgoing: `send` only collects messages per peer; the RaftLoop calls `flush`
at the points of its pass where messages must leave (before its WAL sync,
so followers write while the leader does, and at the end of the pass).
News of a commit index alone (COMMIT_ONLY appends) is lazy: it rides along
with the next frame to that peer, or leaves on its own when the loop says
so (`flush(lazy=True)`, a couple of milliseconds later). On a busy machine
every write can hand the CPU to the process it wakes, so a write nobody
waits for must not stand in front of a client's reply, and a frame that
only says "apply" is a follower's whole pass spent on it.
`flush` encodes each peer's messages as one `RaftBatch` frame and writes it
straight to the socket when nothing is waiting for it (no task switch on
the replication path); what the socket does not take at once is left to the
peer's sender task, which also dials, says hello and reconnects with capped
exponential backoff and jitter. Unsent bytes per peer are bounded: Raft
tolerates loss, so past the bound we drop instead of buffering without end
for a dead peer.

Incoming connections must open with a peer Hello of this cluster; their
`RaftBatch` frames are checked (known partition, sender matches the hello)
and handed to the partition drivers through `deliver`.

A peer's Hello carries the id of its data dir (IDENTITY). When a member
comes back with another id than it had before (its disk was swapped behind
its back, or replaced by a copy of another dir), whatever it acknowledged
before is gone: the transport logs `peer_data_dir_changed` and, before any
message of the new connection is delivered, has the node forget that
member's acks (`on_dir_changed`, the fence a rebuilding node asks for).
Ids are remembered for this process's life.

With ``[tls]`` (prkdb/security/tls.py) both directions are mutual TLS: the
listener's accept step handshakes before the Hello is read, and a peer whose
certificate does not name the member its Hello claims (``node-<id>``) is
refused with an Error frame; the dialer checks that the node it dialed
names the id it expects before it says its Hello. On a TLS link the
direct ``os.write`` of `_PeerLink.write` is the `TlsStream`'s own
(`TlsStream.write_nowait`: encrypt, write what the socket takes), and the
sender task writes what is left; no byte goes around TLS (`raw_fd` is -1).
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Sequence

import trio

from prkdb.config import NodeConfig, parse_addr
from prkdb.errors import PrkdbError
from prkdb.logging import NodeLogger
from prkdb.netio import raw_fd
from prkdb.raft import COMMIT_ONLY, Message, MsgType
from prkdb.security.stream import TlsStream
from prkdb.security.tls import LogLimiter, NodeTls
from prkdb.server.framed import FramedStream, StreamClosed
from prkdb.wire import PEER_PROTOCOL_VERSION, RaftBatchEncoder, RemoteProtocolError, from_wire
from prkdb.wire.messages import ROLE_PEER, Error, Hello, HelloOk, RaftBatch, check_hello, error_for

MAX_UNSENT_BYTES = 64 * 1024 * 1024  # per peer, past which new frames are dropped
MAX_ITEMS_PER_BATCH = 4096
MAX_BATCH_BYTES = 4 * 1024 * 1024  # start a new frame past this (a snapshot may exceed it)
HELLO_MAX_FRAME = 64 * 1024  # until a peer said a valid hello
HELLO_TIMEOUT = 5.0


class PeerTransport:
    def __init__(
        self,
        config: NodeConfig,
        deliver: Callable[[int, Message], None],
        log: NodeLogger,
        on_peer_down: Callable[[int], None] | None = None,
        *,
        data_dir_id: str = "",
        on_dir_changed: Callable[[int], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        tls: NodeTls | None = None,
    ) -> None:
        self.cfg = config
        self.tls = tls  # None: plaintext links
        self._log_limiter = LogLimiter()
        self._rng = rng if rng is not None else random.Random()  # reconnect jitter
        self.data_dir_id = data_dir_id
        self.on_dir_changed = on_dir_changed
        self.peer_dir_ids: dict[int, str] = {}  # member -> the data dir id it last said
        self.deliver = deliver
        self.log = log
        self.on_peer_down = on_peer_down
        self._links = {p.id: _PeerLink() for p in config.peers if p.id != config.node_id}
        self._dirty: list[_PeerLink] = []  # links with urgent messages
        self._lazy_dirty: list[_PeerLink] = []  # links with lazy ones
        self.dropped = 0
        self._incoming: dict[int, set[trio.CancelScope]] = {}  # peer -> its readers
        # Peers whose config disagrees with ours (layout.py): no traffic either way.
        self.quarantined: dict[int, str] = {}

    def quarantine(self, peer_id: int, reason: str) -> None:
        """Stop all Raft traffic with `peer_id` for good (its layout differs from ours)."""
        if peer_id in self.quarantined:
            return
        self.quarantined[peer_id] = reason
        link = self._links.pop(peer_id, None)  # send() drops what is addressed to it
        if link is not None:
            link.msgs.clear()
            link.lazy.clear()
            link.out.clear()
            link.quarantined = True
            link._wake.set()
        self.fence(peer_id)

    def fence(self, peer_id: int) -> None:
        """Close `peer_id`'s incoming connections now; what they hold unread is never delivered."""
        for scope in self._incoming.get(peer_id, ()):
            scope.cancel()

    @property
    def connected(self) -> dict[int, bool]:
        return {peer: link.connected for peer, link in self._links.items()}

    def send(self, partition: int, msgs: Sequence[Message]) -> None:
        """Collect messages for their peers; they leave at the next `flush`."""
        links = self._links
        for m in msgs:
            link = links.get(m.to)
            if link is None:
                self.dropped += 1
                continue
            if m.context == COMMIT_ONLY and m.type == MsgType.APP and not m.entries:
                if not link.lazy:
                    self._lazy_dirty.append(link)
                link.lazy.append((partition, m))
                continue
            if not link.msgs:
                self._dirty.append(link)
            link.msgs.append((partition, m))

    @property
    def lazy_pending(self) -> bool:
        return any(link.lazy for link in self._lazy_dirty)

    def flush(self, lazy: bool = False) -> None:
        """Write each peer's collected messages as one frame (never blocks).

        Lazy messages go along with urgent ones to the same peer; with
        `lazy=True`, also on their own.
        """
        dirty, self._dirty = self._dirty, []
        if lazy:
            dirty.extend(link for link in self._lazy_dirty if not link.msgs)
            self._lazy_dirty = []
        if not dirty:
            return
        # One encoder per flush: the same new entries go to every follower
        # and are encoded once (it keeps them alive, so never longer).
        encoder = RaftBatchEncoder(self.cfg.node_id, max_frame=self.cfg.limits.max_peer_frame)
        for link in dirty:
            items, link.msgs = link.msgs, []
            if link.lazy:
                items.extend(link.lazy)
                link.lazy = []
            if not items:
                continue
            for chunk in _chunks(items):
                data = encoder.encode(chunk)
                if not link.write(data):
                    self.dropped += len(chunk)

    async def run(self, listeners: list[trio.SocketListener], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for peer_id in self._links:
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
        link = self._links[peer_id]
        backoff = 0.05
        rng = random.Random(self._rng.getrandbits(64))
        while not link.quarantined:
            try:
                raw = await trio.open_tcp_stream(host, port)
            except OSError:
                # Refused: nothing listens there, the process is gone.
                self._peer_down(peer_id)
                await self._backoff(link, backoff, rng)
                backoff = min(backoff * 2, 1.0)
                continue
            stream: trio.abc.Stream = raw
            if self.tls is not None:
                try:
                    stream = await self.tls.dial(raw, peer_id, peer.peer_addr)
                except PrkdbError:  # refused for good this time (logged): try again later
                    await self._backoff(link, 1.0, rng)
                    continue
            framed = FramedStream(stream, self.cfg.limits.max_peer_frame)
            connected = False
            try:
                with trio.fail_after(HELLO_TIMEOUT):
                    await framed.send_now(
                        Hello(PEER_PROTOCOL_VERSION, self.cfg.cluster_id, ROLE_PEER,
                              self.cfg.node_id, self.data_dir_id)
                    )
                    reply = from_wire(await framed.receive())
                if not isinstance(reply, HelloOk):
                    # Once a minute per peer: a refusal repeats at every reconnect.
                    suppressed = self._log_limiter.allow("peer_refused_hello", str(peer_id))
                    if suppressed is not None:
                        self.log.warning("peer_refused_hello", peer=peer_id,
                                         reply=repr(reply)[:300], suppressed=suppressed)
                    await framed.aclose()
                    await trio.sleep(1.0)
                    continue
                connected = True
                self.log.info("peer_connected", peer=peer_id, addr=peer.peer_addr)
                backoff = 0.05
                await link.run_writer(stream)
            except (StreamClosed, OSError, trio.TooSlowError, trio.BrokenResourceError,
                    PrkdbError) as e:
                if connected:
                    why = str(e) or type(e).__name__
                    self.log.info("peer_disconnected", peer=peer_id, error=why)
                    self._peer_down(peer_id)
            finally:
                link.fd = -1  # before the close: the fd number may be reused at once
                link.connected = False
                link.tls = None
                link.tls_backlog = False
                await framed.aclose()
            await self._backoff(link, backoff, rng)

    async def _backoff(self, link: _PeerLink, delay: float, rng: random.Random) -> None:
        # Messages queued for an unreachable peer are stale by the time it is
        # back (Raft will resend what matters): drop them instead of flooding.
        link.out.clear()
        await trio.sleep(delay * (0.5 + rng.random()))

    # -- incoming -------------------------------------------------------------
    async def _note_dir_id(self, peer_id: int, dir_id: str) -> None:
        """Remember `peer_id`'s data dir id; if it changed, fence it first (module doc)."""
        before = self.peer_dir_ids.get(peer_id)
        if dir_id:
            self.peer_dir_ids[peer_id] = dir_id
        if not before or not dir_id or before == dir_id:
            return
        self.log.warning("peer_data_dir_changed", peer=peer_id, before=before, now=dir_id,
                         detail="its disk was replaced: forgetting what it acknowledged "
                                "before, as for a rebuilding node")
        if self.on_dir_changed is not None:
            await self.on_dir_changed(peer_id)

    async def _serve(self, listeners: list[trio.SocketListener]) -> None:
        handler = self._handle_incoming
        if self.tls is not None:
            await trio.serve_listeners(self.tls.wrap(handler, "peer"), listeners)
        else:
            await trio.serve_listeners(handler, listeners)

    async def _handle_incoming(self, stream: trio.abc.Stream) -> None:
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
                host = framed.remote_address.rsplit(":", 1)[0]
                suppressed = self._log_limiter.allow("rejected_peer", host)
                if suppressed is not None:
                    self.log.warning("rejected_peer", node=hello.node_id, reason=err.message,
                                     remote=framed.remote_address, suppressed=suppressed)
                await framed.send_now(err)
                return
            if self.tls is not None:
                mismatch = self.tls.member_refusal(stream, hello.node_id, framed.remote_address)
                if mismatch is not None:
                    await framed.send_now(Error(0, 4, f"refused: this connection {mismatch}"))
                    return
            peer_id = hello.node_id
            if peer_id in self.quarantined:
                await framed.send_now(Error(0, 4, f"node {peer_id} is quarantined here: "
                                                  f"{self.quarantined[peer_id]}"))
                return
            await self._note_dir_id(peer_id, hello.data_dir_id)
            framed.decoder.max_frame = framed.max_frame = self.cfg.limits.max_peer_frame
            await framed.send_now(HelloOk(self.cfg.node_id, self.cfg.cluster_id))
            partitions = self.cfg.partitions
            readers = self._incoming.setdefault(peer_id, set())
            with trio.CancelScope() as scope:
                readers.add(scope)
                try:
                    while True:
                        batch = from_wire(await framed.receive())
                        if not isinstance(batch, RaftBatch) or batch.from_node != peer_id:
                            raise RemoteProtocolError(
                                "peers may only send RaftBatch frames of their own")
                        for partition, msg in batch.items:
                            if 0 <= partition < partitions:
                                self.deliver(partition, msg)
                finally:
                    readers.discard(scope)
            self.log.info("peer_fenced", peer=peer_id)
        except RemoteProtocolError as e:
            if not peer_id and e.details.get("http") == "request":
                self.log.warning("http_on_peer_port", remote=framed.remote_address,
                                 reason="an HTTP request reached the PrkDB peer port; "
                                 "answered 400 and closed")
                await framed.refuse_http("peer")
                return
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


class _PeerLink:
    """The outgoing side of one peer: messages of this pass, bytes the socket has not taken."""

    def __init__(self) -> None:
        self.msgs: list[tuple[int, Message]] = []
        self.lazy: list[tuple[int, Message]] = []  # commit-index news: may wait a little
        self.out = bytearray()  # encoded frames waiting for the sender task
        self.fd = -1  # the bare socket, while the sender task holds it open (-1 with TLS)
        self.connected = False  # the sender task holds a handshaken connection
        self.tls: TlsStream | None = None  # the TLS stream, while connected over TLS
        self.tls_backlog = False  # write_nowait left ciphertext for the sender task
        self.quarantined = False  # the peer's config disagrees: the sender task stops
        self.writing = False  # the sender task is inside send_all: append, never write
        self._wake = trio.Event()

    def write(self, data: bytes) -> bool:
        """Write `data` now if the socket is idle, else queue it; False if dropped."""
        if self.tls is not None and not (self.writing or self.out):
            try:
                self.tls_backlog = self.tls.write_nowait(data) or self.tls_backlog
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Broken: the sender task's write fails too, and it reconnects.
                self.out += data
                self._wake.set()
                return True
            if self.tls_backlog:
                self._wake.set()
            return True
        if self.fd < 0 or self.writing or self.out:
            if len(self.out) + len(data) > MAX_UNSENT_BYTES:
                return False
            self.out += data
            self._wake.set()
            return True
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            n = 0  # broken: the sender task's write will see it and reconnect
        if n < len(data):
            self.out += data[n:]
            self._wake.set()
        return True

    async def run_writer(self, stream: trio.abc.Stream) -> None:
        """Write what `write` could not, until the connection fails (raises)."""
        self.fd = raw_fd(stream)  # -1 on TLS: never a write around it
        self.tls = stream if isinstance(stream, TlsStream) else None
        self.connected = True
        while True:
            while self.out or self.tls_backlog:
                data = bytes(self.out)  # b"" on TLS: writes write_nowait's backlog
                self.out.clear()
                self.tls_backlog = False
                self.writing = True
                try:
                    await stream.send_all(data)
                finally:
                    self.writing = False
            await self._wake.wait()
            self._wake = trio.Event()
            if self.quarantined:
                return  # the sender task closes the connection and stops


def _chunks(items: list[tuple[int, Message]]) -> list[list[tuple[int, Message]]]:
    """Split one pass's messages into frames of bounded size (snapshots may exceed it)."""
    out: list[list[tuple[int, Message]]] = []
    chunk: list[tuple[int, Message]] = []
    size = 0
    for item in items:
        if chunk and (len(chunk) >= MAX_ITEMS_PER_BATCH or size >= MAX_BATCH_BYTES):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += _approx_size(item[1])
    out.append(chunk)
    return out


def _approx_size(m: Message) -> int:
    n = 64
    for e in m.entries:
        n += len(e.data) + 16
    if m.snapshot is not None:
        n += len(m.snapshot.data)
    return n
