"""Commands of the KV state machine and their compact CBOR log encoding.

Theory of operation
-------------------
A client write becomes one command, encoded once by the leader, stored in the
Raft log (so in the WAL of every replica) and decoded once per replica at
apply time. The encoding therefore favours size and decode speed over
self-description: every command is a short CBOR array whose first element is
an integer op tag (:class:`OpTag`), never a map with string keys::

    PutCommand            [1, key, value]                  (lease == 0)
                          [8, key, value, lease]           (lease > 0; never with lease 0)
    DeleteCommand         [2, key]
    CompareAndSetCommand  [3, key, expected_value, expected_version, new_value]
                   expected_value: bytes | null (= key must be absent)
                                   | undefined (= value not compared)
                   expected_version: uint | null (= version not compared)
                   new_value: bytes | null (= delete the key)
    BatchCommand          [4, [op, op, ...]]    each op is an encoded PutCommand or DeleteCommand
    TxnCommand            [5, [compare, ...], [op, ...], [op, ...]]   compares, success, failure
                   op: an encoded PutCommand, DeleteCommand or GetOp
    GetOp                 [9, key]              (a read; only inside a TxnCommand)
    Compare               [key, target, op, operand]   (only inside a TxnCommand)
                   target: CompareTarget (VALUE 0, VERSION 1, CREATE_REVISION 2,
                           MOD_REVISION 3, LEASE 4)
                   op: CompareOp (EQUAL 0, NOT_EQUAL 1, LESS 2, GREATER 3)
                   operand: bytes for VALUE, uint for every other target
    LeaseGrantCommand     [6, ttl_ms]
    LeaseRevokeCommand    [7, lease_id, expired]   expired: bool (the leader's expiry)
    session        [0, client_id, seq, command]
                   client_id: bytes | int, seq: uint — the exactly-once
                   envelope (see sessions.py); absent for session-less writes

    AuthUserAdd ... AuthSetSecret  [10..19, ...]   users, roles, token secret
                   (prkdb/state/auth.py; applied by partition 0's AuthStore)

Tags 5-9 arrived with transactions and leases (issue 16); tags 1-4 are as
they were, so an old log decodes the same. A PutCommand without a lease keeps
tag 1 (byte-identical to before), so plain writes pay nothing for leases.

A PutCommand of a 16-byte key and a 100-byte value costs 5 bytes of framing
(array head, tag, 1-byte key head, 2-byte value head) on top of the payload;
the session envelope adds 4 more for a small client id and seq.

Decoding is strict: exactly one CBOR item in canonical (shortest) form as
``cbor2.dumps`` writes it, no trailing bytes, exact array lengths, exact types
(``bytes`` not ``str``, ``int`` not ``bool``, ints below 2**64, a known
:class:`CompareTarget`/:class:`CompareOp` and the operand type its target
needs, a lease only under tag 8 and never 0 there, a GetOp only inside a
TxnCommand). Anything else
raises :class:`CommandDecodeError` with a message naming what was wrong. Decoding
checks *shape* only; *limits* (key/value size, batch and txn length, positive TTLs) are checked by
:func:`prkdb.state.limits.validate_command`, because limits are configuration
and shape is format.

Compatibility: new command kinds get new tags; an existing tag's layout never
changes once a release has written it to a log, since logs and snapshots
outlive the binary that wrote them.

Invariant: ``decode_command(encode_command(c, i, s)) == (c, i, s)`` for every
well-typed command ``c`` (tested with hypothesis).
"""

from __future__ import annotations

import enum
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, Literal, TypeAlias, final, overload

import cbor2

from prkdb.state.auth import (
    AUTH_COMMAND_TYPES,
    AUTH_TAGS,
    AuthCommand,
    auth_command_from_cbor,
    auth_command_to_cbor,
)
from prkdb.state.errors import CommandDecodeError

__all__ = [
    "UNCHECKED",
    "BatchCommand",
    "BatchOp",
    "ClientId",
    "Command",
    "Compare",
    "CompareAndSetCommand",
    "CompareOp",
    "CompareTarget",
    "DeleteCommand",
    "GetOp",
    "LeaseGrantCommand",
    "LeaseRevokeCommand",
    "OpTag",
    "PutCommand",
    "TxnCommand",
    "TxnOp",
    "Unchecked",
    "decode_command",
    "encode_command",
]


