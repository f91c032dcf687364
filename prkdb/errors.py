"""Error codes on the wire and the exceptions the SDK raises.

Theory of operation
-------------------
Server and client share one vocabulary of failures. On the wire a failure is
an `Error` frame carrying an `ErrorCode` (a small int), a human message and a
`details` map (string keys). On the client side `error_from_code` turns that
triple back into one exception class per code, so callers write
``except NotLeader`` rather than comparing ints.

The codes split by what the caller should do next:

- retry elsewhere: NOT_LEADER (details name the leader if known);
- retry later: UNAVAILABLE, TIMEOUT (nothing happened; safe to retry);
- cannot know: OUTCOME_UNKNOWN (a write was proposed and may or may not be
  applied; retrying with the same client_id/seq is safe because the state
  machine de-duplicates, a fresh seq is not);
- do not retry: BAD_REQUEST, TOO_LARGE, WRONG_CLUSTER, BAD_VERSION, INTERNAL,
  LEASE_NOT_FOUND (the lease expired or was revoked: grant a new one),
  TOO_MANY_LEASES (the partition holds its limit of leases: revoke some first),
  COMPACTED (a watch's cursor is older than the history kept: relist, then
  watch from the list's revision);
- resume: WATCH_OVERFLOW (the server dropped a watch that fell behind; the
  SDK resumes it from its cursor, like any UNAVAILABLE).

There is deliberately no CAS_FAILED code. A compare-and-set whose comparison
does not hold is a normal, committed outcome (etcd's ``Txn.succeeded``): it
comes back as ``WriteOk(succeeded=False, ...)`` with the current version, so
the caller can decide. Errors are for requests that did not get an answer;
mixing the two would make every retry loop special-case one code.

Codes are append-only: never renumber (they are on the wire). Receivers must
accept codes they do not know and treat them like INTERNAL (`error_from_code`
returns a plain `PrkdbError` carrying the raw code).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "ERROR_DESCRIPTIONS",
    "AuthFailed",
    "Compacted",
    "ErrorCode",
    "InternalError",
    "InvalidRequest",
    "LeaseNotFound",
    "NotLeader",
    "OutcomeUnknown",
    "PermissionDenied",
    "PrkdbError",
    "ProtocolError",
    "Timeout",
    "TlsError",
    "TooLarge",
    "TooManyLeases",
    "Unauthenticated",
    "Unavailable",
    "WatchOverflow",
    "WrongCluster",
    "error_from_code",
]


class ErrorCode(enum.IntEnum):
    """Failure codes carried by `Error` frames. Append only; values are on the wire."""

    OK = 0  # not an error; never sent in an Error frame, reserved so 0 means "fine"
    NOT_LEADER = 1  # this node does not lead the partition; details: leader_id, leader_address
    UNAVAILABLE = 2  # no leader / no quorum / shutting down; nothing was done, retry later
    OUTCOME_UNKNOWN = 3  # a write was proposed but its fate is unknown (e.g. leader lost)
    BAD_REQUEST = 4  # malformed frame or message, or a request that can never succeed
    TOO_LARGE = 5  # frame, key or value over a limit; details may carry "limit"
    WRONG_CLUSTER = 6  # hello named another cluster id; the connection is closed
    BAD_VERSION = 7  # unsupported protocol version; details: "supported" (list of ints)
    INTERNAL = 8  # a bug or broken invariant on the server; not the caller's fault
    TIMEOUT = 9  # the server gave up waiting before doing anything; safe to retry
    LEASE_NOT_FOUND = 10  # no such lease (never granted, expired or revoked); details: lease_id
    TOO_MANY_LEASES = 11  # the partition holds limits.max_leases leases; details: limit
    COMPACTED = 12  # a Watch's `after` is older than the history held; details: oldest, partition
    WATCH_OVERFLOW = 13  # a watch fell too far behind and was dropped; resume from the cursor
    UNAUTHENTICATED = 14  # no user on the connection, or a bad/expired token: log in again
    PERMISSION_DENIED = 15  # the user may not do this; details: user, what
    AUTH_FAILED = 16  # wrong user or password, or too many failures; details: retry_after_ms


ERROR_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.OK: "not an error; never sent in an Error frame",
    ErrorCode.NOT_LEADER: (
        "this node does not lead the partition; details: leader_id (0/absent = unknown), "
        "leader_address (host:port for clients, absent if unknown), partition. "
        "Retry at the leader; nothing was done"
    ),
    ErrorCode.UNAVAILABLE: "no leader, no quorum, or shutting down; nothing was done, retry later",
    ErrorCode.OUTCOME_UNKNOWN: (
        "a write was proposed but its fate is unknown (e.g. leadership lost); retry with the "
        "same client_id and seq"
    ),
    ErrorCode.BAD_REQUEST: "malformed frame or message, or a request that can never succeed",
    ErrorCode.TOO_LARGE: "frame, key, value or batch over a limit; details: limit, size",
    ErrorCode.WRONG_CLUSTER: "the Hello named another cluster id; the connection is closed",
    ErrorCode.BAD_VERSION: (
        "unsupported protocol version; details: supported (array of uint); connection closed"
    ),
    ErrorCode.INTERNAL: "a bug or broken invariant on the server; not the caller's fault",
    ErrorCode.TIMEOUT: "the server gave up waiting before doing anything; safe to retry",
    ErrorCode.LEASE_NOT_FOUND: (
        "no such lease: never granted, expired or revoked (a put naming it, a revoke, a "
        "time-to-live); details: lease_id. Do not retry: grant a new lease"
    ),
    ErrorCode.TOO_MANY_LEASES: (
        "the partition already holds the most leases it may (server limit max_leases); "
        "details: limit. Nothing was done; revoke leases or grant in another partition"
    ),
    ErrorCode.COMPACTED: (
        "ends a Watch: its `after` is older than the events the replica still holds; details: "
        "oldest (a watch may resume from any after >= oldest), partition. Do not retry as is: "
        "list the range again (Scan) and watch from the list's applied_index"
    ),
    ErrorCode.WATCH_OVERFLOW: (
        "ends a Watch whose client read too slowly: the server dropped the events it had "
        "queued for it (limits.watch_buffer_events / watch_buffer_bytes, or the connection "
        "acknowledged nothing for 2 s). Resume with a new Watch from the last progress or "
        "event revision received; nothing is lost"
    ),
    ErrorCode.UNAUTHENTICATED: (
        "the server has auth on and the connection has no valid user: none yet, or its token "
        "expired, was issued before the user's password changed or the user was deleted, or "
        "names another cluster (the message says which). Nothing was done: log in (Login or "
        "Authenticate) and retry once"
    ),
    ErrorCode.PERMISSION_DENIED: (
        "the connection's user may not do this (a key or range outside its roles' "
        "permissions, or an admin request without the root role); details: user, what. "
        "Nothing was done; do not retry"
    ),
    ErrorCode.AUTH_FAILED: (
        "Login refused: wrong user or password, or too many failed logins from this address "
        "(details: retry_after_ms, present when rate limited). Do not retry at once"
    ),
}
"""One line per code: what it means and what the receiver should do (docs/protocol.md)."""


class PrkdbError(Exception):
    """Root of every error the SDK raises for a failed request.

    Attributes:
        code: the `ErrorCode` (or the raw int for codes this client does not know).
        message: human-readable, lowercase, includes the values involved.
        details: structured extras from the server (string keys), never None.
    """

    default_code: ClassVar[int] = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.code: int = self.default_code if code is None else code
        self.message = message
        self.details: dict[str, Any] = dict(details) if details else {}
        super().__init__(message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={_code_name(self.code)})"


class NotLeader(PrkdbError):
    """The node asked is not the partition's leader; retry at `leader_address`.

    `leader_id`/`leader_address` are None when the node knows no leader (an
    election is running); the caller should back off and ask again.
    """

    default_code = ErrorCode.NOT_LEADER

    def __init__(
        self,
        leader_id: int | None = None,
        leader_address: str | None = None,
        message: str = "",
        *,
        partition: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if not message:
            if leader_id:
                where = f" at {leader_address}" if leader_address else ""
                message = f"not the leader; the leader is node {leader_id}{where}"
            else:
                message = "not the leader; no leader known"
        merged = dict(details or {})
        if leader_id is not None:
            merged.setdefault("leader_id", leader_id)
        if leader_address is not None:
            merged.setdefault("leader_address", leader_address)
        if partition is not None:
            merged.setdefault("partition", partition)
        super().__init__(message, details=merged)
        self.leader_id = leader_id
        self.leader_address = leader_address
        self.partition = partition


class Unavailable(PrkdbError):
    """The cluster could not serve the request now; nothing was done. Retry later."""

    default_code = ErrorCode.UNAVAILABLE


class Timeout(Unavailable):
    """The server (or the client deadline) expired before anything was done.

    A subclass of `Unavailable` because the remedy is the same: retry later.
    A write that may already be proposed never yields Timeout; it yields
    `OutcomeUnknown`.
    """

    default_code = ErrorCode.TIMEOUT


class OutcomeUnknown(PrkdbError):
    """A write may or may not have been applied.

    Retrying with the *same* client_id and seq is safe (the state machine
    applies it at most once); the SDK raises this only once its deadline is
    spent.
    """

    default_code = ErrorCode.OUTCOME_UNKNOWN


class InvalidRequest(PrkdbError):
    """The request is malformed or can never succeed; retrying will not help."""

    default_code = ErrorCode.BAD_REQUEST


class TooLarge(InvalidRequest):
    """A frame, key or value exceeds a limit (details may carry "limit")."""

    default_code = ErrorCode.TOO_LARGE


class WrongCluster(PrkdbError):
    """The node belongs to another cluster than the one the client expects."""

    default_code = ErrorCode.WRONG_CLUSTER


class ProtocolError(PrkdbError):
    """The peer broke the wire protocol (bad bytes, bad version, bad shape).

    `prkdb.wire.errors.RemoteProtocolError` and `LocalProtocolError` subclass
    this, so one ``except ProtocolError`` covers codec failures in the SDK.
    """

    default_code = ErrorCode.BAD_REQUEST


class TlsError(PrkdbError):
    """The TLS handshake with a node failed for good; retrying will not help.

    A certificate was refused (by us: wrong CA, expired, wrong name; or by the
    node: it wants a client certificate signed by its CA), or one side does
    not speak TLS. Never on the wire: the message says which side and why.
    """

    default_code = ErrorCode.BAD_REQUEST


class InternalError(PrkdbError):
    """The server hit a bug or a broken invariant; report it."""

    default_code = ErrorCode.INTERNAL


class LeaseNotFound(PrkdbError):
    """The lease named does not exist: never granted, expired, or revoked.

    Not retryable: the lease (and every key attached to it) is gone for
    good; grant a new one. A keep-alive reports a lost lease this way too.
    """

    default_code = ErrorCode.LEASE_NOT_FOUND


class TooManyLeases(PrkdbError):
    """The partition already holds its limit of leases; nothing was granted.

    Not retryable as it is: revoke leases you no longer need first.
    """

    default_code = ErrorCode.TOO_MANY_LEASES


class Compacted(PrkdbError):
    """A watch's cursor is older than the event history the replica keeps.

    The events between the cursor and `oldest` are gone from the history, so
    the watch cannot resume without a gap. Not retryable as it is: list the
    range again (a Scan, whose ``applied_index`` is the new cursor) and watch
    from there.

    Attributes:
        oldest: the oldest cursor the replica can serve: a watch with
            ``after >= oldest`` gets every event after it (None if the
            server did not say).
        partition: the partition whose history is compacted (None if unknown).
    """

    default_code = ErrorCode.COMPACTED

    def __init__(
        self,
        oldest: int | None = None,
        message: str = "",
        *,
        partition: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if not message:
            where = f" of partition {partition}" if partition is not None else ""
            held = f": the oldest cursor held is {oldest}" if oldest is not None else ""
            message = f"the event history{where} is compacted{held}; list again, then watch"
        merged = dict(details or {})
        if oldest is not None:
            merged.setdefault("oldest", oldest)
        if partition is not None:
            merged.setdefault("partition", partition)
        super().__init__(message, details=merged)
        self.oldest = oldest
        self.partition = partition


class WatchOverflow(Unavailable):
    """The server dropped a watch whose client did not keep up (its buffer filled).

    A subclass of `Unavailable` because the remedy is the same: resume (the
    SDK does, from its cursor, with no gap and no duplicate). Nothing is lost.
    """

    default_code = ErrorCode.WATCH_OVERFLOW


class Unauthenticated(PrkdbError):
    """The connection has no valid user (none, or an expired or voided token).

    The SDK logs in again once with its credentials and retries; without
    credentials, pass some (`prkdb.client.Credentials`).
    """

    default_code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(PrkdbError):
    """The user may not do this: a key or range outside its roles, or an admin request."""

    default_code = ErrorCode.PERMISSION_DENIED


class AuthFailed(PrkdbError):
    """A login was refused: wrong user or password, or rate limited.

    Attributes:
        retry_after_ms: when rate limited, how long until a login may be tried
            again from this address (None otherwise).
    """

    default_code = ErrorCode.AUTH_FAILED

    @property
    def retry_after_ms(self) -> int | None:
        v = self.details.get("retry_after_ms")
        return v if _is_uint(v) else None


_BY_CODE: dict[int, type[PrkdbError]] = {
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.OUTCOME_UNKNOWN: OutcomeUnknown,
    ErrorCode.BAD_REQUEST: InvalidRequest,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.WRONG_CLUSTER: WrongCluster,
    ErrorCode.BAD_VERSION: ProtocolError,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.LEASE_NOT_FOUND: LeaseNotFound,
    ErrorCode.TOO_MANY_LEASES: TooManyLeases,
    ErrorCode.WATCH_OVERFLOW: WatchOverflow,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.AUTH_FAILED: AuthFailed,
}


def error_from_code(code: int, message: str = "", /, **details: Any) -> PrkdbError:
    """Build the exception for an `Error` frame received from a server.

    Args:
        code: the frame's code; unknown codes (a newer server) give a plain
            `PrkdbError` that keeps the raw int, so nothing is lost.
        message: the frame's message.
        **details: the frame's details map. For NOT_LEADER the keys
            ``leader_id``, ``leader_address`` and ``partition`` fill the
            `NotLeader` attributes; for COMPACTED, ``oldest`` and
            ``partition`` fill the `Compacted` ones.

    Returns:
        The exception to raise (not raised here, so the caller controls the
        traceback and ``from`` chaining).

    Raises:
        ValueError: code is OK, which is not an error: a caller bug.
    """
    if code == ErrorCode.OK:
        raise ValueError("error_from_code(OK): OK is not an error")
    if code == ErrorCode.NOT_LEADER:
        leader_id = details.get("leader_id")
        leader_address = details.get("leader_address")
        partition = details.get("partition")
        return NotLeader(
            leader_id if isinstance(leader_id, int) else None,
            leader_address if isinstance(leader_address, str) else None,
            message,
            partition=partition if isinstance(partition, int) else None,
            details=details,
        )
    if code == ErrorCode.COMPACTED:
        oldest = details.get("oldest")
        partition = details.get("partition")
        return Compacted(
            oldest if _is_uint(oldest) else None,
            message,
            partition=partition if _is_uint(partition) else None,
            details=details,
        )
    try:
        known: int = ErrorCode(code)
    except ValueError:
        return PrkdbError(message or f"unknown error code {code}", code=code, details=details)
    return _BY_CODE[known](message, code=known, details=details)


def _is_uint(value: Any) -> bool:
    """Whether a details value is a plain non-negative int (not a bool, not text)."""
    return type(value) is int and value >= 0


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)
