"""Results of applying a command: what a client is told about its write.

Theory of operation
-------------------
Every applied log entry that carries a command yields exactly one
:class:`WriteResult`; an empty entry (a Raft no-op) yields ``None``. The result
is a value: it is the same on every replica, it is cached in the session table
for exactly-once retries, and it is written into snapshots, so it is a frozen
dataclass with a compact CBOR form (:func:`result_to_cbor` /
:func:`result_from_cbor`).

Versions and revisions (the definitions every layer relies on):

* ``version`` — per key. 1 when the key is created, +1 on every modification
  (PutCommand, or a successful CompareAndSetCommand that stores a value, or a
  put op of a txn or batch). A delete removes the
  key, so the next create starts again at 1. ``0`` means "absent"; this is why
  ``CompareAndSetCommand(expected_version=0)`` means "only if absent".
* ``create_revision`` — per key: the index of the entry that created it
  (version 1); kept by later modifications, reset by delete + re-create.
* ``lease`` — per key: the id of the lease it is attached to, 0 = none (see
  kv.py for the rules).
* ``revision`` — per partition: the Raft log index of an entry. The state
  machine stores, per key, ``mod_revision`` = the index of the entry that last
  modified it. A result's ``revision`` is the index of the entry that produced
  it (for a replayed retry: the index of the *original* entry, because that is
  where the write happened). Revisions increase across the whole partition, so
  they order writes to different keys, and a STALE read that reports its
  applied index can be compared with them.

Transactions: a TxnCommand whose compares fail still applies (its
``failure`` branch) and returns ``OK`` with ``succeeded=False``; a
result code other than ``OK`` always means nothing changed at all.
Leases: a grant's result carries the new id in ``lease_id``; a revoke's
``version`` is the number of keys it deleted.

Failures are results, not exceptions: the entry is already committed, so the
only deterministic thing to do is to apply it as a no-op and say why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, final

__all__ = [
    "RESULT_SHAPE",
    "OpResult",
    "ResultCode",
    "WriteResult",
    "ok_result",
    "result_from_cbor",
    "result_to_cbor",
]


class ResultCode(IntEnum):
    """Outcome of one applied command. Values are stable: they go into snapshots."""

    OK = 0
    #: The CompareAndSetCommand condition did not hold; nothing changed. A normal
    #: outcome, not a server error.
    CAS_FAILED = 1
    #: The session's seq is older than the last one applied for that client:
    #: the request is a late duplicate of something already superseded.
    STALE_SEQUENCE = 2
    KEY_TOO_LARGE = 3
    VALUE_TOO_LARGE = 4
    BATCH_TOO_LARGE = 5
    #: The command breaks a rule that is not a size limit (empty key, CAS
    #: without any condition, wrong field type).
    INVALID_COMMAND = 6
    #: The entry's bytes do not decode as a command (a bug or a version skew
    #: in the proposer); applied as a no-op so replicas stay identical.
    MALFORMED_COMMAND = 7
    #: A put (alone, or in the branch of a txn or batch that ran) names a lease
    #: this partition does not have, or a revoke names an unknown lease.
    LEASE_NOT_FOUND = 8
    #: A grant would exceed ``Limits.max_leases`` leases in the partition.
    LEASE_LIMIT = 9
    #: An auth command (prkdb/state/auth.py) named an unknown user or role, or
    #: one that exists already, or would take root away; nothing changed.
    AUTH_REJECTED = 10


@final
@dataclass(frozen=True, slots=True)
class OpResult:
    """Per-operation outcome inside a :class:`WriteResult` of a batch or txn.

    For a PutCommand/DeleteCommand op only ``version`` and ``prev_version``
    are set. For a GetOp (txn read) the read fields give the key's record as
    that op saw it (after the txn's earlier ops); ``prev_version == version``
    since a read changes nothing.

    Attributes:
        version: the key's version after the op (0 = absent afterwards).
        prev_version: the key's version before the op (0 = was absent).
        value: GetOp: the key's value, None = absent. None for writes.
        mod_revision: GetOp: index of the entry that last modified the key (0 = absent).
        create_revision: GetOp: index of the entry that created the key (0 = absent).
        lease: GetOp: id of the key's lease (0 = none or absent).
    """

    version: int
    prev_version: int
    value: bytes | None = None
    mod_revision: int = 0
    create_revision: int = 0
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one command, returned by ``KVStateMachine.apply``.

    Attributes:
        code: :class:`ResultCode`; anything but ``OK`` means nothing changed.
        revision: log index of the entry that produced this result (see module
            doc). For a replayed session retry, the original entry's index.
        version: for PutCommand/DeleteCommand/CompareAndSetCommand, the key's version after the
            command (0 = absent). On ``CAS_FAILED``, the key's *current*
            version, so a client can retry its read-modify-write. For a
            LeaseRevokeCommand, the number of keys it deleted. 0 for a
            BatchCommand, TxnCommand or LeaseGrantCommand.
        prev_version: the key's version before the command (0 = was absent);
            for DeleteCommand, ``prev_version > 0`` says a key was actually removed.
        ops: for a successful BatchCommand or TxnCommand, one :class:`OpResult`
            per op of the branch that ran, in order; empty otherwise.
        message: human-readable reason when ``code`` is not ``OK``.
        succeeded: for a TxnCommand with ``code == OK``: True if its compares
            held and ``success`` ran, False if ``failure`` ran (still ``OK``:
            the txn applied). True for every other command.
        lease_id: for a LeaseGrantCommand with ``code == OK``, the new lease's
            id (``revision << 16 | partition``); 0 otherwise.
    """

    code: ResultCode
    revision: int
    version: int = 0
    prev_version: int = 0
    ops: tuple[OpResult, ...] = ()
    message: str = ""
    succeeded: bool = True
    lease_id: int = 0

    @property
    def ok(self) -> bool:
        """True if the command took effect (``code == OK``)."""
        return self.code == ResultCode.OK


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of a frozen slots dataclass, in ``names`` order."""
    return tuple(getattr(cls, name).__set__ for name in names)


(
    _set_code, _set_revision, _set_version, _set_prev, _set_ops, _set_message,
    _set_succeeded, _set_lease_id,
) = _slot_setters(WriteResult, (
    "code", "revision", "version", "prev_version", "ops", "message", "succeeded", "lease_id",
))
_new = object.__new__


def ok_result(revision: int, version: int, prev_version: int) -> WriteResult:
    """``WriteResult(ResultCode.OK, revision, version, prev_version)``, at half the cost.

    The result of every plain put and delete, built once per write on the
    apply path. A frozen dataclass's ``__init__`` sets each of the 8 fields
    through ``object.__setattr__`` from Python (about 1 us); setting the slots
    through their descriptors from here skips the frame and the lookups
    (about 0.5 us). Same object: equal, hashable, frozen afterwards.
    """
    r = _new(WriteResult)
    _set_code(r, ResultCode.OK)
    _set_revision(r, revision)
    _set_version(r, version)
    _set_prev(r, prev_version)
    _set_ops(r, ())
    _set_message(r, "")
    _set_succeeded(r, True)
    _set_lease_id(r, 0)
    return r


#: First element of a result in the current cached shape (see result_to_cbor).
RESULT_SHAPE: Final = 2


def result_to_cbor(result: WriteResult) -> list[Any]:
    """Flatten ``result`` to a CBOR-ready list (for snapshots of the session table).

    Shape 2 (written since snapshot format 2)::

        [2, code, revision, version, prev_version, ops, message, succeeded, lease_id]
        ops: one array per op: [version, prev_version] for a write,
             [version, prev_version, value | null, mod_revision, create_revision, lease]
             for a GetOp (recognised by its length; a write's read fields are defaults)

    Shape 1 (snapshot format 1, still read by :func:`result_from_cbor`)::

        [code, revision, version, prev_version, [v0, p0, v1, p1, ...], message]
    """
    ops: list[list[Any]] = []
    for op in result.ops:
        if (
            op.value is None
            and not op.mod_revision
            and not op.create_revision
            and not op.lease
        ):
            ops.append([op.version, op.prev_version])
        else:
            ops.append([
                op.version, op.prev_version, op.value, op.mod_revision, op.create_revision,
                op.lease,
            ])
    return [
        RESULT_SHAPE,
        int(result.code),
        result.revision,
        result.version,
        result.prev_version,
        ops,
        result.message,
        result.succeeded,
        result.lease_id,
    ]


def _uint(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"result {name} must be a non-negative int, got {value!r:.40}")
    return value


def _op_from_cbor(raw: Any) -> OpResult:
    if type(raw) is not list or len(raw) not in (2, 6):
        raise ValueError(f"result op must be an array of 2 or 6 items, got {raw!r:.60}")
    if len(raw) == 2:
        return OpResult(_uint(raw[0], "op version"), _uint(raw[1], "op prev_version"))
    version, prev, value, mod, create, lease = raw
    if value is not None and type(value) is not bytes:
        raise ValueError(f"result op value must be bytes or null, got {type(value).__name__}")
    return OpResult(
        _uint(version, "op version"), _uint(prev, "op prev_version"), value,
        _uint(mod, "op mod_revision"), _uint(create, "op create_revision"),
        _uint(lease, "op lease"),
    )


def result_from_cbor(item: Any) -> WriteResult:
    """Inverse of :func:`result_to_cbor`; reads shape 2 and the older shape 1.

    Raises:
        ValueError: ``item`` does not have either shape ``result_to_cbor``
            produces. The snapshot reader wraps it into ``SnapshotDecodeError``.
    """
    if type(item) is list and len(item) == 9 and item[0] == RESULT_SHAPE:
        _, code, revision, version, prev_version, raw_ops, message, succeeded, lease_id = item
        if type(raw_ops) is not list:
            raise ValueError("result ops must be an array")
        ops = tuple(_op_from_cbor(op) for op in raw_ops)
        if type(succeeded) is not bool:
            raise ValueError(f"result succeeded must be a bool, got {succeeded!r:.40}")
        _uint(lease_id, "lease_id")
    elif type(item) is list and len(item) == 6:
        code, revision, version, prev_version, flat_ops, message = item
        if type(flat_ops) is not list or len(flat_ops) % 2:
            raise ValueError("result ops must be an array of (version, prev_version) pairs")
        if any(type(v) is not int or v < 0 for v in flat_ops):
            raise ValueError("result op versions must be non-negative ints")
        ops = tuple(OpResult(flat_ops[i], flat_ops[i + 1]) for i in range(0, len(flat_ops), 2))
        succeeded, lease_id = True, 0
    else:
        raise ValueError(
            f"result must be a 9-element array starting with {RESULT_SHAPE} "
            f"or a 6-element one, got {item!r:.80}"
        )
    _uint(revision, "revision")
    _uint(version, "version")
    _uint(prev_version, "prev_version")
    if type(message) is not str:
        raise ValueError(f"result message must be a string, got {type(message).__name__}")
    if type(code) is not int:
        raise ValueError(f"result code must be an int, got {code!r:.40}")
    try:
        rc = ResultCode(code)
    except ValueError:
        raise ValueError(f"unknown result code {code!r:.40}") from None
    return WriteResult(rc, revision, version, prev_version, ops, message, succeeded, lease_id)