class OpTag(enum.IntEnum):
    """First element of every encoded command array. Values are on disk: never reuse one."""

    SESSION = 0
    PUT = 1
    DELETE = 2
    COMPARE_AND_SET = 3
    BATCH = 4
    TXN = 5
    LEASE_GRANT = 6
    LEASE_REVOKE = 7
    PUT_LEASE = 8  # a PutCommand with a lease; tag 1 stays the lease-less form
    GET = 9  # a GetOp, only inside a TxnCommand


class CompareTarget(enum.IntEnum):
    """What a :class:`Compare` looks at. Values are on disk and on the wire: never reuse one.

    The wire layer (prkdb/wire/messages.py) imports this enum: one definition.
    """

    VALUE = 0
    VERSION = 1
    CREATE_REVISION = 2
    MOD_REVISION = 3
    LEASE = 4


class CompareOp(enum.IntEnum):
    """How a :class:`Compare` relates the key's field to the operand (``field OP operand``).

    Values are on disk and on the wire; the wire layer imports this enum.
    """

    EQUAL = 0
    NOT_EQUAL = 1
    LESS = 2
    GREATER = 3


class Unchecked(enum.Enum):
    """Type of the :data:`UNCHECKED` sentinel (an enum so type checkers can narrow it)."""

    UNCHECKED = "UNCHECKED"


#: ``CompareAndSetCommand.expected_value`` default: do not compare the value at all.
#: (``None`` is taken: it means "the key must be absent".)
UNCHECKED: Final = Unchecked.UNCHECKED


@final
@dataclass(frozen=True, slots=True)
class PutCommand:
    """Set ``key`` to ``value``, creating it (version 1) or bumping its version.

    ``lease``: 0 (default) = no lease, and a put without a lease detaches the
    key from any lease it had; else the id of a lease of this partition, which
    the key is attached to (revoking or expiring the lease deletes it). A
    lease that does not exist when the entry applies makes the whole command a
    ``LEASE_NOT_FOUND`` no-op.
    """

    key: bytes
    value: bytes
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class DeleteCommand:
    """Remove ``key``. Deleting an absent key succeeds and changes nothing."""

    key: bytes


@final
@dataclass(frozen=True, slots=True)
class CompareAndSetCommand:
    """Write ``new_value`` only if the key's current state matches the conditions.

    Conditions (all given ones must hold; at least one must be given):

    * ``expected_value``: ``UNCHECKED`` (default) = not compared; ``None`` = the
      key must be absent; bytes = the current value must be equal.
    * ``expected_version``: ``None`` (default) = not compared; an int = the
      current version must be equal (``0`` = the key must be absent).

    ``new_value=None`` deletes the key (delete-if-unchanged). The fields after
    ``key`` are keyword-only so a call always says which condition it means::

        CompareAndSetCommand(b"k", expected_version=3, new_value=b"v4")
        CompareAndSetCommand(b"k", expected_value=None, new_value=b"v")   # create only
    """

    key: bytes
    _: KW_ONLY
    new_value: bytes | None
    expected_value: bytes | Literal[Unchecked.UNCHECKED] | None = UNCHECKED
    expected_version: int | None = None


@final
@dataclass(frozen=True, slots=True)
class GetOp:
    """Read ``key`` inside a :class:`TxnCommand` (after the txn's earlier ops)."""

    key: bytes


