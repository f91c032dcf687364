"""`TlsStream`: TLS over a trio socket stream, at the cost of the plain socket.

Why not `trio.SSLStream`: it is general (any transport, renegotiation,
concurrent send and receive guarded by locks and retry loops), and on a
node that general machinery is what TLS costs: 20-35 µs of Python per send
or receive, against about 2 µs for OpenSSL's AES-GCM of a small frame
(same-process echo: 111-124 µs CPU per round trip with trio.SSLStream, 51-62
with this, 52-55 plaintext). PrkDB needs less: one `ssl.SSLObject` between
two memory BIOs over a socket it owns, read and written with `os.read` /
`os.write` on the fd after `trio.lowlevel.wait_readable` / `wait_writable`,
as `prkdb.netio.SocketReader` does for plaintext.

Invariants:
- Ciphertext leaves in the order OpenSSL made it. Every byte taken from the
  outgoing BIO goes to ``_pending`` first, and only the holder of ``_lock``
  writes ``_pending`` to the fd, until it is empty (so a task that finds
  the lock held waits for it and its bytes are written by then).
- A receive that makes OpenSSL write (a TLS 1.3 KeyUpdate answer, a
  handshake message) drains it before it returns.
- Cancelled mid-write, the unwritten ciphertext stays in ``_pending`` and
  the next write sends it: the stream stays usable (trio.SSLStream breaks).
- TLS renegotiation is off (the contexts set OP_NO_RENEGOTIATION): a read
  never has to wait for a write of the other direction.

Errors are trio's: `trio.BrokenResourceError` (from the `ssl.SSLError` or
`OSError`) for a failed connection, `trio.ClosedResourceError` after
`aclose`. A failed handshake first sends OpenSSL's alert, so the other end
learns why ("unknown ca", "certificate required") instead of seeing an EOF.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Any

import trio

__all__ = ["TlsStream"]

_READ_SIZE = 64 * 1024  # not more: see prkdb.server.framed.READ_SIZE
# Most plaintext one TLS record holds. SSLObject.read(n) allocates n bytes
# first: asking for 256 KiB cost 18 µs more per small frame than 16 KiB.
_RECORD = 16 * 1024


class TlsStream(trio.abc.Stream):
    """One TLS connection over a connected `trio.SocketStream` (module doc)."""

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext, *,
                 server_side: bool, server_hostname: str | None = None) -> None:
        self.transport_stream = transport
        self._fd = transport.socket.fileno()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self._pending = bytearray()  # ciphertext taken from _out, not yet written
        self._lock = trio.Lock()  # held by the task writing _pending to the fd
        self._closed = False
        self._handshaken = False

    # -- what the connection says ---------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> Any:
        """As `ssl.SSLSocket.getpeercert` (a verified certificate's fields, or {})."""
        return self._obj.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    # -- handshake ------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the TLS handshake (bound it with a timeout: it waits for the peer).

        Raises:
            trio.BrokenResourceError: refused (after sending the alert) or cut off.
        """
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._drain()
                await self._feed()
                continue
            except ssl.SSLError as e:
                self._send_alert()
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
            break
        await self._drain()
        self._handshaken = True

    def _send_alert(self) -> None:
        """Best effort: the alert OpenSSL wrote for a failure, without waiting."""
        self._take_out()
        if self._pending and not self._lock.locked() and self._fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._fd, self._pending)
        self._pending.clear()

    # -- reading --------------------------------------------------------------------

    async def _feed(self) -> None:
        """Wait for ciphertext and give it to OpenSSL (EOF: tell OpenSSL so)."""
        fd = self._open_fd()
        while True:
            await trio.lowlevel.wait_readable(fd)
            fd = self._open_fd()
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue  # a spurious wake-up
            except OSError as e:
                raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
            break
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` bytes of plaintext; b"" after the peer's close_notify.

        Raises:
            trio.BrokenResourceError: the connection failed or was cut without close_notify.
            trio.ClosedResourceError: `aclose` was called.
        """
        n = max_bytes or _READ_SIZE
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._open_fd()
            if not (self._in.pending or self._in.eof or self._obj.pending()):
                # Nothing received and not read: wait for bytes (without a
                # read that fails with SSLWantReadError first, the usual case).
                if self._out.pending:
                    await self._drain()
                await self._feed()
            try:
                data = self._obj.read(min(n, _RECORD))
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._drain()
                await self._feed()
                continue
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
            # Every record already received, up to n: like one os.read of a
            # plain socket, so the next call waits (and yields) instead of
            # returning record after record without a schedule point.
            if len(data) == _RECORD and n > _RECORD:
                chunks, size = [data], len(data)
                while size < n:
                    try:
                        more = self._obj.read(min(n - size, _RECORD))
                    except ssl.SSLError:  # want-read, close_notify, failure: next call
                        break
                    if not more:
                        break
                    chunks.append(more)
                    size += len(more)
                data = b"".join(chunks)
            if self._out.pending:  # e.g. a KeyUpdate to answer
                await self._drain()
            return data

    # -- writing --------------------------------------------------------------------

    def _take_out(self) -> None:
        if self._out.pending:
            self._pending += self._out.read()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt `data` and write it (returns once the kernel took every byte).

        Raises:
            trio.BrokenResourceError: the connection failed.
            trio.ClosedResourceError: `aclose` was called.
        """
        self._open_fd()
        if data:
            try:
                self._obj.write(data)
            except ssl.SSLError as e:
                raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
        if self._write_now():  # the socket took it all: no lock, one schedule point
            await trio.lowlevel.checkpoint()
            return
        await self._drain()

    def write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt `data` and write what the socket takes now, without waiting.

        The fast path of `FramedStream.flush` and the peer link (no task
        switch per write). Returns True if ciphertext is left over: the
        caller must then have some task ``await send_all(b"")`` (which
        writes it, in order before anything sent later).

        Raises:
            trio.BrokenResourceError: the connection failed.
            trio.ClosedResourceError: `aclose` was called.
        """
        self._open_fd()
        try:
            self._obj.write(data)
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
        return not self._write_now()

    def _write_now(self) -> bool:
        """Write the ciphertext made so far if no task is writing; True if none is left.

        Raises:
            trio.BrokenResourceError: the connection failed.
        """
        self._take_out()
        if self._lock.locked():
            return False  # a task is writing: it takes ours along, or leaves it to the caller
        if not self._pending:
            return True
        try:
            n = os.write(self._fd, self._pending)
        except BlockingIOError:
            n = 0
        except OSError as e:
            raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
        del self._pending[:n]
        return not self._pending

    @property
    def backlog_bytes(self) -> int:
        """Ciphertext made but not yet taken by the socket."""
        return len(self._pending) + self._out.pending

    async def _drain(self) -> None:
        """Write every ciphertext byte OpenSSL made so far, in order (module doc)."""
        self._take_out()
        if not self._pending and not self._lock.locked():
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            while True:
                self._take_out()
                if not self._pending:
                    return
                fd = self._open_fd()
                try:
                    n = os.write(fd, self._pending)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    raise trio.BrokenResourceError(f"TLS connection failed: {e}") from e
                del self._pending[:n]
                if self._pending:
                    await trio.lowlevel.wait_writable(fd)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._open_fd())

    # -- closing --------------------------------------------------------------------

    def _open_fd(self) -> int:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        return self._fd

    async def aclose(self) -> None:
        """Close now: a close_notify if the socket takes it at once, then the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._handshaken and not self._lock.locked():
            with contextlib.suppress(ssl.SSLError, OSError):
                self._obj.unwrap()
            with contextlib.suppress(ssl.SSLError, OSError):
                self._take_out()
                os.write(self._fd, self._pending)
        self._closed = True
        self._fd = -1
        self._pending.clear()
        await self.transport_stream.aclose()
