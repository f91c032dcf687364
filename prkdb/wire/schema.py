"""Field types and message schemas: one table drives validation, encoding and docs.

Theory of operation
-------------------
A message schema is a `Schema`: the dataclass, its wire type id and an
ordered tuple of `Field`s (name, `WireType`, one-line meaning). The wire form
of a message is the positional array ``[type_id, field1, field2, ...]``; the
field order is the dataclass field order, which `Schema.__post_init__`
checks, so the table and the class cannot drift apart.

A `WireType` knows three things: how to turn a Python value into plain CBOR
data (`encode`), how to check untrusted plain data and turn it back
(`decode`, strict: exact types, ranges, lengths), and how to describe itself
in docs/protocol.md (`doc`). Decoding errors are `FieldError`s carrying the
path inside the value ("[3].leader"); `Schema.decode` prefixes the message
and field name and raises `RemoteProtocolError`, so every rejection names
the field it is about.

Strictness rules (also in docs/protocol.md):
- ``int`` fields reject bools (CBOR true is not 1); ``bytes`` fields reject
  text and vice versa;
- arrays have exactly the documented length (no trailing extensions within a
  protocol version);
- maps (only `Details`) have text keys and plain values.

Encoding has two paths that write the same bytes. The generic one,
``encode_frame(schema.encode(msg))``, builds a list and hands it to cbor2.
The per-operation messages (`prkdb.wire.messages.HOT_MESSAGES`) instead get an
encoder generated from their schema at import (`Schema.compile_encoder`):
straight-line code that joins CBOR heads and payloads, with each field's
piece supplied by its `WireType` (`WireType.hand_cbor`). The field list,
order and types therefore live only in the table; a type that cannot be
written by hand, or a value its guard rejects (a bool where an int belongs,
an int past 64 bits), sends that message down the generic path, so odd
input gets the generic bytes or error.

Decoding has two paths that build the same message too. The generic one,
``from_wire(decode_body(body))``, lets cbor2 turn the body into plain data
and then walks the schema. The hot messages also get a parser generated from
their schema (`Schema.compile_decoder`) that reads the body's bytes itself:
straight-line code per field, from `WireType.hand_parse`. It accepts only the
forms it knows (definite lengths, no tags, the exact field count, no trailing
byte, every field valid) and answers None for anything else, so odd or
hostile input always meets the generic path and its errors; the parser
never raises and never builds a message the generic path would refuse.
Within the generic path, a `ListOf` of scalars or of flat records (a scan
page, a txn's results) is checked by a loop generated from its item type's
`WireType.guard` expressions, with the same rule: it answers None for
anything it does not accept at once, and the plain loop then decodes or
raises.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import keyword
import linecache
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar, final

from prkdb.errors import ErrorCode
from prkdb.wire.errors import RemoteProtocolError
from prkdb.wire.frames import (
    CBOR_ARRAY,
    CBOR_BYTES,
    CBOR_UINT,
    cbor_head,
    encode_body,
    encode_frame,
    frame_of,
)

__all__ = [
    "U32_MAX",
    "U64_MAX",
    "Bool",
    "Bytes",
    "Custom",
    "Details",
    "Enum",
    "Field",
    "FieldError",
    "HandCbor",
    "HandParse",
    "ListOf",
    "Optional",
    "Record",
    "Schema",
    "Text",
    "UInt",
    "WireType",
    "expected",
    "frozen_builder",
]

_T = TypeVar("_T")

U64_MAX: Final = 2**64 - 1
U32_MAX: Final = 2**32 - 1


class FieldError(Exception):
    """A decode failure inside one field; `path` is built innermost-first.

    Internal to the schema layer: `Schema.decode` turns it into a
    `RemoteProtocolError` naming the message and field.
    """

    def __init__(self, reason: str, code: int = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.path: list[str] = []


def frozen_builder(cls: type[_T]) -> Callable[..., _T]:
    """A faster ``cls(*all_fields)`` for a frozen, slotted dataclass; for decode hot paths.

    A frozen dataclass's ``__init__`` assigns each field through
    ``object.__setattr__``, which is most of the cost of building a Raft
    `Message` (12 fields) on every decode. The builder takes every field
    positionally, in dataclass order, and stores them with the slots' own
    setters: the same object as ``cls(...)`` (tests compare them), at about
    half the cost. Like the dataclass itself it does no validation, so it
    refuses classes with a ``__post_init__`` (which the builder would skip).

    Raises:
        TypeError: `cls` is not a slotted dataclass, or has ``__post_init__``.
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__, which a builder would skip")
    names = [f.name for f in dataclasses.fields(cls)]
    params = ", ".join(f"a{i}" for i in range(len(names)))
    body = "".join(f"    set{i}(obj, a{i})\n" for i in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for i, name in enumerate(names):
        namespace[f"set{i}"] = vars(cls)[name].__set__  # the slot's member descriptor
    # Generated straight-line code, as dataclasses does for __init__ (a loop costs
    # as much as it saves).
    exec(f"def build({params}):\n    obj = new(cls)\n{body}    return obj\n", namespace)
    build: Callable[..., _T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    return build


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def expected(what: str, value: Any) -> FieldError:
    """The error for a value of the wrong type: says what was expected and what came."""
    return FieldError(f"expected {what}, got {type(value).__name__} {_show(value)}")


@final
@dataclass(frozen=True, slots=True)
class HandCbor:
    """How generated code writes one field's CBOR item without cbor2 (`WireType.hand_cbor`).

    Both are Python source over the variable holding the field's value. The
    generated encoder evaluates every field's `guard` first; only if all hold
    does it join the `parts`, so a part may assume its guard.

    Invariant: when `guard` is true, the parts joined are exactly the bytes
    cbor2 writes for ``wire_type.encode(value)``, or evaluating them raises
    `struct.error` (an int outside 0..2**64-1, from `cbor_head`), upon which
    the caller takes the generic path.
    """

    guard: str  # e.g. "type(key) is bytes"
    parts: tuple[str, ...]  # expressions of bytes, in order, e.g. ("_head(64, len(key))", "key")


# Names the generated code may use besides builtins: the CBOR head builder.
# Field variables never start with "_" (Schema.compile_encoder checks), so
# these cannot collide with them.
_HEAD: Final = "_head"
_ONE_BYTE_HEADS: Final = "_one"  # tuple: i -> bytes((i,)), for heads with an argument < 24
_CBOR_NULL, _CBOR_TRUE, _CBOR_FALSE = b"\xf6", b"\xf5", b"\xf4"


def _head_source(major: int, arg: str) -> str:
    """Source of the CBOR head of major type `major` with argument `arg` (an int expression).

    `cbor_head`, with its most common case (an argument below 24, one byte)
    inline: a tuple lookup instead of a call. Evaluates `arg` up to three times.
    """
    index = arg if major == 0 else f"{major} | {arg}"
    return f"({_ONE_BYTE_HEADS}[{index}] if 0 <= {arg} < 24 else {_HEAD}({major}, {arg}))"


HandParse = list[str]
"""How generated code reads one field's CBOR item from bytes (`WireType.hand_parse`).

Python statements, unindented, over three variables of the generated parser:
``_b`` (the body, bytes), ``_i`` (where the item starts) and the field's own
variable. They assign the field's value, validated as `WireType.decode`
would, and leave ``_i`` just past the item; for any form they do not handle
(or a value `decode` would refuse) they ``return None``. They may read past
the end of ``_b``: an IndexError or struct.error, or an ``_i`` past the
end, makes the parser answer None. Scratch variables start with ``_``.
"""


def _parse_head(major: int, var: str) -> HandParse:
    """Statements reading a CBOR head of major type `major` into `var` (its argument).

    Every definite-length form cbor2 accepts: the argument in the first byte
    (0..23) or in the 1, 2, 4 or 8 bytes after it (big-endian: the short ones
    by hand, the long ones with struct, which costs less than a slice and
    ``int.from_bytes``). Indefinite lengths and other major types make the
    parser answer None.
    """
    small = "_x < 24" if major == 0 else f"{major} <= _x < {major + 24}"  # never < 0
    return [
        "_x = _b[_i]",
        f"if {small}:",
        f"    {var} = _x{f' - {major}' if major else ''}",
        "    _i += 1",
        f"elif _x == {major + 24}:",
        f"    {var} = _b[_i + 1]",
        "    _i += 2",
        f"elif _x == {major + 25}:",
        f"    {var} = _b[_i + 1] << 8 | _b[_i + 2]",
        "    _i += 3",
        f"elif _x == {major + 26}:",
        f"    ({var},) = _u32(_b, _i + 1)",
        "    _i += 5",
        f"elif _x == {major + 27}:",
        f"    ({var},) = _u64(_b, _i + 1)",
        "    _i += 9",
        "else:",
        "    return None",
    ]


class WireType:
    """Base of field types. Subclasses override `decode`, `encode` and `doc`.

    Types that hot messages use also override `hand_cbor`.
    """

    doc: str = "?"

    def decode(self, value: Any) -> Any:
        """Check untrusted plain data and return the Python value (raise FieldError)."""
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        """Python value -> plain CBOR data. Identity for scalars."""
        return value

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor | None:
        """Source that writes a value of this type by hand, or None if it has none.

        Args:
            var: the variable holding the value in the generated code.
            env: the generated code's globals; a type whose source names an
                object adds it here, under a name starting with ``_`` and
                `var`, so that two fields' names never collide.
        """
        return None

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse | None:
        """Statements that read a value of this type from bytes (`HandParse`), or None.

        Args:
            var: the variable to assign in the generated code.
            env: as for `hand_cbor`.
        """
        return None

    def guard(self, var: str, env: dict[str, Any]) -> str | None:
        """An expression that is true exactly when `decode` would return `var` as it is.

        For decoders generated over already-decoded data (`ListOf` of scalars
        or of flat `Record`s): when every guard holds, the items are the
        decoded values, with no call per field. None for a type whose
        `decode` builds or converts its value (enums, lists, records), or that
        has no such expression. A false guard says nothing: the caller then
        decodes the generic way, which raises the error.

        Args:
            var: the variable holding the plain value in the generated code.
            env: as for `hand_cbor`.
        """
        return None

    def convert(self, var: str, env: dict[str, Any]) -> tuple[str, str] | None:
        """``(guard, value)`` expressions: when the guard holds, `decode` returns the value.

        What a generated record loop (`_compile_list_decoder`) uses per field:
        a type with a `guard` decodes to the value as it is; one that converts
        it (a strict enum: int -> member) says how. None: no such expressions.

        Args:
            var: as for `guard`.
            env: as for `hand_cbor`.
        """
        guard = self.guard(var, env)
        return None if guard is None else (guard, var)


class UInt(WireType):
    def __init__(self, lo: int = 0, hi: int = U64_MAX) -> None:
        self.lo, self.hi = lo, hi
        bits = "uint32" if hi == U32_MAX else "uint64" if hi == U64_MAX else f"uint<={hi}"
        self.doc = bits if lo == 0 else f"{bits} >= {lo}"

    def decode(self, value: Any) -> int:
        if type(value) is not int:
            raise expected("an unsigned int", value)
        if not self.lo <= value <= self.hi:
            raise FieldError(f"{value} is outside {self.lo}..{self.hi}")
        return value

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor:
        # Like `encode`, no range check: lo/hi are the receiver's business.
        return HandCbor(f"type({var}) is int", (_head_source(CBOR_UINT, var),))

    def guard(self, var: str, env: dict[str, Any]) -> str:
        return f"(type({var}) is int and {self.lo} <= {var} <= {self.hi})"

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse:
        lines = _parse_head(CBOR_UINT, var)
        # A head holds 0..2**64-1: only a narrower range needs a check.
        if self.lo > 0:
            lines += [f"if {var} < {self.lo}:", "    return None"]
        if self.hi < U64_MAX:
            lines += [f"if {var} > {self.hi}:", "    return None"]
        return lines


class Bool(WireType):
    doc = "bool"

    def decode(self, value: Any) -> bool:
        if type(value) is not bool:
            raise expected("a bool", value)
        return value

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor:
        return HandCbor(
            f"type({var}) is bool", (f"({_CBOR_TRUE!r} if {var} else {_CBOR_FALSE!r})",)
        )

    def guard(self, var: str, env: dict[str, Any]) -> str:
        return f"type({var}) is bool"

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse:
        return [
            "_x = _b[_i]",
            f"if _x == {_CBOR_TRUE[0]}:",
            f"    {var} = True",
            f"elif _x == {_CBOR_FALSE[0]}:",
            f"    {var} = False",
            "else:",
            "    return None",
            "_i += 1",
        ]


class Bytes(WireType):
    def __init__(self, min_len: int = 0) -> None:
        self.min_len = min_len
        self.doc = "bytes" if min_len == 0 else f"bytes (>= {min_len} long)"

    def decode(self, value: Any) -> bytes:
        if type(value) is not bytes:
            raise expected("bytes", value)
        if len(value) < self.min_len:
            raise FieldError(f"must be at least {self.min_len} bytes long")
        return value

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor:
        return HandCbor(
            f"type({var}) is bytes", (_head_source(CBOR_BYTES, f"len({var})"), var)
        )

    def guard(self, var: str, env: dict[str, Any]) -> str:
        if self.min_len:
            return f"(type({var}) is bytes and len({var}) >= {self.min_len})"
        return f"type({var}) is bytes"

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse:
        # A slice of bytes is bytes, as cbor2 returns (the parser only takes bytes).
        lines = [*_parse_head(CBOR_BYTES, "_n"), f"{var} = _b[_i:_i + _n]", "_i += _n"]
        if self.min_len:
            lines += [f"if len({var}) < {self.min_len}:", "    return None"]
        return lines


class Text(WireType):
    def __init__(self, max_len: int = 1024, choices: tuple[str, ...] = ()) -> None:
        self.max_len = max_len
        self.choices = choices
        if choices:
            self.doc = "text, one of " + ", ".join(f'"{c}"' for c in choices)
        else:
            self.doc = f"text (<= {max_len} chars)"

    def decode(self, value: Any) -> str:
        if type(value) is not str:
            raise expected("text", value)
        if len(value) > self.max_len:
            raise FieldError(f"text longer than {self.max_len} chars", ErrorCode.TOO_LARGE)
        if self.choices and value not in self.choices:
            raise FieldError(f"{_show(value)} is not one of {', '.join(self.choices)}")
        return value

    def guard(self, var: str, env: dict[str, Any]) -> str:
        if self.choices:
            choices = f"_{var}_choices"
            env[choices] = frozenset(self.choices)
            return f"(type({var}) is str and {var} in {choices})"
        return f"(type({var}) is str and len({var}) <= {self.max_len})"


class Enum(WireType):
    """An IntEnum on the wire as its int; unknown values are rejected (or kept, if lenient).

    Lenient enums (error codes) keep unknown ints as plain ints so a newer
    peer's codes do not break an older reader.
    """

    def __init__(self, cls: type[enum.IntEnum], *, lenient: bool = False) -> None:
        self.cls = cls
        self.lenient = lenient
        self._by_value = {int(m): m for m in cls}
        names = ", ".join(f"{int(m)} {m.name}" for m in cls)
        self.doc = f"uint ({cls.__name__}: {names})"

    def decode(self, value: Any) -> Any:
        if type(value) is not int:
            raise expected(f"a {self.cls.__name__} int", value)
        member = self._by_value.get(value)
        if member is not None:
            return member
        if self.lenient and 0 <= value <= U32_MAX:
            return value
        raise FieldError(f"{value} is not a valid {self.cls.__name__}")

    def encode(self, value: Any) -> int:
        return int(value)

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor:
        # A member is an int, so cbor_head writes int(member); other int
        # subclasses (bool above all) take the generic path.
        types = f"_{var}_types"
        env[types] = (self.cls, int)
        return HandCbor(f"type({var}) in {types}", (_head_source(CBOR_UINT, var),))

    def convert(self, var: str, env: dict[str, Any]) -> tuple[str, str] | None:
        # An int that names a member (not a bool: decode refuses it) is that
        # member. A lenient enum keeps unknown ints, which a lookup would not.
        if self.lenient:
            return None
        members = f"_{var}_members"
        env[members] = self._by_value
        return (f"(type({var}) is int and {var} in {members})", f"{members}[{var}]")

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse:
        # Members only: a lenient enum's unknown int is left to the generic path.
        members = f"_{var}_members"
        env[members] = self._by_value
        return [
            *_parse_head(CBOR_UINT, var),
            f"{var} = {members}.get({var})",
            f"if {var} is None:",
            "    return None",
        ]


class Optional(WireType):
    def __init__(self, inner: WireType) -> None:
        self.inner = inner
        self.doc = f"{inner.doc} or null"

    def decode(self, value: Any) -> Any:
        return None if value is None else self.inner.decode(value)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)

    def guard(self, var: str, env: dict[str, Any]) -> str | None:
        inner = self.inner.guard(var, env)
        return None if inner is None else f"({var} is None or {inner})"

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor | None:
        inner = self.inner.hand_cbor(var, env)
        if inner is None:
            return None
        return HandCbor(
            f"({var} is None or {inner.guard})",
            (f"({_CBOR_NULL!r} if {var} is None else {' + '.join(inner.parts)})",),
        )

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse | None:
        inner = self.inner.hand_parse(var, env)
        if inner is None:
            return None
        return [
            f"if _b[_i] == {_CBOR_NULL[0]}:",
            f"    {var} = None",
            "    _i += 1",
            "else:",
            *(f"    {line}" for line in inner),
        ]


class ListOf(WireType):
    """An array of one type, decoded into a tuple.

    A list of scalars or of flat records (every field with a `WireType.guard`)
    is decoded by code generated from the item type (`_compile_list_decoder`):
    one loop with the checks inline instead of calls per item and field, half
    the cost (the schema walk of a 1,000-key ScanOk page: 8.1M -> 4.1M
    instructions under callgrind; the whole read, cbor2's 4.4M included:
    12.4M -> 8.4M). It answers None for anything it does not accept at once,
    and the plain loop below then decodes the list or raises its error, so
    both give the same result (tests/wire/test_list_decoders.py).
    """

    def __init__(self, inner: WireType) -> None:
        self.inner = inner
        self.doc = f"[{inner.doc}]"
        self._fast = _compile_list_decoder(inner)

    def decode(self, value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise expected("an array", value)
        if self._fast is not None:
            fast: tuple[Any, ...] | None = self._fast(value)
            if fast is not None:
                return fast
        inner = self.inner.decode
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item))
            except FieldError as exc:
                exc.path.append(f"[{i}]")
                raise
        return tuple(out)

    def encode(self, value: Any) -> list[Any]:
        enc = self.inner.encode
        return [enc(v) for v in value]

    def hand_cbor(self, var: str, env: dict[str, Any]) -> HandCbor:
        # Only the empty tuple (e.g. WriteOk.ops of a Put): a hot message's
        # lists are empty, and items would need a loop; any other value takes
        # the generic path.
        empty = cbor_head(CBOR_ARRAY, 0)
        return HandCbor(f"(type({var}) is tuple and not {var})", (repr(empty),))

    def hand_parse(self, var: str, env: dict[str, Any]) -> HandParse:
        # Only the empty array, as for `hand_cbor`; items go the generic way.
        return [f"if _b[_i] != {CBOR_ARRAY}:", "    return None", f"{var} = ()", "_i += 1"]


