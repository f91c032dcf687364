"""Mutation fuzzing: a damaged valid message is either rejected cleanly or accepted as valid."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.wire import messages as m
from prkdb.wire.errors import RemoteProtocolError
from prkdb.wire.schema import FieldError, ListOf, Optional, Record, expected
from tests.wire.strategies import any_message, plain


def _paths(obj: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            out += _paths(item, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(obj)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


def _delete(obj: Any, path: tuple[int, ...]) -> Any:
    if len(path) == 1:
        return obj[: path[0]] + obj[path[0] + 1 :]
    copy = list(obj)
    copy[path[0]] = _delete(copy[path[0]], path[1:])
    return copy


@settings(max_examples=int(os.environ.get("PRKDB_FUZZ_EXAMPLES", "400")), deadline=None)
@given(any_message, st.data())
def test_mutated_messages_never_crash(msg: Any, data: st.DataObject) -> None:
    wire = cbor2.loads(cbor2.dumps(m.to_wire(msg)))
    paths = _paths(wire)
    path = data.draw(st.sampled_from(paths))
    if path and data.draw(st.booleans()):
        mutated = _delete(wire, path)
    else:
        mutated = _replace(wire, path, data.draw(plain))
    try:
        got = m.from_wire(mutated)
    except RemoteProtocolError:
        return
    # Whatever is accepted must be a valid message we could send ourselves.
    again = m.to_wire(got, check=True)
    assert m.from_wire(cbor2.loads(cbor2.dumps(again))) == got


@settings(max_examples=200, deadline=None)
@given(plain)
def test_random_plain_values_never_crash(obj: Any) -> None:
    for candidate in (obj, [50, 1, obj], [50, 1, [[0, obj]]], [14, 1, 0, obj, 1, 1]):
        with contextlib.suppress(RemoteProtocolError):
            m.from_wire(candidate)


# --- the compiled schema paths agree with a plain reading of the tables --------------


def _reference_field(wtype: Any, value: Any) -> Any:
    """WireType.decode, except Records are decoded by a plain loop (the pre-compiled way)."""
    if isinstance(wtype, Record):
        if type(value) is not list:
            raise expected(f"a {wtype.cls.__name__} array", value)
        if len(value) != len(wtype.fields):
            name, want = wtype.cls.__name__, len(wtype.fields)
            raise FieldError(f"{name} needs {want} fields, got {len(value)}")
        return wtype.cls(*_reference_fields(wtype.fields, value))
    if isinstance(wtype, ListOf):
        if type(value) is not list:
            raise expected("an array", value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_reference_field(wtype.inner, item))
            except FieldError as exc:
                exc.path.append(f"[{i}]")
                raise
        return tuple(out)
    if isinstance(wtype, Optional):
        return None if value is None else _reference_field(wtype.inner, value)
    return wtype.decode(value)


def _reference_fields(fields: Any, items: list[Any]) -> list[Any]:
    args = []
    for f, item in zip(fields, items):
        try:
            args.append(_reference_field(f.type, item))
        except FieldError as exc:
            exc.path.append(f".{f.name}")
            raise
    return args


def _reference_from_wire(obj: Any) -> Any:
    """from_wire as a loop over the schema table, with the dataclass constructors."""
    schema = m.SCHEMAS_BY_ID[obj[0]]
    if len(obj) - 1 != len(schema.fields):
        raise RemoteProtocolError(
            f"{schema.name} needs {len(schema.fields)} fields, got {len(obj) - 1}",
            request_id=schema._request_id(obj),
        )
    try:
        msg = schema.cls(*_reference_fields(schema.fields, obj[1:]))
    except FieldError as exc:
        path = "".join(reversed(exc.path))
        raise RemoteProtocolError(
            f"{schema.name}.{path[1:]}: {exc.reason}",
            code=exc.code,
            request_id=schema._request_id(obj),
        ) from None
    problem = schema.check(msg) if schema.check is not None else None
    if problem is not None:
        raise RemoteProtocolError(f"{schema.name}.{problem}", request_id=schema._request_id(obj))
    return msg


def _outcome(fn: Any, obj: Any) -> Any:
    try:
        return ("ok", fn(obj))
    except RemoteProtocolError as exc:
        return ("error", exc.message, exc.code, exc.request_id)


@settings(max_examples=int(os.environ.get("PRKDB_FUZZ_EXAMPLES", "400")), deadline=None)
@given(any_message, st.data())
def test_compiled_decoding_matches_reference(msg: Any, data: st.DataObject) -> None:
    """Same message, or the same error (text, code, request id), for damaged messages."""
    wire = cbor2.loads(cbor2.dumps(m.to_wire(msg)))
    # keep the type id: the reference only covers what happens after the table lookup
    path = data.draw(st.sampled_from([p for p in _paths(wire) if p[:1] not in ((), (0,))]))
    if data.draw(st.booleans()):
        mutated = _delete(wire, path)
    else:
        mutated = _replace(wire, path, data.draw(plain))
    assert _outcome(m.from_wire, mutated) == _outcome(_reference_from_wire, mutated)
    assert _outcome(m.from_wire, wire) == ("ok", msg)


@settings(max_examples=200, deadline=None)
@given(any_message)
def test_encoding_matches_reference(msg: Any) -> None:
    """to_wire reads the fields in one call and skips identity encoders: same data as a loop."""
    schema = m.SCHEMAS[type(msg)]
    reference = [schema.type_id] + [
        f.type.encode(getattr(msg, f.name)) for f in schema.fields
    ]
    assert cbor2.dumps(m.to_wire(msg)) == cbor2.dumps(reference)
