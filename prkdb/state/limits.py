"""Size limits and the rules a command must follow before it may be proposed.

Theory of operation
-------------------
The same check runs in two places, with two behaviours:

* The server calls :func:`validate_command` *before* proposing. A violation
  raises :class:`InvalidCommand` (a caller mistake), the client gets
  TOO_LARGE / BAD_REQUEST, and the log never sees the command.
* ``KVStateMachine.apply`` calls :func:`check_command` on every committed
  command. A command can reach the log despite the first check (an older
  leader with other limits, a bug), and once committed every replica must
  apply it identically, so a violation becomes a failed no-op
  :class:`~prkdb.state.results.WriteResult` instead of an exception.

Hence the limits are effectively cluster-wide configuration: replicas with
different limits would apply the same entry differently and diverge. They
must be changed only together (TODO(#3): carry them in the log).

Rules beyond sizes: keys are non-empty ``bytes``; values are ``bytes``
(empty allowed); a put's lease is an int in ``[0, 2**64)``; a
CompareAndSetCommand has at least one condition; a BatchCommand holds only
PutCommand/DeleteCommand, at most ``max_batch_ops`` of them (an empty batch
is a valid no-op); a TxnCommand holds at most ``max_batch_ops`` compares and
as many ops per branch (like etcd's ``--max-txn-ops``, counted per list),
every key (compares and ops of *both* branches) within ``max_key_size``, every
value and VALUE operand within ``max_value_size``, compare targets and ops
known and each operand of its target's type; a LeaseGrantCommand's TTL and a
LeaseRevokeCommand's id are positive 64-bit ints.

What depends on the state is not checked here but in ``apply``: a put's
lease must exist (``LEASE_NOT_FOUND``), a grant must not exceed
``max_leases`` (``LEASE_LIMIT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

from prkdb.state.auth import AUTH_COMMAND_TYPES
from prkdb.state.commands import (
    UNCHECKED,
    BatchCommand,
    Command,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    TxnCommand,
)
from prkdb.state.errors import InvalidCommand
from prkdb.state.results import ResultCode

__all__ = ["DEFAULT_LIMITS", "Limits", "Violation", "check_command", "validate_command"]


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """Per-command size limits, in bytes (keys, values) and ops (batches), and the lease cap.

    Attributes:
        max_key_size: longest allowed key, bytes. Default 64 KiB.
        max_value_size: longest allowed value (also CAS expected value and
            txn VALUE operand), bytes. Default 4 MiB.
        max_batch_ops: most ops in one BatchCommand; most compares, and most
            ops per branch, in one TxnCommand. Default 1000.
        max_leases: most leases alive in one partition; a grant beyond it
            fails with ``LEASE_LIMIT``. Default 100,000.
    """

    max_key_size: int = 64 * 1024
    max_value_size: int = 4 * 1024 * 1024
    max_batch_ops: int = 1000
    max_leases: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_key_size", "max_value_size", "max_batch_ops", "max_leases"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} ({value!r}) must be a positive int")


DEFAULT_LIMITS: Limits = Limits()

#: ``(code, message)`` describing why a command may not be applied.
Violation = tuple[ResultCode, str]


def _check_key(key: Any, limits: Limits, where: str) -> Violation | None:
    if type(key) is not bytes:
        return ResultCode.INVALID_COMMAND, f"{where}key must be bytes, got {type(key).__name__}"
    if not key:
        return ResultCode.INVALID_COMMAND, f"{where}key must not be empty"
    if len(key) > limits.max_key_size:
        return (
            ResultCode.KEY_TOO_LARGE,
            f"{where}key is {len(key)} bytes, over max_key_size ({limits.max_key_size})",
        )
    return None


def _check_value(value: Any, limits: Limits, where: str, what: str = "value") -> Violation | None:
    if type(value) is not bytes:
        return (
            ResultCode.INVALID_COMMAND,
            f"{where}{what} must be bytes, got {type(value).__name__}",
        )
    if len(value) > limits.max_value_size:
        return (
            ResultCode.VALUE_TOO_LARGE,
            f"{where}{what} is {len(value)} bytes, over max_value_size ({limits.max_value_size})",
        )
    return None


def check_command(cmd: Command, limits: Limits = DEFAULT_LIMITS) -> Violation | None:
    """Return why ``cmd`` may not be applied under ``limits``, or ``None`` if it may.

    The non-raising form used on the apply path, where exceptions would cost
    time per write and a violation is an ordinary (failed) outcome.
    """
    if type(cmd) is PutCommand:
        # _check_put inlined: the per-write path (one call fewer).
        v = _check_key(cmd.key, limits, "") or _check_value(cmd.value, limits, "")
        if v is None and cmd.lease:
            return _check_put(cmd, limits, "")
        return v
    if type(cmd) is DeleteCommand:
        return _check_key(cmd.key, limits, "")
    if type(cmd) is CompareAndSetCommand:
        return _check_cas(cmd, limits)
    if type(cmd) is BatchCommand:
        return _check_batch(cmd, limits)
    if type(cmd) is TxnCommand:
        return _check_txn(cmd, limits)
    if type(cmd) is LeaseGrantCommand:
        return _check_positive(cmd.ttl_ms, "lease ttl_ms")
    if type(cmd) is LeaseRevokeCommand:
        if type(cmd.expired) is not bool:
            return (
                ResultCode.INVALID_COMMAND,
                f"LeaseRevoke expired must be a bool, got {type(cmd.expired).__name__}",
            )
        return _check_positive(cmd.lease_id, "lease id")
    if type(cmd) in AUTH_COMMAND_TYPES:
        return None  # decoding checked every field (auth.py); no size limits apply
    return ResultCode.INVALID_COMMAND, f"not a command: {type(cmd).__name__}"


def _check_put(cmd: PutCommand, limits: Limits, where: str) -> Violation | None:
    v = _check_key(cmd.key, limits, where) or _check_value(cmd.value, limits, where)
    if v is None and cmd.lease:  # 0 is the common case: one truth test
        lease = cmd.lease
        if type(lease) is not int or not 0 <= lease < 2**64:
            return (
                ResultCode.INVALID_COMMAND,
                f"{where}lease must be a 64-bit int >= 0, got {lease!r:.40}",
            )
    return v


def _check_positive(value: Any, what: str) -> Violation | None:
    if type(value) is not int or not 0 < value < 2**64:
        return (
            ResultCode.INVALID_COMMAND,
            f"{what} must be a positive 64-bit int, got {value!r:.40}",
        )
    return None


def _check_cas(cmd: CompareAndSetCommand, limits: Limits) -> Violation | None:
    v = _check_key(cmd.key, limits, "")
    if v:
        return v
    ev, ever = cmd.expected_value, cmd.expected_version
    if ev is UNCHECKED and ever is None:
        return (
            ResultCode.INVALID_COMMAND,
            "CompareAndSet needs expected_value or expected_version (else use Put)",
        )
    if ev is not UNCHECKED and ev is not None:
        v = _check_value(ev, limits, "", "expected_value")
        if v:
            return v
    if ever is not None and (type(ever) is not int or not 0 <= ever < 2**64):
        return (
            ResultCode.INVALID_COMMAND,
            f"expected_version must be a non-negative 64-bit int or None, got {ever!r:.40}",
        )
    if cmd.new_value is not None:
        return _check_value(cmd.new_value, limits, "", "new_value")
    return None


def _check_batch(cmd: BatchCommand, limits: Limits) -> Violation | None:
    ops = cmd.ops
    if type(ops) is not tuple:
        return ResultCode.INVALID_COMMAND, f"Batch ops must be a tuple, got {type(ops).__name__}"
    if len(ops) > limits.max_batch_ops:
        return (
            ResultCode.BATCH_TOO_LARGE,
            f"batch has {len(ops)} ops, over max_batch_ops ({limits.max_batch_ops})",
        )
    for i, op in enumerate(ops):
        where = f"batch op {i}: "
        if type(op) is PutCommand:
            v = _check_put(op, limits, where)
        elif type(op) is DeleteCommand:
            v = _check_key(op.key, limits, where)
        else:
            v = ResultCode.INVALID_COMMAND, f"{where}must be Put or Delete, got {type(op).__name__}"
        if v:
            return v
    return None


def _check_txn(cmd: TxnCommand, limits: Limits) -> Violation | None:
    n = limits.max_batch_ops
    for name, part in (("compares", cmd.compares), ("success", cmd.success),
                       ("failure", cmd.failure)):
        if type(part) is not tuple:
            return (
                ResultCode.INVALID_COMMAND,
                f"Txn {name} must be a tuple, got {type(part).__name__}",
            )
        if len(part) > n:
            return (
                ResultCode.BATCH_TOO_LARGE,
                f"txn has {len(part)} {'compares' if name == 'compares' else name + ' ops'}, "
                f"over max_batch_ops ({n})",
            )
    for i, c in enumerate(cmd.compares):
        v = _check_compare(c, limits, f"txn compare {i}: ")
        if v:
            return v
    for name, ops in (("success", cmd.success), ("failure", cmd.failure)):
        for i, op in enumerate(ops):
            where = f"txn {name} op {i}: "
            if type(op) is PutCommand:
                v = _check_put(op, limits, where)
            elif type(op) is DeleteCommand or type(op) is GetOp:
                v = _check_key(op.key, limits, where)
            else:
                v = (
                    ResultCode.INVALID_COMMAND,
                    f"{where}must be Put, Delete or GetOp, got {type(op).__name__}",
                )
            if v:
                return v
    return None


def _check_compare(c: Any, limits: Limits, where: str) -> Violation | None:
    if type(c) is not Compare:
        return ResultCode.INVALID_COMMAND, f"{where}must be a Compare, got {type(c).__name__}"
    v = _check_key(c.key, limits, where)
    if v:
        return v
    # Any: the fields are typed as the enums, but a caller may build a Compare
    # with anything (the wire layer, plain ints); only a known int value counts.
    target: Any = c.target
    op: Any = c.op
    if type(target) is bool or not isinstance(target, int) or target not in _TARGETS:
        return ResultCode.INVALID_COMMAND, f"{where}unknown compare target {target!r:.40}"
    if type(op) is bool or not isinstance(op, int) or op not in _OPS:
        return ResultCode.INVALID_COMMAND, f"{where}unknown compare op {op!r:.40}"
    if target == CompareTarget.VALUE:
        return _check_value(c.operand, limits, where, "compare operand (VALUE)")
    operand = c.operand
    if type(operand) is not int or not 0 <= operand < 2**64:
        return (
            ResultCode.INVALID_COMMAND,
            f"{where}compare operand ({CompareTarget(target).name}) must be a 64-bit int >= 0, "
            f"got {operand!r:.40}",
        )
    return None


_TARGETS = frozenset(int(t) for t in CompareTarget)
_OPS = frozenset(int(o) for o in CompareOp)


def validate_command(cmd: Command, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check ``cmd`` before proposing it, so a bad command never enters the log.

    Args:
        cmd: the command the client asked for.
        limits: the partition's limits (the same ones its state machine uses).

    Raises:
        InvalidCommand: ``cmd`` breaks a limit or a rule; ``.code`` tells which
            (``KEY_TOO_LARGE``, ``VALUE_TOO_LARGE``, ``BATCH_TOO_LARGE`` (also
            for a txn), ``INVALID_COMMAND``) and the message gives the numbers.
            State-dependent outcomes (``LEASE_NOT_FOUND``, ``LEASE_LIMIT``)
            are only known at apply time.
    """
    violation = check_command(cmd, limits)
    if violation is not None:
        code, message = violation
        raise InvalidCommand(message, code)