class Custom(WireType):
    """A type whose codec lives elsewhere (e.g. Raft messages, `raft_codec`).

    `decode_fn` raises RemoteProtocolError; it is turned into a FieldError so
    the path is kept.
    """

    def __init__(
        self, doc: str, decode_fn: Callable[[Any], Any], encode_fn: Callable[[Any], Any]
    ) -> None:
        self.doc = doc
        self._decode = decode_fn
        self._encode = encode_fn

    def encode(self, value: Any) -> Any:
        return self._encode(value)

    def decode(self, value: Any) -> Any:
        try:
            return self._decode(value)
        except RemoteProtocolError as exc:
            raise FieldError(exc.message, exc.code) from None


class Details(WireType):
    """A map with text keys and plain values (null, bool, int, text, bytes, arrays, maps)."""

    doc = "map text -> plain value"

    def decode(self, value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise expected("a map", value)
        _check_plain(value)
        return value

    def encode(self, value: Any) -> dict[str, Any]:
        return dict(value)


_SCALARS: Final = (type(None), bool, str, bytes)
_CBOR_INT_MIN: Final = -(2**64)  # CBOR major type 1 reaches -2**64; beyond needs bignum tags


def _check_plain(value: Any) -> None:
    t = type(value)
    if t in _SCALARS:
        return
    if t is int:
        if not _CBOR_INT_MIN <= value <= U64_MAX:
            raise FieldError(f"int {_show(value)} is outside the cbor range -2**64..2**64-1")
        return
    if t is list:
        for i, v in enumerate(value):
            try:
                _check_plain(v)
            except FieldError as exc:
                exc.path.append(f"[{i}]")
                raise
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise FieldError(f"map keys must be text, got {type(k).__name__}")
            try:
                _check_plain(v)
            except FieldError as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return
    raise FieldError(f"{t.__name__} is not a plain value (null/bool/int/text/bytes/array/map)")


@final
@dataclass(frozen=True, slots=True)
class Field:
    """One positional field: its name (= the dataclass field), type and meaning."""

    name: str
    type: WireType
    doc: str


class Record(WireType):
    """A nested dataclass encoded as a positional array (e.g. StatusOk.nodes items)."""

    def __init__(self, cls: type, fields: tuple[Field, ...]) -> None:
        self.cls = cls
        self.fields = fields
        _check_fields(cls, fields)
        self.doc = cls.__name__
        self._names = tuple(f.name for f in fields)
        self._decoders = tuple(f.type.decode for f in fields)
        # Hot-path helpers, equivalent to the plain loops but with fewer calls:
        # all field values in one C call; encoders only where they change the
        # value; decoding compiled to straight-line code (see _compile_decode).
        if len(fields) == 1:
            name = fields[0].name
            self._values: Callable[[Any], tuple[Any, ...]] = lambda v: (getattr(v, name),)
        else:
            self._values = operator.attrgetter(*self._names)
        self._encoders = tuple(
            (i, f.type.encode) for i, f in enumerate(fields) if not _is_identity(f.type)
        )
        build = frozen_builder(cls) if _buildable(cls) else cls
        self.build: Callable[..., Any] = build
        """``cls(*fields)``, faster where it can be (`frozen_builder`); no validation."""
        self._decode_items = _compile_decode(self._decoders, build, skip=0)
        self._decode_message = _compile_decode(self._decoders, build, skip=1)

    def decode(self, value: Any) -> Any:
        if type(value) is not list:
            raise expected(f"a {self.cls.__name__} array", value)
        if len(value) != len(self.fields):
            raise FieldError(
                f"{self.cls.__name__} needs {len(self.fields)} fields, got {len(value)}"
            )
        try:
            return self._decode_items(value)
        except FieldError:
            self.name_failed_field(value)
            raise

    def name_failed_field(self, items: Any) -> NoReturn:
        """Decode field by field and raise the first FieldError, its path naming the field.

        The compiled decoder does not know which call failed; this slow path
        runs after it raised. Decoding is a pure function of the item, so the
        same field fails the same way again.
        """
        for name, dec, item in zip(self._names, self._decoders, items):
            try:
                dec(item)
            except FieldError as exc:
                exc.path.append(f".{name}")
                raise
        raise AssertionError("a field failed to decode once but not twice")

    def encode(self, value: Any) -> list[Any]:
        out = list(self._values(value))
        for i, enc in self._encoders:
            out[i] = enc(out[i])
        return out


def _compile_decode(
    decoders: tuple[Callable[[Any], Any], ...], build: Callable[..., Any], *, skip: int
) -> Callable[[list[Any]], Any]:
    """Straight-line ``build(d0(items[skip]), d1(items[skip+1]), ...)`` for exactly that many items.

    Equivalent to a loop over the decoders, at half the cost: one unpacking and
    direct calls instead of an iterator, a list and a ``*args`` call. Generated
    the way dataclasses generates ``__init__``. The caller checks the length.
    """
    n = len(decoders)
    names = [f"a{i}" for i in range(n)]
    targets = ", ".join(["_"] * skip + names) + ("," if skip + n == 1 else "")
    calls = ", ".join(f"d{i}({a})" for i, a in enumerate(names))
    namespace: dict[str, Any] = {"build": build}
    namespace.update((f"d{i}", d) for i, d in enumerate(decoders))
    exec(f"def decode(items):\n    {targets} = items\n    return build({calls})\n", namespace)
    decode: Callable[[list[Any]], Any] = namespace["decode"]
    return decode


def _compile_list_decoder(inner: WireType) -> Callable[[list[Any]], Any] | None:
    """`ListOf`'s fast decoder for items of type `inner`, or None if it has none.

    Scalars with a guard: the list itself (as a tuple) when every item's guard
    holds. Records whose fields all have `WireType.convert` expressions
    (guards, or a strict enum's lookup): every item must be a list of the
    record's length whose fields pass their guards; each is built with the
    record's builder from the fields' values. Anything else answers None (the
    caller's plain loop then decodes it, or raises the error naming the item
    and field).
    """
    env: dict[str, Any] = {}
    cls_name = type(inner).__name__
    if isinstance(inner, Record):
        names = [f"a{i}" for i in range(len(inner.fields))]
        converts = [f.type.convert(var, env) for f, var in zip(inner.fields, names, strict=True)]
        if any(c is None for c in converts):
            return None
        guards = [c[0] for c in converts if c is not None]
        values = [c[1] for c in converts if c is not None]
        env["_build"] = inner.build
        cls_name = inner.cls.__name__
        unpack = ", ".join(names) + ("," if len(names) == 1 else "")
        lines = [
            f"def decode_list_of_{cls_name}(value):",
            "    out = []",
            "    append = out.append",
            "    for item in value:",
            f"        if type(item) is not list or len(item) != {len(names)}:",
            "            return None",
            f"        {unpack} = item",
            f"        if not ({' and '.join(g for g in guards if g)}):",
            "            return None",
            f"        append(_build({', '.join(values)}))",
            "    return tuple(out)",
            "",
        ]
    else:
        guard = inner.guard("item", env)
        if guard is None:
            return None
        lines = [
            f"def decode_list_of_{cls_name}(value):",
            "    for item in value:",
            f"        if not {guard}:",
            "            return None",
            "    return tuple(value)",
            "",
        ]
    decoder: Callable[[list[Any]], Any] = _exec_generated(
        "\n".join(lines), env, f"decode_list_of_{cls_name}", f"ListOf({cls_name})"
    )
    return decoder


def _compile_encoder(
    schema: Schema, params: Sequence[str] | None, name: str, max_frame: int
) -> Callable[..., bytes]:
    """`Schema.compile_encoder`: write the function's source, then exec it.

    Generated the way `_compile_decode` and dataclasses' ``__init__`` are, for
    the same reason: straight-line code costs half a loop over the fields.
    Every constant (the head, fields fixed to their default) is a bytes
    literal in the source, merged with its neighbours.
    """
    cls = schema.cls
    names = [f.name for f in schema.fields]
    args = names if params is None else list(params)
    if args != names[: len(args)]:
        raise TypeError(
            f"{name}: parameters {tuple(args)} must start {cls.__name__}'s fields {tuple(names)}"
        )
    _check_variables(cls, names, name)
    env: dict[str, Any] = {
        _HEAD: cbor_head,
        _ONE_BYTE_HEADS: tuple(bytes((i,)) for i in range(256)),
        "_join": b"".join,
        "_pack_length": struct.Struct(">I").pack,
        "_frame_of": frame_of,
        "_struct_error": struct.error,
        "_generic": schema.encode_frame,
        "_cls": cls,
        "_MAX": max_frame,
    }
    head = cbor_head(CBOR_ARRAY, len(names) + 1) + cbor_head(CBOR_UINT, schema.type_id)
    guards: list[str] = []
    pieces: list[str | bytes] = [head]  # source (str) or constant bytes, in order
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for field in schema.fields:
        if field.name not in args:  # a trailing field fixed to its default
            default = defaults[field.name]
            if default.default is not dataclasses.MISSING:
                value = default.default
            elif default.default_factory is not dataclasses.MISSING:
                value = default.default_factory()
            else:
                raise TypeError(f"{name}: {cls.__name__}.{field.name} has no default to leave out")
            pieces.append(encode_body(field.type.encode(value)))
            continue
        hand = field.type.hand_cbor(field.name, env)
        if hand is None:
            raise TypeError(
                f"{name}: {cls.__name__}.{field.name} ({type(field.type).__name__}) "
                "has no hand encoding"
            )
        guards.append(hand.guard)
        pieces.extend(hand.parts)
    merged: list[str | bytes] = []
    for piece in pieces:  # adjacent constants become one literal
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    parts = [repr(p) if isinstance(p, bytes) else p for p in merged]

    if params is None:
        signature = "msg, max_frame"
        prologue = "".join(f"    {n} = msg.{n}\n" for n in names)
        fallback = "msg"
    else:
        signature = ", ".join([*args, "*", "max_frame=_MAX"])
        prologue = ""
        fallback = f"_cls({', '.join(args)})"
    source = (
        f"def {name}({signature}):\n"
        f"{prologue}"
        f"    if {' and '.join(guards) or 'True'}:\n"
        f"        try:\n"
        f"            _body = _join(({', '.join(parts)},))\n"
        f"        except _struct_error:\n"
        f"            pass  # an int outside 0..2**64-1: cbor2 writes it (or refuses it)\n"
        f"        else:\n"
        f"            if len(_body) <= max_frame:  # frame_of, inline\n"
        f"                return _pack_length(len(_body)) + _body\n"
        f"            return _frame_of(_body, max_frame)  # raises TOO_LARGE\n"
        f"    return _generic({fallback}, max_frame)\n"
    )
    encoder: Callable[..., bytes] = _exec_generated(source, env, name, f"the {cls.__name__} schema")
    return encoder


def _check_variables(cls: type, names: Sequence[str], name: str) -> None:
    """Refuse field names that cannot be variables of generated code.

    A field's variable must not shadow a builtin the generated code uses
    (type, len, ...) nor a helper (all named "_..."), and must be a name.
    """
    for var in names:
        if (
            var.startswith("_")
            or not var.isidentifier()
            or keyword.iskeyword(var)
            or hasattr(builtins, var)
            or var == "max_frame"
        ):
            raise TypeError(f"{name}: field {cls.__name__}.{var} cannot be a variable")


def _exec_generated(source: str, env: dict[str, Any], name: str, origin: str) -> Any:
    """Compile `source` into `env` and return its function `name`.

    A file name of its own ("<name generated from `origin`>"), with the source
    in linecache, so that tracebacks and inspect.getsource show the generated lines.
    """
    filename = f"<{name} generated from {origin}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), env)
    return env[name]


def _compile_decoder(schema: Schema, name: str) -> Callable[[bytes], Any]:
    """`Schema.compile_decoder`: write the parser's source, then exec it.

    The source is the message head's check, then every field's `HandParse`
    in order inside one ``try`` (IndexError or struct.error: the body ended early),
    then the end-of-body check and the build. Straight-line code, for the
    reason `_compile_encoder` gives.
    """
    cls = schema.cls
    names = [f.name for f in schema.fields]
    _check_variables(cls, names, name)
    env: dict[str, Any] = {
        "_u32": struct.Struct(">I").unpack_from,
        "_u64": struct.Struct(">Q").unpack_from,
        "_short": (IndexError, struct.error),
        "_cls": cls,
        "_check": schema.check,
    }
    head = cbor_head(CBOR_ARRAY, len(names) + 1) + cbor_head(CBOR_UINT, schema.type_id)
    body: list[str] = []
    for field in schema.fields:
        lines = field.type.hand_parse(field.name, env)
        if lines is None:
            raise TypeError(
                f"{name}: {cls.__name__}.{field.name} ({type(field.type).__name__}) "
                "has no hand parser"
            )
        body += lines
    if _buildable(cls):
        # `frozen_builder`'s code, inline: one call fewer per message.
        env["_new"] = object.__new__
        finish = ["    _msg = _new(_cls)"]
        for i, var in enumerate(names):
            env[f"_set{i}"] = vars(cls)[var].__set__
            finish.append(f"    _set{i}(_msg, {var})")
    else:
        finish = [f"    _msg = _cls({', '.join(names)})"]
    finish.append("    return _msg" if schema.check is None else
                  "    return None if _check(_msg) else _msg")
    source = "\n".join([
        f"def {name}(_b):",
        f"    if type(_b) is not bytes or _b[:{len(head)}] != {head!r}:",
        "        return None",
        f"    _i = {len(head)}",
        "    try:",
        *(f"        {line}" for line in body),
        "    except _short:",
        "        return None  # the body ended inside an item",
        "    if _i != len(_b):",
        "        return None  # trailing bytes, or an item ran past the end",
        *finish,
        "",
    ])
    decoder: Callable[[bytes], Any] = _exec_generated(
        source, env, name, f"the {cls.__name__} schema"
    )
    return decoder


def _is_identity(wtype: WireType) -> bool:
    """True if `wtype.encode` returns its argument unchanged (the WireType default)."""
    return type(wtype).encode is WireType.encode and "encode" not in vars(wtype)


def _buildable(cls: type) -> bool:
    """Whether `frozen_builder` can build `cls` (else the class itself is called)."""
    return (
        dataclasses.is_dataclass(cls)
        and "__slots__" in vars(cls)
        and not hasattr(cls, "__post_init__")
    )


def _check_fields(cls: type, fields: tuple[Field, ...]) -> None:
    names = tuple(f.name for f in dataclasses.fields(cls))
    declared = tuple(f.name for f in fields)
    if names != declared:
        raise TypeError(f"schema for {cls.__name__} lists {declared}, dataclass has {names}")


@final
class Schema:
    """A top-level message: `[type_id, *fields]`, plus an optional cross-field check.

    Args:
        cls: the frozen dataclass.
        type_id: the first array element; unique, never reused.
        fields: in dataclass order.
        check: called with the built message; returns an error string
            (naming the field) or None. For rules spanning fields, e.g.
            "Cas needs a condition".
    """

    __slots__ = ("_record", "check", "cls", "fields", "name", "type_id")

    def __init__(
        self,
        cls: type,
        type_id: int,
        fields: tuple[Field, ...],
        check: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.type_id = type_id
        self.fields = fields
        self.check = check
        self._record = Record(cls, fields)

    def encode(self, msg: Any) -> list[Any]:
        """Message -> ``[type_id, *fields]`` as plain data (no validation)."""
        out = [self.type_id, *self._record._values(msg)]
        for i, enc in self._record._encoders:
            out[i + 1] = enc(out[i + 1])
        return out

    def decode(self, obj: list[Any]) -> Any:
        """``[type_id, *fields]`` (type id already matched) -> message, validated.

        Raises:
            RemoteProtocolError: naming ``Message.field[path]`` and the reason.
        """
        record = self._record
        n = len(obj) - 1
        if n != len(self.fields):
            raise RemoteProtocolError(
                f"{self.name} needs {len(self.fields)} fields, got {n}",
                request_id=self._request_id(obj),
            )
        try:
            try:
                msg = record._decode_message(obj)
            except FieldError:
                record.name_failed_field(obj[1:])
                raise
        except FieldError as exc:
            path = "".join(reversed(exc.path))
            raise RemoteProtocolError(
                f"{self.name}.{path[1:]}: {exc.reason}",
                code=exc.code,
                request_id=self._request_id(obj),
            ) from None
        if self.check is not None:
            problem = self.check(msg)
            if problem is not None:
                raise RemoteProtocolError(
                    f"{self.name}.{problem}", request_id=self._request_id(obj)
                )
        return msg

    def _request_id(self, obj: list[Any]) -> int:
        """The request id of a rejected message, if its first field is a readable one."""
        if len(obj) < 2 or not self.fields or self.fields[0].name != "request_id":
            return 0
        rid = obj[1]
        return rid if type(rid) is int and 0 <= rid <= U64_MAX else 0

    def encode_frame(self, msg: Any, max_frame: int) -> bytes:
        """The generic path: ``encode_frame(self.encode(msg))``, what a generated encoder matches.

        Raises:
            LocalProtocolError: TOO_LARGE, or INTERNAL for a value cbor2 cannot encode.
        """
        return encode_frame(self.encode(msg), max_frame=max_frame)

    def compile_encoder(
        self, params: Sequence[str] | None = None, *, name: str, max_frame: int
    ) -> Callable[..., bytes]:
        """Generate this message's frame encoder from its fields (the hot-path encoders).

        The generated function checks each field with its type's guard
        (`HandCbor`) and joins the precomputed ``[type_id, ...`` head with
        every field's CBOR piece: no list, no cbor2, no schema walk. It
        writes exactly the bytes of `encode_frame` (the generic path), and
        calls the generic path itself for a value some guard rejects or that
        `cbor_head` cannot write, so errors are the generic ones too.

        Args:
            params: None for ``name(msg, max_frame)``, which encodes a
                message object (`prkdb.wire.messages.encode_message`). Else
                the parameter names of ``name(*params, max_frame=max_frame)``,
                which takes the fields as arguments and builds no message:
                the message's fields in order, except that trailing fields
                with a default may be left out, and are then always that
                default (written as precomputed bytes).
            name: the function's name (for tracebacks and profiles).
            max_frame: the default of ``max_frame`` in the second form.

        Raises:
            TypeError: `params` are not the fields as above, a field name
                cannot be a variable, or a field's type has no hand encoding.
        """
        return _compile_encoder(self, params, name, max_frame)

    def compile_decoder(self, *, name: str) -> Callable[[bytes], Any]:
        """Generate this message's parser: frame body (bytes) -> message, or None.

        The generated function reads the body's bytes itself, field by field
        (`WireType.hand_parse`), with no cbor2 and no intermediate list. When
        it returns a message, it is the one ``from_wire(decode_body(body))``
        returns (same class, equal fields, bytes as bytes). It returns None,
        and never raises, for anything else: another message, a form it does
        not read (indefinite lengths, tags, a lenient enum's unknown value),
        an invalid field, a short body or trailing bytes. The caller then
        takes the generic path, which decodes the rest and raises its errors.

        Args:
            name: the function's name (for tracebacks and profiles).

        Raises:
            TypeError: a field name cannot be a variable, or a field's type
                has no hand parser (e.g. Text, Details).
        """
        return _compile_decoder(self, name)
