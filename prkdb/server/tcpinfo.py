"""How much of what we sent a TCP peer has acknowledged (Linux ``TCP_INFO``, ``SIOCOUTQ``).

A watch whose client stopped reading is seen by the acknowledgments that
stop coming, not by buffers filling: the kernel autotunes a loopback or LAN
send buffer up to ``tcp_wmem``'s maximum (4 MiB), which at a watch's event
rate takes tens of seconds to fill (prkdb/server/watch.py, `STALLED_S`).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Final

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 at byte 120 (Linux >= 4.2).
_BYTES_ACKED: Final = struct.Struct("=Q")
_BYTES_ACKED_AT: Final = 120
_INFO_SIZE: Final = 256
_INT: Final = struct.Struct("=i")


def send_progress(sock: socket.socket) -> tuple[int, int] | None:
    """``(bytes acknowledged so far, bytes in the send queue)``, or None if unknown.

    The first only grows, and only when the peer takes data; the second is
    what the kernel holds for the peer (not yet sent, or sent and not
    acknowledged). None on a closed socket or a kernel without the fields.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _INFO_SIZE)
        queued = _INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]
    except (OSError, ValueError, AttributeError):
        return None
    if len(info) < _BYTES_ACKED_AT + 8:
        return None
    return _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0], queued
