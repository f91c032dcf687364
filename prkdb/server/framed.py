"""`FramedStream`: one owner of a trio stream and its frame decoder (STYLE §8.11).

Reads go through a sans-IO `FrameDecoder`. Writes are queued as encoded
frames and leave in one write per flush, so many small responses share a
syscall. With a `ReplyOutbox`, the node's RaftLoop flushes every connection
it answered at the end of its pass, straight to the socket when nothing is
waiting for it (no task switch per reply); the reading task flushes its own
replies before it waits for more input. What the socket does not take at
once, and everything when there is no outbox, goes through the writer task.
A send that fails marks the stream broken and closes it.
Reads go through `prkdb.netio.SocketReader` (no failed `recv` per message).
The direct writes and reads need a bare socket (`prkdb.netio.raw_fd`), so
they never go around TLS. On a `TlsStream` the direct write is its own:
`TlsStream.write_nowait` encrypts and writes what the socket takes, and the
writer task writes the rest (``send_all(b"")``).
"""

from __future__ import annotations

import contextlib
import os

import trio

from prkdb.netio import SocketReader, raw_fd
from prkdb.security.stream import TlsStream
from prkdb.security.tls import peer_common_name
from prkdb.wire import CLOSED, NEED_DATA, FrameDecoder, encode_message
from prkdb.wire.messages import WireMessage

# Bytes asked of one read. Not more: Python allocates the whole size first,
# and above glibc's mmap threshold (128 KiB) that is an mmap and munmap per
# read: os.read(fd, 256 KiB) of a 150-byte frame took 19.5 µs, of 64 KiB 4.0.
READ_SIZE = 64 * 1024
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # unsent bytes per connection before we drop


