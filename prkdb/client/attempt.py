"""What one attempt is and how it can fail: shared by the core and every connection.

Sans-IO: nothing here touches a socket, an event loop or a clock, so the
trio, asyncio and blocking connections (prkdb.client.connection, .aio_conn,
.blocking) all report failures the same way and the retry loop in
prkdb.client.core treats them alike.

The handshake is here too: `hello_frame` is what a client sends first, and
`accept_hello` judges the node's answer. A client that was given no cluster
id sends an empty one ("any cluster, tell me yours"); the node answers with
its id in HelloOk, and the core pins the first id it hears.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from prkdb.errors import ErrorCode, PrkdbError, TlsError, TooLarge, error_from_code
from prkdb.wire import (
    PROTOCOL_VERSION,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
    encode_message,
)
from prkdb.wire.messages import ROLE_CLIENT, Error, Hello, HelloOk

__all__ = [
    "AttemptExpired",
    "AttemptState",
    "ConnectFailed",
    "ConnectionLost",
    "HelloCheck",
    "error_from_frame",
    "hello_frame",
    "hello_node_id",
    "request_frame",
]


HelloCheck = Callable[[str, Any], int]
"""``(address, answer) -> node id``: judges the node's answer to our Hello, raising if refused."""


class ConnectFailed(Exception):
    """Could not establish a connection (nothing was sent): always safe to retry."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        if isinstance(cause, BaseException) and not str(cause):  # trio's Broken...: see why
            inner = cause.__cause__ or cause.__context__
            cause = str(inner) if inner is not None and str(inner) else type(cause).__name__
        super().__init__(f"{address}: cannot connect: {cause}")
        self.address = address


class ConnectionLost(Exception):
    """An established connection broke; in-flight requests got no answer."""

    def __init__(self, address: str, cause: BaseException | str) -> None:
        text: str = cause.reason if isinstance(cause, ConnectionLost) else str(cause)
        reason = text or type(cause).__name__
        super().__init__(f"{address}: connection lost: {reason}")
        self.address = address
        self.reason: str = reason


class AttemptExpired(Exception):
    """The attempt's deadline passed before an answer came (see `AttemptState.sent`)."""


class AttemptState:
    """What one attempt did, readable after it was cancelled or failed.

    While the request waits, it is also the connection's handle on it (the
    task or future to wake and its deadline), which saves one object per
    request; and the core's `prkdb.client.core.Send` action is one, which
    saves another.
    """

    __slots__ = ("abandoned", "deadline", "sent", "task")

    def __init__(self, deadline: float = math.inf) -> None:
        #: True once the request's bytes were handed to the stream: from then
        #: on the server may have executed it.
        self.sent = False
        #: True once the caller stopped waiting without an answer; if it was
        #: not sent by then, it never will be (``sent`` stays False).
        self.abandoned = False
        #: Whatever the connection wakes (a trio task, an asyncio future).
        self.task: Any = None
        #: When to stop waiting, in the front end's clock.
        self.deadline = deadline


def error_from_frame(err: Error) -> PrkdbError:
    """`error_from_code` for an Error frame, robust to details named like its parameters."""
    details = {k: v for k, v in err.details.items() if k not in ("code", "message")}
    exc = error_from_code(err.code, err.message, **details)
    exc.details = dict(err.details)
    return exc


def hello_frame(cluster_id: str | None) -> bytes:
    """The first frame of a client connection; None asks the node to name its cluster."""
    return encode_message(Hello(PROTOCOL_VERSION, cluster_id or "", ROLE_CLIENT, 0))


def hello_node_id(address: str, msg: object) -> tuple[int, str]:
    """``(node_id, cluster_id)`` from the node's answer to `hello_frame`.

    Raises:
        ConnectFailed: the node is busy or starting (UNAVAILABLE, TIMEOUT): try later.
        WrongCluster / ProtocolError / ...: the node refused us for good.
        RemoteProtocolError: the answer is not a HelloOk.
    """
    if isinstance(msg, Error):
        if msg.details.get("tls") == "required":  # plaintext to a TLS port
            raise TlsError(f"{address}: {msg.message}")
        exc = error_from_frame(msg)
        if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT):
            raise ConnectFailed(address, exc.message)
        exc.message = f"{address}: {exc.message}"
        exc.args = (exc.message,)
        raise exc
    if not isinstance(msg, HelloOk):
        raise RemoteProtocolError(f"expected HelloOk, got {type(msg).__name__}")
    return msg.node_id, msg.cluster_id



def request_frame(build: Callable[[int], Any], request_id: int, max_frame: int) -> bytes:
    """The frame of one request: `build` gives a finished frame or a wire array to frame.

    Raises:
        TooLarge: over `max_frame` (nothing was sent).
    """
    try:
        built = build(request_id)
        return built if type(built) is bytes else encode_frame(built, max_frame=max_frame)
    except LocalProtocolError as exc:
        if exc.code == ErrorCode.TOO_LARGE:
            raise TooLarge(exc.message, details=exc.details) from None
        raise
