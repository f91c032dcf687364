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
