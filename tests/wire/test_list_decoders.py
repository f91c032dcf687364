"""Generated list decoders (`ListOf` of scalars and flat records) agree with the plain loop.

`ListOf.decode` first tries the decoder generated from its item type, which
answers None for anything it does not accept at once; the plain loop then
decodes or raises. So with or without the generated decoder, every list must
decode to the same tuple (equal items of the same types) or raise the same
error, for valid lists and for lists with an odd item or field anywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.wire import messages as m
from prkdb.wire.schema import (
    U64_MAX,
    Bool,
    Bytes,
    Enum,
    Field,
    FieldError,
    ListOf,
    Optional,
    Record,
    Text,
    UInt,
)
from tests.wire.strategies import STRATEGIES, plain
from tests.wire.test_decoders import _same


def _lists_in_schemas() -> Iterator[tuple[str, ListOf]]:
    for schema in m.SCHEMAS.values():
        for f in schema.fields:
            if isinstance(f.type, ListOf):
                yield f"{schema.name}.{f.name}", f.type


LISTS = dict(_lists_in_schemas())
FAST = {name: t for name, t in LISTS.items() if t._fast is not None}


def outcome(wtype: ListOf, value: Any, *, fast: bool) -> tuple[Any, ...]:
    """What ``wtype.decode(value)`` gives, with or without its generated decoder."""
    saved = wtype._fast
    if not fast:
        wtype._fast = None
    try:
        return ("ok", wtype.decode(value))
    except FieldError as exc:
        return ("error", exc.reason, exc.code, exc.path)
    finally:
        wtype._fast = saved


def check_same(wtype: ListOf, value: Any) -> None:
    got, want = outcome(wtype, value, fast=True), outcome(wtype, value, fast=False)
    assert got[0] == want[0], (value, got, want)
    if got[0] == "ok":
        assert _same(got[1], want[1]), (value, got, want)
    else:
        assert got == want


def test_the_flat_lists_are_generated() -> None:
    """The lists a reply carries many of, and request lists of scalars."""
    assert {
        "ScanOk.kvs", "TxnOk.results", "LeaseListOk.leases", "LeaseOk.keys",
        "LeaseKeepAliveOk.remaining_ms", "LeaseKeepAlive.lease_ids", "WriteOk.ops",
        "StatusOk.nodes", "WatchEvents.events", "Txn.success", "Batch.ops",
    } <= set(FAST)
    # a nested list builds its value: no convert expression, no generated loop
    assert LISTS["StatusOk.partitions"]._fast is None


ODD: list[Any] = ["s", b"", b"b", True, False, -1, 0, 1, 2**64 - 1, 2**64, 1.5, None, [], {},
                  cbor2.undefined]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FAST)), st.data())
def test_valid_lists_decode_alike(name: str, data: st.DataObject) -> None:
    msg_name, field_name = name.split(".")
    cls = next(c for c in m.SCHEMAS if c.__name__ == msg_name)
    msg = data.draw(STRATEGIES[cls])
    schema = m.SCHEMAS[cls]
    index = [f.name for f in schema.fields].index(field_name)
    value = cbor2.loads(cbor2.dumps(m.to_wire(msg)[index + 1]))
    check_same(LISTS[name], value)
    assert outcome(LISTS[name], value, fast=True)[0] == "ok"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FAST)), st.data())
def test_odd_items_and_fields_decode_alike(name: str, data: st.DataObject) -> None:
    msg_name, field_name = name.split(".")
    cls = next(c for c in m.SCHEMAS if c.__name__ == msg_name)
    msg = data.draw(STRATEGIES[cls])
    index = [f.name for f in m.SCHEMAS[cls].fields].index(field_name)
    value = cbor2.loads(cbor2.dumps(m.to_wire(msg)[index + 1]))
    if not value:
        value = [data.draw(plain)]
    i = data.draw(st.integers(0, len(value) - 1))
    odd = data.draw(st.sampled_from(ODD) | plain)
    item = value[i]
    if isinstance(item, list) and item and data.draw(st.booleans()):
        item[data.draw(st.integers(0, len(item) - 1))] = odd  # one field
    elif isinstance(item, list) and data.draw(st.booleans()):
        value[i] = item[:-1] if data.draw(st.booleans()) else [*item, 0]  # wrong length
    else:
        value[i] = odd  # the whole item
    check_same(LISTS[name], value)


@pytest.mark.parametrize(
    "wtype",
    [UInt(), UInt(lo=1), UInt(hi=10), UInt(lo=5, hi=7), Bool(), Bytes(), Bytes(min_len=2),
     Text(max_len=3), Text(choices=("a", "bc")), Optional(UInt(hi=3)), Optional(Bytes(min_len=1))],
    ids=lambda t: t.doc,
)
def test_scalar_guards_agree_with_decode(wtype: Any) -> None:
    """A guard holds exactly when decode returns the value as it is."""
    env: dict[str, Any] = {}
    guard = eval(f"lambda v: {wtype.guard('v', env)}", env)  # our own source
    for value in [*ODD, "a", "bc", "abcd", b"ab", 3, 5, 7, 8, 10, 11, U64_MAX, U64_MAX + 1]:
        try:
            ok = wtype.decode(value) is value
        except FieldError:
            ok = False
        assert guard(value) == ok, value
        check_same(ListOf(wtype), [value])


class _E(enum.IntEnum):
    A = 0


@dataclass(frozen=True, slots=True)
class _R:
    a: int
    e: _E


def test_records_with_enum_fields_convert_them() -> None:
    """A strict enum field is looked up in the generated loop; a lenient one is not."""
    R, E = _R, _E
    rec = Record(R, (Field("a", UInt(), ""), Field("e", Enum(E), "")))
    assert ListOf(rec)._fast is not None
    got = ListOf(rec).decode([[1, 0]])
    assert got == (R(1, E.A),) and type(got[0].e) is E
    for odd in ODD:
        check_same(ListOf(rec), [[1, odd]])
    lenient = Record(R, (Field("a", UInt(), ""), Field("e", Enum(E, lenient=True), "")))
    assert ListOf(lenient)._fast is None


@pytest.mark.parametrize("wtype", [Enum(_E), Enum(m.EventKind)], ids=lambda t: t.doc)
def test_enum_convert_agrees_with_decode(wtype: Enum) -> None:
    """The convert guard holds exactly when decode returns a member, and the value is it."""
    env: dict[str, Any] = {}
    convert = wtype.convert("v", env)
    assert convert is not None
    guard = eval(f"lambda v: {convert[0]}", env)  # our own source
    value = eval(f"lambda v: {convert[1]}", env)
    for candidate in [*ODD, 2, 3, *wtype.cls]:
        try:
            want = wtype.decode(candidate)
        except FieldError:
            want = None
        if guard(candidate):
            assert want is not None and value(candidate) is want, candidate
        else:
            assert want is None, candidate
