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
  (PutCommand, or a successful CompareAndSetCommand that stores a value). A delete removes the
  key, so the next create starts again at 1. ``0`` means "absent"; this is why
  ``CompareAndSetCommand(expected_version=0)`` means "only if absent".
* ``revision`` — per partition: the Raft log index of an entry. The state
  machine stores, per key, ``mod_revision`` = the index of the entry that last
  modified it. A result's ``revision`` is the index of the entry that produced
  it (for a replayed retry: the index of the *original* entry, because that is
  where the write happened). Revisions increase across the whole partition, so
  they order writes to different keys, and a STALE read that reports its
  applied index can be compared with them.

Failures are results, not exceptions: the entry is already committed, so the
only deterministic thing to do is to apply it as a no-op and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, final

__all__ = ["OpResult", "ResultCode", "WriteResult", "result_from_cbor", "result_to_cbor"]


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


@final
@dataclass(frozen=True, slots=True)
class OpResult:
    """Per-operation outcome inside a successful :class:`~prkdb.state.commands.Batch`.

    Attributes:
        version: the key's version after the op (0 = absent afterwards).
        prev_version: the key's version before the op (0 = was absent).
    """

    version: int
    prev_version: int


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
            version, so a client can retry its read-modify-write. 0 for a BatchCommand.
        prev_version: the key's version before the command (0 = was absent);
            for DeleteCommand, ``prev_version > 0`` says a key was actually removed.
        ops: for a successful BatchCommand, one :class:`OpResult` per op, in order;
            empty otherwise.
        message: human-readable reason when ``code`` is not ``OK``.
    """

    code: ResultCode
    revision: int
    version: int = 0
    prev_version: int = 0
    ops: tuple[OpResult, ...] = ()
    message: str = ""

    @property
    def ok(self) -> bool:
        """True if the command took effect (``code == OK``)."""
        return self.code == ResultCode.OK


def result_to_cbor(result: WriteResult) -> list[Any]:
    """Flatten ``result`` to a CBOR-ready list (for snapshots of the session table).

    BatchCommand op results are flattened to ``[v0, p0, v1, p1, ...]`` to keep the
    snapshot small.
    """
    flat_ops: list[int] = []
    for op in result.ops:
        flat_ops.append(op.version)
        flat_ops.append(op.prev_version)
    return [
        int(result.code),
        result.revision,
        result.version,
        result.prev_version,
        flat_ops,
        result.message,
    ]


def result_from_cbor(item: Any) -> WriteResult:
    """Inverse of :func:`result_to_cbor`.

    Raises:
        ValueError: ``item`` does not have the shape ``result_to_cbor`` produces.
            The snapshot reader wraps it into ``SnapshotDecodeError``.
    """
    if type(item) is not list or len(item) != 6:
        raise ValueError(f"result must be a 6-element array, got {item!r:.80}")
    code, revision, version, prev_version, flat_ops, message = item
    for name, value in (("revision", revision), ("version", version),
                        ("prev_version", prev_version)):
        if type(value) is not int or value < 0:
            raise ValueError(f"result {name} must be a non-negative int, got {value!r:.40}")
    if type(flat_ops) is not list or len(flat_ops) % 2:
        raise ValueError("result ops must be an array of (version, prev_version) pairs")
    if any(type(v) is not int or v < 0 for v in flat_ops):
        raise ValueError("result op versions must be non-negative ints")
    if type(message) is not str:
        raise ValueError(f"result message must be a string, got {type(message).__name__}")
    if type(code) is not int:
        raise ValueError(f"result code must be an int, got {code!r:.40}")
    try:
        rc = ResultCode(code)
    except ValueError:
        raise ValueError(f"unknown result code {code!r:.40}") from None
    ops = tuple(OpResult(flat_ops[i], flat_ops[i + 1]) for i in range(0, len(flat_ops), 2))
    return WriteResult(rc, revision, version, prev_version, ops, message)
