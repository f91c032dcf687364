"""What the SDK's calls return, and the argument checks every front end shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, NamedTuple, cast, final

from prkdb.errors import InvalidRequest, PrkdbError
from prkdb.wire.messages import (
    BatchOp,
    EventKind,
    KeyValue,
    OpKind,
    OpResult,
    TxnOpResult,
    WriteOk,
)
from prkdb.wire.schema import frozen_builder

__all__ = [
    "UNSET",
    "BackupFailed",
    "EventKind",
    "GetResult",
    "KeyValue",
    "Lease",
    "LeaseStatus",
    "ScanPage",
    "TxnOpResult",
    "TxnResult",
    "Unset",
    "WatchEvent",
    "WriteResult",
    "check_key",
    "check_value",
    "new_get_result",
    "parse_batch_op",
    "write_result",
]


class BackupFailed(PrkdbError):
    """A partition's backup could not be completed (after its retries); nothing was kept."""


class Unset:
    """The type of `UNSET`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()
"""Default of ``cas(expected_value=...)``: the value is not compared."""


@final
@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of put/delete/cas/batch.

    Attributes:
        succeeded: False only for a cas whose condition did not hold.
        revision: log index of the entry that made the write (per partition).
        version: the key's version after the write (cas failure: its current version).
        prev_version: the key's version before (0 = it was absent).
        ops: batch only: one `OpResult` (version, prev_version) per op, in order.
    """

    succeeded: bool
    revision: int
    version: int
    prev_version: int
    ops: tuple[OpResult, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of `scan_page`: keys in order, and where the next page starts.

    Attributes:
        items: `KeyValue` records (key, value, version, mod_revision,
            create_revision, lease); value ``b""`` for keys_only scans.
        token: opaque bytes for ``scan_page(token=...)``; None: this was the
            last page. Holds the range, keys_only and the limit left, not the
            consistency, so pass that again.
    """

    items: tuple[KeyValue, ...]
    token: bytes | None


@final
@dataclass(frozen=True, slots=True)
class TxnResult:
    """The outcome of a txn.

    Attributes:
        succeeded: True if every compare held and the success ops ran;
            False if the failure ops ran (a normal outcome, not an error).
        revision: the partition's log index of the txn (one for all its ops).
        results: one `TxnOpResult` per op of the branch that ran, in order:
            for Put/Delete ``version`` and ``prev_version``; for Get the key's
            record as the earlier ops left it (``value`` None = absent).
    """

    succeeded: bool
    revision: int
    results: tuple[TxnOpResult, ...]


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease.

    Attributes:
        id: the lease id; ``id & 0xFFFF`` is its partition. Attach keys with
            ``put(key, value, lease=id)`` (keys of that partition only).
        ttl: seconds the lease lives without a keep-alive (as granted: the
            server raises a TTL below its minimum, 2 s by default).
        partition: where the lease lives.
    """

    id: int
    ttl: float
    partition: int


@final
@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """A lease as its partition's leader sees it now.

    Attributes:
        id: the lease id.
        ttl: the granted TTL, seconds.
        remaining: seconds until it expires without a keep-alive (the leader's clock).
        keys: the attached keys, sorted (only when asked: ``lease_ttl(id, keys=True)``).
    """

    id: int
    ttl: float
    remaining: float
    keys: tuple[bytes, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of a watched key, as `watch` delivers it.

    Attributes:
        kind: `EventKind` PUT, DELETE (a delete, a txn, a lease revoke) or
            EXPIRE (the key's lease expired).
        key: the key.
        revision: the log index of the entry that made the change, in
            `partition` (a txn's changes share one revision).
        partition: the partition of the key; events of one partition come
            in revision order (there is no order across partitions).
        value: PUT: the new value; DELETE and EXPIRE: None.
        prev_value: the value before (None: the key was absent, or the watch
            was made without ``prev_values=True``).
    """

    kind: EventKind
    key: bytes
    revision: int
    partition: int
    value: bytes | None
    prev_value: bytes | None


class GetResult(NamedTuple):
    """A key as read: unpacks as ``value, version, mod_revision, applied_index``.

    ``value is None`` (and version 0) means the key is absent. ``applied_index``
    is the partition's applied index on the node that answered (how fresh a
    STALE read is, comparable with `WriteResult.revision`).
    """

    value: bytes | None
    version: int
    mod_revision: int
    applied_index: int


new_get_result: Final = cast(
    Callable[[tuple[bytes | None, int, int, int]], GetResult], partial(tuple.__new__, GetResult)
)
"""``new_get_result(fields)`` is ``GetResult(*fields)`` without the named tuple's
Python-level ``__new__`` (what that ``__new__`` does, at a third of the cost)."""


# WriteResult's frozen __init__ sets each field through object.__setattr__;
# the builder stores them directly (same object, half the cost).
_new_write_result: Final = frozen_builder(WriteResult)


def write_result(reply: WriteOk) -> WriteResult:
    result: WriteResult = _new_write_result(
        reply.succeeded, reply.revision, reply.version, reply.prev_version, reply.ops
    )
    return result


def check_key(key: object, what: str = "key") -> bytes:
    """`key` as bytes.

    Raises:
        InvalidRequest: not bytes-like, or empty.
    """
    if type(key) is bytes and key:  # the common case, first and cheap
        return key
    if isinstance(key, bytearray | memoryview):
        key = bytes(key)
    if not isinstance(key, bytes):
        raise InvalidRequest(f"{what} must be bytes, got {type(key).__name__}")
    if not key:
        raise InvalidRequest(f"{what} must not be empty")
    return key


def check_value(value: object, what: str = "value") -> bytes:
    """`value` as bytes (empty is fine).

    Raises:
        InvalidRequest: not bytes-like.
    """
    if type(value) is bytes:
        return value
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise InvalidRequest(f"{what} must be bytes, got {type(value).__name__}")
    return value


def parse_batch_op(index: int, op: tuple[Any, ...] | BatchOp) -> BatchOp:
    """One batch item as a checked `BatchOp`.

    Raises:
        InvalidRequest: not ``("put", key, value)``, ``("delete", key)`` or a `BatchOp`.
    """
    if isinstance(op, BatchOp):
        kind = op.kind
        key = check_key(op.key, f"batch op {index} key")
        if kind == OpKind.PUT:
            return BatchOp(OpKind.PUT, key, check_value(op.value, f"batch op {index} value"))
        return BatchOp(OpKind.DELETE, key)
    if not isinstance(op, tuple | list) or not op:
        raise InvalidRequest(f"batch op {index} must be ('put', key, value) or ('delete', key)")
    name = str(op[0]).lower()
    if name == "put" and len(op) == 3:
        return BatchOp(
            OpKind.PUT,
            check_key(op[1], f"batch op {index} key"),
            check_value(op[2], f"batch op {index} value"),
        )
    if name == "delete" and len(op) == 2:
        return BatchOp(OpKind.DELETE, check_key(op[1], f"batch op {index} key"))
    raise InvalidRequest(f"batch op {index} {op!r:.60} is not ('put', k, v) or ('delete', k)")
