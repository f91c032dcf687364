"""Commands of the KV state machine and their compact CBOR log encoding.

Theory of operation
-------------------
A client write becomes one command, encoded once by the leader, stored in the
Raft log (so in the WAL of every replica) and decoded once per replica at
apply time. The encoding therefore favours size and decode speed over
self-description: every command is a short CBOR array whose first element is
an integer op tag (:class:`OpTag`), never a map with string keys::

    PutCommand            [1, key, value]
    DeleteCommand         [2, key]
    CompareAndSetCommand  [3, key, expected_value, expected_version, new_value]
                   expected_value: bytes | null (= key must be absent)
                                   | undefined (= value not compared)
                   expected_version: uint | null (= version not compared)
                   new_value: bytes | null (= delete the key)
    BatchCommand          [4, [op, op, ...]]    each op is an encoded PutCommand or DeleteCommand
    session        [0, client_id, seq, command]
                   client_id: bytes | int, seq: uint — the exactly-once
                   envelope (see sessions.py); absent for session-less writes

A PutCommand of a 16-byte key and a 100-byte value costs 5 bytes of framing
(array head, tag, 1-byte key head, 2-byte value head) on top of the payload;
the session envelope adds 4 more for a small client id and seq.

Decoding is strict: exactly one CBOR item in canonical (shortest) form as
``cbor2.dumps`` writes it, no trailing bytes, exact array lengths, exact types
(``bytes`` not ``str``, ``int`` not ``bool``, ints below 2**64). Anything else
raises :class:`CommandDecodeError` with a message naming what was wrong. Decoding
checks *shape* only; *limits* (key/value size, batch length) are checked by
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

from prkdb.state.errors import CommandDecodeError

__all__ = [
    "UNCHECKED",
    "BatchCommand",
    "BatchOp",
    "ClientId",
    "Command",
    "CompareAndSetCommand",
    "DeleteCommand",
    "OpTag",
    "PutCommand",
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


class Unchecked(enum.Enum):
    """Type of the :data:`UNCHECKED` sentinel (an enum so type checkers can narrow it)."""

    UNCHECKED = "UNCHECKED"


#: ``CompareAndSetCommand.expected_value`` default: do not compare the value at all.
#: (``None`` is taken: it means "the key must be absent".)
UNCHECKED: Final = Unchecked.UNCHECKED


@final
@dataclass(frozen=True, slots=True)
class PutCommand:
    """Set ``key`` to ``value``, creating it (version 1) or bumping its version."""

    key: bytes
    value: bytes


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


BatchOp: TypeAlias = PutCommand | DeleteCommand


@final
@dataclass(frozen=True, slots=True)
class BatchCommand:
    """Apply ``ops`` in order, atomically: all of them or (on any violation) none.

    Ops are applied sequentially, so a key written twice in one batch gets two
    version bumps, and a later op sees the effect of an earlier one. All ops
    share one revision (the entry's log index).
    """

    ops: tuple[BatchOp, ...]


Command: TypeAlias = PutCommand | DeleteCommand | CompareAndSetCommand | BatchCommand
ClientId: TypeAlias = bytes | int


# ----------------------------------------------------------------------------
# Encoding


def _op_to_cbor(cmd: Command) -> list[Any]:
    # `type(...) is` rather than match/isinstance: this runs once per write and
    # the classes are final (and a type checker narrows `cmd` on each test).
    if type(cmd) is PutCommand:
        return [OpTag.PUT.value, cmd.key, cmd.value]
    if type(cmd) is DeleteCommand:
        return [OpTag.DELETE.value, cmd.key]
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
    raise TypeError(f"not a command: {type(cmd).__name__}")


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
        TypeError: ``cmd`` is not a command, or a batch holds something other
            than PutCommand/DeleteCommand.
        ValueError: only one of ``client_id``/``seq`` given, or either is ill-typed.
    """
    if (
        type(cmd) is PutCommand
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
    shape was already checked (bytes, ints below 2**64, None, undefined, lists).
    """
    t = type(item)
    if t is bytes:
        return _head_len(len(item)) + len(item)
    if t is list:
        return _head_len(len(item)) + sum(map(_encoded_len, item))
    if t is int:
        return _head_len(item if item >= 0 else -1 - item)
    return 1  # None, undefined


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
_U64_MAX: Final = 2**64 - 1
_CLIENT_ID_MIN: Final = -(2**64)


@overload
def _op_from_cbor(item: Any, *, in_batch: Literal[True]) -> BatchOp: ...
@overload
def _op_from_cbor(item: Any, *, in_batch: bool = False) -> Command: ...
def _op_from_cbor(item: Any, *, in_batch: bool = False) -> Command:
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
    if in_batch:
        raise CommandDecodeError(f"batch ops must be Put (1) or Delete (2), got tag {tag}")
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
        return BatchCommand(tuple(_op_from_cbor(op, in_batch=True) for op in item[1]))
    raise CommandDecodeError(f"unknown command tag {tag}")


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
                return PutCommand(key, value), client_id, seq
    cmd = _op_from_cbor(body)
    if _encoded_len(item) != len(data):
        raise CommandDecodeError(
            f"command is not in canonical CBOR form ({len(data)} bytes for an item "
            f"that encodes in {_encoded_len(item)}; trailing bytes?)"
        )
    return cmd, client_id, seq
