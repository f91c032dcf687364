"""A blocking connection to one node, and a small pool of them: the SyncClient's I/O.

Theory of operation
-------------------
No event loop and no thread of our own: the calling thread writes the
request frame and reads until the answer with its request id arrives, with
the socket's timeout set to what is left of the attempt. One request at a
time per connection, so a thread takes a connection from the `Pool` for one
attempt and gives it back; threads that overlap get connections of their
own (the pool keeps up to `POOL_IDLE` idle ones per node).

A connection whose attempt expired, broke, or was interrupted (an exception
anywhere mid-request, KeyboardInterrupt included) is closed, never pooled:
its late answer would otherwise meet the next request.

Cost: a request is one ``send`` and (usually) one ``recv`` system call. The
deadline is kept by the kernel (``SO_RCVTIMEO``, re-set only when the time
left differs from it by more than `_TIMEOUT_SLACK` or a factor of two),
not by Python's socket timeouts, which poll before every send and receive.

TLS: the socket is wrapped (`ssl.SSLSocket`) right after the dial, with the
handshake bounded by the attempt's deadline. A kernel timeout inside a TLS
read shows as `ssl.SSLWantReadError` (handled as the plain socket's
EAGAIN), and a watch's reads drain what TLS decrypted beyond one record
(``pending()``), which the selector cannot see.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any, Final, final

from prkdb.client.attempt import (
    AttemptExpired,
    AttemptState,
    ConnectFailed,
    ConnectionLost,
    HelloCheck,
    request_frame,
)
from prkdb.client.routing import split_address
from prkdb.security.client_tls import ClientTls, tls_failure
from prkdb.wire import (
    CLOSED,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    RemoteProtocolError,
    from_wire,
    next_message,
)
from prkdb.wire.messages import Error, WireMessage

__all__ = ["POOL_IDLE", "BlockingConnection", "Pool"]

POOL_IDLE: Final = 8
"""Idle connections kept per node; more concurrent threads dial extra ones, closed after use."""

_RECEIVE_SIZE: Final = 64 * 1024
_SEND_TIMEOUT: Final = 2.0  # seconds a send may block (a full buffer to a frozen node)
_TIMEOUT_SLACK: Final = 0.005  # seconds a receive may wait past the attempt's deadline


def _timeval(seconds: float) -> bytes:
    """``seconds`` as the SO_RCVTIMEO / SO_SNDTIMEO option value of this platform."""
    if os.name == "nt":
        return struct.pack("I", max(1, int(seconds * 1000)))
    whole = int(seconds)
    return struct.pack("ll", whole, max(1 if whole == 0 else 0, int((seconds - whole) * 1e6)))
Clock = Callable[[], float]


@final
class BlockingConnection:
    """One handshaken socket to one node; used by one thread at a time."""

    __slots__ = ("_decoder", "_next_request_id", "_rcvtimeo", "_sock", "address", "broken",
                 "node_id")

    def __init__(self, address: str, sock: socket.socket, decoder: FrameDecoder,
                 node_id: int) -> None:
        self.address = address
        self.node_id = node_id
        self.broken = False
        self._sock = sock
        self._decoder = decoder
        self._next_request_id = 1
        # Blocking mode from now on; the kernel keeps the timeouts.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(_SEND_TIMEOUT))
        self._rcvtimeo = 0.0  # the SO_RCVTIMEO set (0: none yet)

    @classmethod
    def open(cls, address: str, hello: bytes, check: HelloCheck, deadline: float,
             clock: Clock, tls: ClientTls | None = None) -> BlockingConnection:
        """Dial `address` (with `tls`), send `hello`, let `check` judge the answer; by `deadline`.

        Raises:
            AttemptExpired: the deadline passed first.
            ConnectFailed: unreachable, refused, or closed during the hello.
            TlsError: the TLS handshake was refused for good.
            WrongCluster / ProtocolError: the node refused us for good.
        """
        host, port = split_address(address)
        left = deadline - clock()
        if left <= 0:
            raise AttemptExpired()
        try:
            sock = socket.create_connection((host, port), timeout=left)
        except TimeoutError:
            raise AttemptExpired() from None
        except OSError as exc:
            raise ConnectFailed(address, exc) from exc
        decoder = FrameDecoder()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(max(deadline - clock(), 1e-6))
            if tls is not None:  # the handshake runs here, within the deadline
                sock = tls.context.wrap_socket(sock, server_hostname=tls.server_name(host))
            sock.sendall(hello)
            item = _receive_one(sock, decoder, deadline, clock)
            if item is CLOSED:
                raise ConnectFailed(address, "closed during the hello")
            node_id = check(address, from_wire(item))
        except TimeoutError:
            sock.close()
            raise AttemptExpired() from None
        except OSError as exc:
            sock.close()
            refused = tls_failure(address, exc)  # TLS errors are OSErrors
            if refused is not None:
                raise refused from None
            raise ConnectFailed(address, exc) from exc
        except RemoteProtocolError as exc:
            sock.close()
            raise RemoteProtocolError(f"{address}: {exc.message}") from None
        except BaseException:
            sock.close()
            raise
        return cls(address, sock, decoder, node_id)

    def request(self, build: Callable[[int], Any], state: AttemptState, deadline: float,
                clock: Clock) -> WireMessage:
        """Send one request and read its answer (an `Error` frame is returned, not raised).

        Raises:
            AttemptExpired: no answer before `deadline` (the connection is then broken).
            ConnectionLost: the connection broke.
            TooLarge: the request does not fit in a frame (nothing sent).
        """
        request_id = self._next_request_id
        self._next_request_id += 1
        frame = request_frame(build, request_id, DEFAULT_MAX_FRAME)
        if deadline <= clock():
            raise AttemptExpired()
        decoder = self._decoder
        ok = False
        try:
            state.sent = True
            self._sock.sendall(frame)
            while True:
                # Receive first: between requests nothing whole is buffered (an
                # answer is read up to its own frame, and a connection whose
                # attempt failed is closed); what is, is read right after.
                decoder.receive_data(self._recv(deadline, clock))
                msg = next_message(decoder)
                while msg is not NEED_DATA:
                    if msg is CLOSED:
                        raise ConnectionLost(self.address, "closed by the server")
                    if msg.request_id == request_id:
                        ok = True
                        return msg  # type: ignore[no-any-return]
                    if isinstance(msg, Error) and msg.request_id == 0:
                        raise ConnectionLost(self.address, msg.message)
                    # else: an answer to nobody (cannot happen: expired connections are closed)
                    msg = next_message(decoder)
        except (TimeoutError, BlockingIOError):
            raise AttemptExpired() from None
        except OSError as exc:
            raise ConnectionLost(self.address, exc) from exc
        except RemoteProtocolError as exc:
            raise ConnectionLost(self.address, exc.message) from exc
        finally:
            if not ok:
                self.close()

    # --- a dedicated stream (a SyncClient watch: one connection per stream) ------------

    def send_stream(self, build: Callable[[int], Any]) -> int:
        """Send a stream request on this connection (which then serves only it); its id.

        Raises:
            ConnectionLost: the send failed (the connection is closed).
        """
        request_id = self._next_request_id
        self._next_request_id += 1
        self.send_frame(request_frame(build, request_id, DEFAULT_MAX_FRAME))
        return request_id

    def send_frame(self, frame: bytes) -> None:
        """Send one finished frame (a stream's cancel, say).

        Raises:
            ConnectionLost: the send failed (the connection is closed).
        """
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise ConnectionLost(self.address, exc) from exc

    def fileno(self) -> int:
        """The socket's file descriptor (for `selectors`)."""
        return self._sock.fileno()

    def read_available(self) -> list[WireMessage]:
        """The frames of one receive (call once the socket is readable: it does not wait).

        Raises:
            ConnectionLost: EOF, a reset or garbage (the connection is closed).
        """
        try:
            self._sock.setblocking(False)
            try:
                data = self._sock.recv(_RECEIVE_SIZE)
                sock = self._sock
                while isinstance(sock, ssl.SSLSocket) and data and sock.pending():
                    data += sock.recv(_RECEIVE_SIZE)  # decrypted already: no wait
            except (BlockingIOError, ssl.SSLWantReadError):
                return []
            finally:
                self._sock.setblocking(True)
            self._decoder.receive_data(data)
            out: list[WireMessage] = []
            while (msg := next_message(self._decoder)) is not NEED_DATA:
                if msg is CLOSED:
                    raise ConnectionLost(self.address, "closed by the server")
                if isinstance(msg, Error) and msg.request_id == 0:
                    raise ConnectionLost(self.address, msg.message)
                out.append(msg)
            return out
        except OSError as exc:
            self.close()
            raise ConnectionLost(self.address, exc) from exc
        except RemoteProtocolError as exc:
            self.close()
            raise ConnectionLost(self.address, exc.message) from exc
        except ConnectionLost:
            self.close()
            raise

    def _recv(self, deadline: float, clock: Clock) -> bytes:
        """Some bytes (b"" at EOF) before `deadline`, give or take `_TIMEOUT_SLACK`.

        Raises:
            TimeoutError: the deadline passed.
        """
        sock = self._sock
        while True:
            left = deadline - clock()
            if left <= 0:
                raise TimeoutError
            current = self._rcvtimeo
            if not (left * 0.5 <= current <= left + _TIMEOUT_SLACK):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(left))
                self._rcvtimeo = current = left
            try:
                return sock.recv(_RECEIVE_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue  # SO_RCVTIMEO ran out (inside TLS: WantRead); maybe early: look again

    def close(self) -> None:
        self.broken = True
        self._sock.close()


def _receive_one(sock: socket.socket, decoder: FrameDecoder, deadline: float,
                 clock: Clock) -> Any:
    """The next decoded frame item, or CLOSED at EOF."""
    item = decoder.next_frame()
    while item is NEED_DATA:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        data = sock.recv(_RECEIVE_SIZE)
        if not data:
            return CLOSED
        decoder.receive_data(data)
        item = decoder.next_frame()
    return item


@final
class Pool:
    """Idle `BlockingConnection`s per address, shared by threads."""

    __slots__ = ("_closed", "_idle", "_lock")

    def __init__(self) -> None:
        self._idle: dict[str, list[BlockingConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, address: str) -> BlockingConnection | None:
        """An idle connection to `address`, or None (dial one)."""
        with self._lock:
            idle = self._idle.get(address)
            return idle.pop() if idle else None

    def give(self, conn: BlockingConnection) -> None:
        """Return a healthy connection after its request (closed if the pool is full)."""
        with self._lock:
            if not self._closed and not conn.broken:
                idle = self._idle.setdefault(conn.address, [])
                if len(idle) < POOL_IDLE:
                    idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