@final
@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a :class:`TxnCommand`: ``key's target  op  operand``.

    An absent key has version, create and mod revision and lease 0, and *no
    value*: a VALUE compare on an absent key is false whatever ``op`` is
    (etcd's rule), so "exists" is ``VERSION GREATER 0`` and "absent" is
    ``VERSION EQUAL 0``. Values compare as byte strings (lexicographically).

    Attributes:
        key: the key compared.
        target: the record field (:class:`CompareTarget`).
        op: the relation (:class:`CompareOp`).
        operand: bytes for VALUE; an int in ``[0, 2**64)`` for the other targets.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


BatchOp: TypeAlias = PutCommand | DeleteCommand
#: The ops a :class:`TxnCommand` branch may hold.
TxnOp: TypeAlias = PutCommand | DeleteCommand | GetOp


@final
@dataclass(frozen=True, slots=True)
class BatchCommand:
    """Apply ``ops`` in order, atomically: all of them or (on any violation) none.

    Ops are applied sequentially, so a key written twice in one batch gets two
    version bumps, and a later op sees the effect of an earlier one. All ops
    share one revision (the entry's log index).
    """

    ops: tuple[BatchOp, ...]


@final
@dataclass(frozen=True, slots=True)
class TxnCommand:
    """If every compare holds, run ``success``; else run ``failure``. Atomic.

    No compares = always ``success``. The branch's ops run in order and see
    the effects of earlier ops; all share one revision (the entry's index).
    If a put of the chosen branch names a lease that does not exist, nothing
    runs (``LEASE_NOT_FOUND``). Each of ``compares``, ``success`` and
    ``failure`` holds at most ``max_batch_ops`` items (etcd's max-txn-ops).
    """

    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class LeaseGrantCommand:
    """Create a lease of ``ttl_ms`` milliseconds (> 0).

    Its id is ``index << 16 | partition`` (index = this entry's log index), so
    ids are unique in the cluster and name their partition. The state
    machine keeps no deadline (it has no clock): the partition leader
    expires leases and proposes a :class:`LeaseRevokeCommand` for them.
    """

    ttl_ms: int


@final
@dataclass(frozen=True, slots=True)
class LeaseRevokeCommand:
    """Delete lease ``lease_id`` and every key attached to it, in one entry.

    ``expired`` is True when the leader proposed it because the lease ran
    out (not a client's revoke); it changes nothing in the state machine and
    is kept for logs and tools (``prkctl wal dump``).
    """

    lease_id: int
    expired: bool = False


Command: TypeAlias = (
    PutCommand
    | DeleteCommand
    | CompareAndSetCommand
    | BatchCommand
    | TxnCommand
    | LeaseGrantCommand
    | LeaseRevokeCommand
    | AuthCommand
)
ClientId: TypeAlias = bytes | int


# ----------------------------------------------------------------------------
# Encoding


def _op_to_cbor(cmd: Command | GetOp) -> list[Any]:
    # `type(...) is` rather than match/isinstance: this runs once per write and
    # the classes are final (and a type checker narrows `cmd` on each test).
    if type(cmd) is PutCommand:
        if cmd.lease:
            return [_PUT_LEASE, cmd.key, cmd.value, cmd.lease]
        return [_PUT, cmd.key, cmd.value]
    if type(cmd) is DeleteCommand:
        return [_DELETE, cmd.key]
    if type(cmd) is CompareAndSetCommand:
        ev = cmd.expected_value
        return [
            OpTag.COMPARE_AND_SET.value,
            cmd.key,
            cbor2.undefined if ev is UNCHECKED else ev,
            cmd.expected_version,
            cmd.new_value,
        ]
    if type(cmd) is BatchCommand:
        ops = cmd.ops
        for op in ops:
            if type(op) is not PutCommand and type(op) is not DeleteCommand:
                raise TypeError(f"batch ops must be Put or Delete, got {type(op).__name__}")
        return [OpTag.BATCH.value, [_op_to_cbor(op) for op in ops]]
    if type(cmd) is TxnCommand:
        return [
            _TXN,
            [_compare_to_cbor(c) for c in cmd.compares],
            _txn_ops_to_cbor(cmd.success),
            _txn_ops_to_cbor(cmd.failure),
        ]
    if type(cmd) is LeaseGrantCommand:
        return [_LEASE_GRANT, cmd.ttl_ms]
    if type(cmd) is LeaseRevokeCommand:
        return [_LEASE_REVOKE, cmd.lease_id, cmd.expired]
    if type(cmd) is GetOp:
        return [_GET, cmd.key]
    if type(cmd) in AUTH_COMMAND_TYPES:
        return auth_command_to_cbor(cmd)
    raise TypeError(f"not a command: {type(cmd).__name__}")


def _compare_to_cbor(c: Compare) -> list[Any]:
    if type(c) is not Compare:
        raise TypeError(f"txn compares must be Compare, got {type(c).__name__}")
    # int(): the enums encode as plain ints (cbor2 would write an IntEnum the
    # same way, but the list then compares equal to a decoded one only by value).
    return [c.key, int(c.target), int(c.op), c.operand]


def _txn_ops_to_cbor(ops: tuple[TxnOp, ...]) -> list[Any]:
    for op in ops:
        if type(op) is not PutCommand and type(op) is not DeleteCommand and type(op) is not GetOp:
            raise TypeError(f"txn ops must be Put, Delete or GetOp, got {type(op).__name__}")
    return [_op_to_cbor(op) for op in ops]


def encode_command(
    cmd: Command, client_id: ClientId | None = None, seq: int | None = None
) -> bytes:
    """Encode ``cmd`` (optionally inside a session envelope) for a Raft proposal.

    Args:
        cmd: the command. Call ``validate_command`` first: encoding checks only
            what it needs to produce decodable bytes, not the limits.
        client_id: the client's session id (bytes or int); ``None`` for a
            session-less write (no exactly-once protection).
        seq: the request's sequence number within the session (non-negative,
            increasing per client); given if and only if ``client_id`` is.

    Returns:
        The entry data. Never empty, since ``b""`` is reserved for Raft no-ops.

    Raises:
        TypeError: ``cmd`` is not a command, a batch holds something other
            than PutCommand/DeleteCommand, or a txn something other than
            Compare (compares) and PutCommand/DeleteCommand/GetOp (ops).
        ValueError: only one of ``client_id``/``seq`` given, or either is ill-typed.
    """
    if (
        type(cmd) is PutCommand
        and not cmd.lease
        and type(client_id) is int
        and type(seq) is int
        and _CLIENT_ID_MIN <= client_id <= _U64_MAX
        and 0 <= seq <= _U64_MAX
    ):
        # Fast path for what the server proposes most: a PutCommand in a session with an
        # int id (the SDK's). Same array as below, same bytes; the ids pass the
        # checks `_check_session_ids` makes.
        return cbor2.dumps([_SESSION, client_id, seq, [_PUT, cmd.key, cmd.value]])
    body = _op_to_cbor(cmd)
    if client_id is None and seq is None:
        return cbor2.dumps(body)
    if client_id is None or seq is None:
        raise ValueError("client_id and seq must be given together")
    _check_session_ids(client_id, seq, ValueError)
    return cbor2.dumps([OpTag.SESSION.value, client_id, seq, body])


# ----------------------------------------------------------------------------
# Decoding


def _check_session_ids(client_id: Any, seq: Any, exc: type[Exception]) -> None:
    # Ints are bounded to 64 bits: CBOR encodes larger ones as bignum tags.
    if type(client_id) is bytes:
        pass
    elif type(client_id) is not int or not -(2**64) <= client_id < 2**64:
        raise exc(
            f"session client_id must be bytes or a 64-bit int, got {client_id!r:.40}"
        )
    if type(seq) is not int or not 0 <= seq < 2**64:
        raise exc(f"session seq must be a non-negative 64-bit int, got {seq!r:.40}")


def _loads(data: bytes) -> Any:
    """Decode one CBOR item; trailing bytes are caught later by ``_encoded_len``."""
    if type(data) is not bytes:
        raise CommandDecodeError(f"command data must be bytes, got {type(data).__name__}")
    try:
        return cbor2.loads(data)
    except cbor2.CBORDecodeError as e:
        raise CommandDecodeError(f"command is not valid CBOR: {e}") from None


def _head_len(n: int) -> int:
    """Bytes of a CBOR item head whose argument is ``n``, in shortest form."""
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def _encoded_len(item: Any) -> int:
    """Length of ``item``'s shortest-form CBOR encoding, as ``cbor2.dumps`` writes it.

    Comparing it with the input length rejects, for the price of a few
    additions instead of a streaming decoder: trailing bytes, indefinite
    lengths, non-shortest heads, and string references. So the log holds
    exactly one canonical encoding per command. Only called on items whose
    shape was already checked (bytes, ints below 2**64, None, undefined, bools,
    lists).
    """
    t = type(item)
    if t is bytes:
        return _head_len(len(item)) + len(item)
    if t is list:
        return _head_len(len(item)) + sum(map(_encoded_len, item))
    if t is int:
        return _head_len(item if item >= 0 else -1 - item)
    if t is str:  # names in auth commands (auth.py)
        n = len(item.encode("utf-8"))
        return _head_len(n) + n
    return 1  # None, undefined, True, False


def _bytes_field(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise CommandDecodeError(f"{what} must be a byte string, got {type(value).__name__}")
    return value


def _check_len(item: list[Any], n: int, name: str) -> None:
    if len(item) != n:
        raise CommandDecodeError(f"{name} must be an array of {n} items, got {len(item)}")


# Plain-int copies of the tags: comparing with an IntEnum member costs an
# attribute lookup on the enum class per test, on the per-write path.
_SESSION: Final = int(OpTag.SESSION)
_PUT: Final = int(OpTag.PUT)
_DELETE: Final = int(OpTag.DELETE)
_CAS: Final = int(OpTag.COMPARE_AND_SET)
_BATCH: Final = int(OpTag.BATCH)
_TXN: Final = int(OpTag.TXN)
_LEASE_GRANT: Final = int(OpTag.LEASE_GRANT)
_LEASE_REVOKE: Final = int(OpTag.LEASE_REVOKE)
_PUT_LEASE: Final = int(OpTag.PUT_LEASE)
_GET: Final = int(OpTag.GET)
_U64_MAX: Final = 2**64 - 1
_CLIENT_ID_MIN: Final = -(2**64)
_TARGETS: Final = {int(t): t for t in CompareTarget}
_COMPARE_OPS: Final = {int(o): o for o in CompareOp}

# Where an op array sits, for _op_from_cbor: which tags are allowed there.
_TOP: Final = 0
_IN_BATCH: Final = 1
_IN_TXN: Final = 2


def _uint_field(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64_MAX:
        raise CommandDecodeError(
            f"{what} must be a non-negative 64-bit int, got {value!r:.40}"
        )
    return value


@overload
def _op_from_cbor(item: Any, where: Literal[1]) -> BatchOp: ...
@overload
def _op_from_cbor(item: Any, where: Literal[2]) -> TxnOp: ...
@overload
def _op_from_cbor(item: Any, where: Literal[0] = ...) -> Command: ...
def _op_from_cbor(item: Any, where: int = _TOP) -> Command | GetOp:
    if type(item) is not list or not item:
        raise CommandDecodeError(f"command must be a non-empty array, got {type(item).__name__}")
    tag = item[0]
    if type(tag) is not int:
        raise CommandDecodeError(f"command tag must be an int, got {tag!r:.40}")
    if tag == _PUT:
        _check_len(item, 3, "Put")
        return PutCommand(_bytes_field(item[1], "Put key"), _bytes_field(item[2], "Put value"))
    if tag == _DELETE:
        _check_len(item, 2, "Delete")
        return DeleteCommand(_bytes_field(item[1], "Delete key"))
    if tag == _PUT_LEASE:
        _check_len(item, 4, "leased Put")
        lease = _uint_field(item[3], "leased Put lease")
        if not lease:
            raise CommandDecodeError("leased Put (tag 8) must have a lease > 0 (else tag 1)")
        return PutCommand(
            _bytes_field(item[1], "Put key"), _bytes_field(item[2], "Put value"), lease
        )
    if where == _IN_TXN:
        if tag == _GET:
            _check_len(item, 2, "GetOp")
            return GetOp(_bytes_field(item[1], "GetOp key"))
        raise CommandDecodeError(
            f"txn ops must be Put (1, 8), Delete (2) or Get (9), got tag {tag}"
        )
    if where == _IN_BATCH:
        raise CommandDecodeError(f"batch ops must be Put (1, 8) or Delete (2), got tag {tag}")
    if tag == _CAS:
        _check_len(item, 5, "CompareAndSet")
        _, key, ev, ever, nv = item
        if ev is cbor2.undefined:
            ev = UNCHECKED
        elif ev is not None:
            _bytes_field(ev, "CompareAndSet expected_value")
        if ever is not None and (type(ever) is not int or not 0 <= ever < 2**64):
            raise CommandDecodeError(
                f"CompareAndSet expected_version must be a non-negative 64-bit int or null, "
                f"got {ever!r:.40}"
            )
        if nv is not None:
            _bytes_field(nv, "CompareAndSet new_value")
        return CompareAndSetCommand(
            _bytes_field(key, "CompareAndSet key"),
            new_value=nv,
            expected_value=ev,
            expected_version=ever,
        )
    if tag == _BATCH:
        _check_len(item, 2, "Batch")
        if type(item[1]) is not list:
            raise CommandDecodeError(f"Batch ops must be an array, got {type(item[1]).__name__}")
        return BatchCommand(tuple(_op_from_cbor(op, _IN_BATCH) for op in item[1]))
    if tag == _TXN:
        _check_len(item, 4, "Txn")
        _, compares, success, failure = item
        for name, part in (("compares", compares), ("success", success), ("failure", failure)):
            if type(part) is not list:
                raise CommandDecodeError(f"Txn {name} must be an array, got {type(part).__name__}")
        return TxnCommand(
            tuple(_compare_from_cbor(c) for c in compares),
            tuple(_op_from_cbor(op, _IN_TXN) for op in success),
            tuple(_op_from_cbor(op, _IN_TXN) for op in failure),
        )
    if tag == _LEASE_GRANT:
        _check_len(item, 2, "LeaseGrant")
        return LeaseGrantCommand(_uint_field(item[1], "LeaseGrant ttl_ms"))
    if tag == _LEASE_REVOKE:
        _check_len(item, 3, "LeaseRevoke")
        expired = item[2]
        if type(expired) is not bool:
            raise CommandDecodeError(
                f"LeaseRevoke expired must be a bool, got {type(expired).__name__}"
            )
        return LeaseRevokeCommand(_uint_field(item[1], "LeaseRevoke lease_id"), expired)
    if tag == _GET:
        raise CommandDecodeError("GetOp (tag 9) is only allowed inside a Txn")
    if tag in AUTH_TAGS:
        return auth_command_from_cbor(item)
    raise CommandDecodeError(f"unknown command tag {tag}")


def _compare_from_cbor(item: Any) -> Compare:
    if type(item) is not list:
        raise CommandDecodeError(f"Txn compare must be an array, got {type(item).__name__}")
    _check_len(item, 4, "Txn compare")
    key, target, op, operand = item
    t = _TARGETS.get(target) if type(target) is int else None
    if t is None:
        raise CommandDecodeError(f"Txn compare target must be 0-4, got {target!r:.40}")
    o = _COMPARE_OPS.get(op) if type(op) is int else None
    if o is None:
        raise CommandDecodeError(f"Txn compare op must be 0-3, got {op!r:.40}")
    if t is CompareTarget.VALUE:
        _bytes_field(operand, "Txn compare operand (VALUE)")
    else:
        _uint_field(operand, f"Txn compare operand ({t.name})")
    return Compare(_bytes_field(key, "Txn compare key"), t, o, operand)


_set_put_key, _set_put_value, _set_put_lease = (
    getattr(PutCommand, name).__set__ for name in ("key", "value", "lease")
)
_new = object.__new__


def _lease_less_put(key: bytes, value: bytes) -> PutCommand:
    """``PutCommand(key, value)`` without the dataclass ``__init__`` (see results.ok_result)."""
    cmd = _new(PutCommand)
    _set_put_key(cmd, key)
    _set_put_value(cmd, value)
    _set_put_lease(cmd, 0)
    return cmd


def decode_command(data: bytes) -> tuple[Command, ClientId | None, int | None]:
    """Decode entry data written by :func:`encode_command`.

    Args:
        data: non-empty entry data (empty data is a Raft no-op and is not a
            command; ``KVStateMachine.apply`` skips it before decoding).

    Returns:
        ``(command, client_id, seq)``; ``client_id`` and ``seq`` are ``None``
        for a session-less write.

    Raises:
        CommandDecodeError: the bytes are not exactly one well-formed,
            canonically encoded command.
    """
    item = _loads(data)
    client_id: ClientId | None = None
    seq: int | None = None
    body = item
    envelope_len = 0  # encoded bytes of the session envelope around body
    if type(item) is list and item and item[0] == _SESSION and type(item[0]) is int:
        _check_len(item, 4, "session envelope")
        _, client_id, seq, body = item
        _check_session_ids(client_id, seq, CommandDecodeError)
        envelope_len = 2 + _encoded_len(client_id) + _head_len(seq)  # array head + tag 0
    # Fast path for PutCommand, the most common entry by far: the same checks as the
    # general path below, inlined (they were ~40% of the apply cost).
    if type(body) is list and len(body) == 3 and body[0] == _PUT and type(body[0]) is int:
        key, value = body[1], body[2]
        if type(key) is bytes and type(value) is bytes:
            nk, nv = len(key), len(value)
            if envelope_len + 2 + _head_len(nk) + nk + _head_len(nv) + nv == len(data):
                return _lease_less_put(key, value), client_id, seq
    cmd = _op_from_cbor(body, _TOP)
    if _encoded_len(item) != len(data):
        raise CommandDecodeError(
            f"command is not in canonical CBOR form ({len(data)} bytes for an item "
            f"that encodes in {_encoded_len(item)}; trailing bytes?)"
        )
    return cmd, client_id, seq