def http_refusal(port: str) -> bytes:
    """A minimal ``HTTP/1.1 400`` for an HTTP client that reached a PrkDB `port` ("client", "peer").

    Sent instead of an Error frame when the first bytes were an HTTP request
    (curl, a browser, a health checker pointed at the wrong port): they can
    show it, and they could not read a frame.
    """
    body = (f"This is a PrkDB {port} port: it speaks the PrkDB protocol, not HTTP. "
            "Use prkctl or a PrkDB client library.\n").encode()
    head = ("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


class ReplyOutbox:
    """The connections with replies queued since the last `flush` (see module doc)."""

    def __init__(self) -> None:
        self.dirty: list[FramedStream] = []

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for stream in dirty:
            stream.flush()


class StreamClosed(Exception):
    """The peer closed the connection (cleanly or not)."""


class FramedStream:
    def __init__(self, stream: trio.abc.Stream, max_frame: int,
                 outbox: ReplyOutbox | None = None) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame=max_frame)
        self.max_frame = max_frame
        self.broken = False
        self._outbox = outbox
        self._pending: list[bytes] = []  # frames queued since the last flush
        self._out = bytearray()  # bytes the socket has not taken: the writer's
        self._writing = False  # the writer task is inside send_all: queue, never write
        self._closing = False
        #: Frames `send_nowait` could not queue (closed, or MAX_QUEUED_BYTES behind).
        self.dropped = 0
        self._wake = trio.Event()
        self._writer_done = trio.Event()
        self._fd = raw_fd(stream)  # -1 (no direct writes) for TLS and memory streams
        self._tls = stream if isinstance(stream, TlsStream) else None  # its own direct writes
        self._tls_backlog = False  # write_nowait left ciphertext for the writer task
        self._reader = SocketReader(stream)

    @property
    def closed(self) -> bool:
        """Broken, or closing: nothing more will be sent."""
        return self.broken or self._closing

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued here that the socket has not taken yet (watches pace on it).

        Not counted: a chunk the writer task is inside ``send_all`` with (at
        most what was queued when it started).
        """
        tls = self._tls.backlog_bytes if self._tls is not None else 0
        return len(self._out) + sum(map(len, self._pending)) + tls

    @property
    def peer_common_name(self) -> str | None:
        """The subject CN of the other end's verified TLS certificate; None without one.

        With ``[tls] client_cert_auth`` and auth on, this is the client's user.
        """
        return peer_common_name(self.stream)

    @property
    def remote_address(self) -> str:
        """host:port of the other end, for logs ("?" if the socket cannot tell)."""
        stream = getattr(self.stream, "transport_stream", self.stream)  # under TLS
        sock = getattr(stream, "socket", None)
        try:
            # sock may be None (a memory stream in tests): the AttributeError is caught.
            host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
        except (AttributeError, OSError, TypeError, ValueError):
            return "?"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def refuse_http(self, port: str) -> None:
        """Answer an HTTP request with `http_refusal` (best effort, at most 1 s)."""
        with trio.move_on_after(1), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.send_all(http_refusal(port))

    async def receive(self) -> object:
        """The next decoded CBOR item; raises StreamClosed at EOF or on a reset.

        Raises `RemoteProtocolError` for bad bytes (after which the decoder is dead).
        """
        while True:
            item = self.decoder.next_frame()
            if item is CLOSED:
                raise StreamClosed("peer closed the connection")
            if item is not NEED_DATA:
                return item
            if self._pending:
                self.flush()  # our replies leave before we wait for more input
            try:
                data = await self._reader.read(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise StreamClosed(str(e)) from None
            self.decoder.receive_data(data)

    def send_nowait(self, msg: WireMessage) -> bool:
        """Queue `msg` for the writer; False (dropped) if the queue is full or closed."""
        return self.send_bytes_nowait(encode_message(msg, max_frame=self.max_frame))

    def send_bytes_nowait(self, data: bytes) -> bool:
        """Queue one encoded frame; False (dropped) if closed or too much is queued."""
        if self.broken or self._closing or len(self._out) + len(data) > MAX_QUEUED_BYTES:
            self.dropped += 1
            return False
        if not self._pending:
            if self._outbox is not None:
                self._outbox.dirty.append(self)
            else:
                self._wake.set()
        self._pending.append(data)
        return True

    def flush(self) -> None:
        """Write the queued frames now if the socket is idle; else hand them to the writer."""
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if self._tls is not None and not (self._writing or self._out or self.broken):
            try:
                self._tls_backlog = self._tls.write_nowait(data) or self._tls_backlog
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._out += data  # the writer's send_all fails too and ends the stream
                self._wake.set()
                return
            if self._tls_backlog:
                self._wake.set()
            return
        if self._fd < 0 or self._writing or self._out or self.broken:
            self._out += data
            self._wake.set()
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            n = 0  # broken: the writer's send_all sees it and ends the stream
        if n < len(data):
            self._out += data[n:]
            self._wake.set()

    async def send_now(self, msg: WireMessage) -> None:
        """Send directly (used before the writer runs, e.g. for the hello)."""
        await self.stream.send_all(encode_message(msg, max_frame=self.max_frame))

    async def run_writer(self) -> None:
        """Write what `flush` left (or everything, without an outbox) until closed."""
        try:
            while True:
                while self._pending or self._out or self._tls_backlog:
                    if self._pending:
                        self._out += b"".join(self._pending)
                        self._pending.clear()
                    data = bytes(self._out)  # b"" on TLS: writes write_nowait's backlog
                    self._out.clear()
                    self._tls_backlog = False
                    self._writing = True
                    try:
                        await self.stream.send_all(data)
                    finally:
                        self._writing = False
                if self._closing:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.broken = True
        finally:
            self.broken = True
            self._writer_done.set()

    async def aclose(self, flush_timeout: float = 0.0) -> None:
        """Close; with `flush_timeout`, first let a running writer send what is queued."""
        self._closing = True
        self._wake.set()
        if flush_timeout and not self.broken:
            with trio.move_on_after(flush_timeout) as cs:
                cs.shield = True
                await self._writer_done.wait()
        self.broken = True
        self._fd = -1  # before the close: the fd number may be reused at once
        self._reader.detach()
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await self.stream.aclose()
