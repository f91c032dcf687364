"""Who is to blame when the wire protocol breaks (h11's split).

`RemoteProtocolError`: the bytes or messages we *received* are wrong. The
right reaction is to send an `Error` frame with ``exc.code`` (if the
connection is still writable) and close the connection; never crash the node.

`LocalProtocolError`: *we* tried to send something the protocol forbids
(an oversize frame, a local-only Raft message, an object CBOR cannot encode).
That is a bug or a caller mistake on this side, never "bad input".

Anything else escaping the codec is a bug in the codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prkdb.errors import ErrorCode, ProtocolError

__all__ = ["LocalProtocolError", "RemoteProtocolError"]


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message that break the protocol.

    Args:
        message: what was wrong, naming the field (``"Put.key: expected bytes, got str"``).
        code: the `ErrorCode` to put in the Error frame sent back
            (TOO_LARGE for limits, BAD_REQUEST for everything else).
        request_id: the id of the request the bad message carried, when it
            could be read (the framing is intact, only a field is wrong), so
            the server can answer that request instead of the connection;
            0 when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = ErrorCode.BAD_REQUEST,
        details: Mapping[str, Any] | None = None,
        request_id: int = 0,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.request_id = request_id


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (our mistake)."""

    def __init__(
        self,
        message: str,
        *,
        code: int = ErrorCode.INTERNAL,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
