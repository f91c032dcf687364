"""Decoding fast paths build exactly the messages of the generic path, and refuse the rest.

The generic path, ``from_wire(decode_body(body))``, is the reference. A parser
generated from a schema (`Schema.compile_decoder`) may answer None for
anything, but whatever message it returns must be the generic path's, equal
and with the same types; it never raises. `next_message` must then return
what ``from_wire(next_frame())`` returns, or raise the same error.
"""

from __future__ import annotations

import inspect
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.wire import messages as m
from prkdb.wire.errors import RemoteProtocolError
from prkdb.wire.frames import CLOSED, NEED_DATA, DecoderState, FrameDecoder, decode_body
from prkdb.wire.schema import Bytes, Enum, Field, ListOf, Schema, Text, UInt
from tests.wire.strategies import STRATEGIES, any_message, plain
from tests.wire.test_encoders import TOY, odd_messages


def _compiles(schema: Schema) -> bool:
    try:
        schema.compile_decoder(name="probe")
    except TypeError:
        return False
    return True


COMPILABLE = [s for s in m.SCHEMAS.values() if _compiles(s)]
PARSERS: dict[type, Callable[[bytes], Any]] = {
    s.cls: s.compile_decoder(name=f"parse_{s.name}") for s in [*COMPILABLE, TOY]
}


def generic(body: bytes, schema: Schema) -> tuple[Any, ...]:
    """What the generic path makes of `body`: the message, or the error."""
    try:
        obj = decode_body(body)
        if schema is TOY:  # not in the message table: its schema decodes it
            if type(obj) is not list or not obj or obj[0] != TOY.type_id:
                raise RemoteProtocolError("not a toy")
            return ("ok", TOY.decode(obj))
        return ("ok", m.from_wire(obj))
    except RemoteProtocolError as exc:
        return ("error", exc.code, exc.message)


def _same(a: Any, b: Any) -> bool:
    """Equal, field by field of the same type (b"x" == bytearray(b"x"), True == 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    fields = getattr(a, "__dataclass_fields__", None)
    if fields is not None:
        return all(_same(getattr(a, f), getattr(b, f)) for f in fields)
    return bool(a == b)


def check_parser(schema: Schema, body: bytes) -> Any:
    """The parser's answer for `body`, after checking it against the generic path."""
    parsed = PARSERS[schema.cls](body)  # must not raise
    if parsed is not None:
        outcome = generic(body, schema)
        assert outcome[0] == "ok", (body, outcome)
        assert _same(parsed, outcome[1]), (body, parsed, outcome[1])
    return parsed


def test_the_hot_messages_get_parsers() -> None:
    assert set(m.HOT_MESSAGES) <= {s.cls for s in COMPILABLE}
    parsers = [p for p in m._HOT_PARSERS.values() if p is not m._parse_watch_events]
    assert len(parsers) == len(m._HOT_PARSERS) - 1  # WatchEvents: written by hand
    assert sorted(p.__name__ for p in parsers) == sorted(f"parse_{c.__name__}"
                                                        for c in m.HOT_MESSAGES)
    for parse in parsers:
        assert f"def {parse.__name__}(_b)" in inspect.getsource(parse)  # the generated code


@pytest.mark.parametrize("schema", COMPILABLE, ids=lambda s: s.name)
@given(data=st.data())
def test_parser_reads_every_valid_message(schema: Schema, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[schema.cls])
    body = m.encode_message(msg)[4:]
    parsed = check_parser(schema, body)
    # Lists are read only when empty (a hot message's are); the rest goes the generic way.
    lists = [f.name for f in schema.fields if isinstance(f.type, ListOf)]
    assert parsed == msg if not any(getattr(msg, n) for n in lists) else parsed in (None, msg)


@pytest.mark.parametrize("schema", [*COMPILABLE, TOY], ids=lambda s: s.name)
@given(data=st.data())
def test_parser_agrees_with_generic_on_odd_fields(schema: Schema, data: st.DataObject) -> None:
    """Each field replaced by any plain value: wrong types, bools, negatives, bignums, floats."""
    msg = data.draw(odd_messages(schema)) if schema is TOY else data.draw(STRATEGIES[schema.cls])
    wire = [schema.type_id, *(f.type.encode(getattr(msg, f.name)) for f in schema.fields)]
    i = data.draw(st.integers(0, len(wire) - 1))
    wire[i] = data.draw(plain | st.integers(-(2**70), 2**70) | st.sampled_from([True, False]))
    try:
        body = cbor2.dumps(wire)
    except cbor2.CBOREncodeError:  # an odd toy value cbor2 cannot write either
        return
    check_parser(schema, body)


@pytest.mark.parametrize("schema", [*COMPILABLE, TOY], ids=lambda s: s.name)
@given(data=st.data())
def test_parser_agrees_with_generic_on_damaged_bytes(schema: Schema, data: st.DataObject) -> None:
    """Truncated, extended, or with a byte changed: never a message the generic path refuses."""
    msg = data.draw(odd_messages(schema)) if schema is TOY else data.draw(STRATEGIES[schema.cls])
    try:
        body = cbor2.dumps([schema.type_id,
                            *(f.type.encode(getattr(msg, f.name)) for f in schema.fields)])
    except cbor2.CBOREncodeError:  # an odd toy value cbor2 cannot write either
        return
    how = data.draw(st.sampled_from(["cut", "extend", "flip", "insert"]))
    at = data.draw(st.integers(0, len(body)))
    if how == "cut":
        body = body[:at]
    elif how == "extend":
        body += data.draw(st.binary(min_size=1, max_size=9))
    elif how == "flip" and at < len(body):
        body = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1 :]
    else:
        body = body[:at] + data.draw(st.binary(min_size=1, max_size=3)) + body[at:]
    if body:
        check_parser(schema, body)


# --- WatchEvents: read by a hand-written parser (nested event records) ----------------

WATCH = m.SCHEMAS[m.WatchEvents]
PARSERS[m.WatchEvents] = m._parse_watch_events


def watch_wire(msg: m.WatchEvents) -> list[Any]:
    return [WATCH.type_id, *(f.type.encode(getattr(msg, f.name)) for f in WATCH.fields)]


@given(STRATEGIES[m.WatchEvents])
def test_the_watch_events_parser_reads_every_valid_frame(msg: m.WatchEvents) -> None:
    parsed = check_parser(WATCH, m.encode_message(msg)[4:])
    assert parsed is not None and _same(parsed, msg)
    assert m._parse_hot(m.encode_message(msg)[4:]) is not None


@given(data=st.data())
def test_the_watch_events_parser_agrees_with_generic_on_odd_fields(data: st.DataObject) -> None:
    """A field of the frame or of one event replaced by any plain value."""
    wire = watch_wire(data.draw(STRATEGIES[m.WatchEvents]))
    odd = data.draw(plain | st.integers(-(2**70), 2**70) | st.sampled_from([True, False, 0]))
    events = wire[3]
    if events and data.draw(st.booleans()):
        row = list(events[data.draw(st.integers(0, len(events) - 1))])
        row[data.draw(st.integers(0, len(row) - 1))] = odd
        events[data.draw(st.integers(0, len(events) - 1))] = row
    else:
        wire[data.draw(st.integers(1, len(wire) - 1))] = odd
    try:
        body = cbor2.dumps(wire)
    except cbor2.CBOREncodeError:
        return
    check_parser(WATCH, body)


@given(data=st.data())
def test_the_watch_events_parser_agrees_with_generic_on_damaged_bytes(
        data: st.DataObject) -> None:
    body = cbor2.dumps(watch_wire(data.draw(STRATEGIES[m.WatchEvents])))
    at = data.draw(st.integers(0, len(body)))
    how = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    if how == "cut":
        body = body[:at]
    elif how == "flip" and at < len(body):
        body = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1 :]
    else:
        body = body[:at] + data.draw(st.binary(min_size=1, max_size=3)) + body[at:]
    if body:
        check_parser(WATCH, body)


def test_the_watch_events_parser_leaves_bad_order_and_kinds_to_the_generic_path() -> None:
    ev = m.Event(m.EventKind.PUT, b"k", 5, b"v", None)
    for wire in (
        [41, 1, 0, [watch_wire_event(ev), watch_wire_event(ev, revision=4)], 9],  # order
        [41, 1, 0, [watch_wire_event(ev)], 4],  # progress below an event
        [41, 1, 0, [[7, b"k", 5, b"v", None]], 9],  # unknown kind
        [41, 1, 0, [[1, b"k", 5, b"v", None]], 9],  # a DELETE with a value
    ):
        body = cbor2.dumps(wire)
        assert m._parse_watch_events(body) is None
        assert generic(body, WATCH)[0] == "error"


def watch_wire_event(ev: m.Event, **change: Any) -> list[Any]:
    fields = {"kind": int(ev.kind), "key": ev.key, "revision": ev.revision, "value": ev.value,
              "prev_value": ev.prev_value, **change}
    return list(fields.values())


# Heads cbor2 accepts that we never write: the argument in more bytes than needed.
def _long_head(major: int, n: int, size: int) -> bytes:
    code = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major | code]) + n.to_bytes(size, "big")


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_parser_reads_longer_heads_like_cbor2(size: int) -> None:
    body = (b"\x86\x18\x1e" + _long_head(0, 7, size) + _long_head(0x40, 2, size) + b"ab"
            + _long_head(0, 1, size) + _long_head(0, 2, size) + _long_head(0, 3, size))
    assert check_parser(m.SCHEMAS[m.GetOk], body) == m.GetOk(7, b"ab", 1, 2, 3)


BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


@pytest.mark.parametrize("n", BOUNDARIES)
def test_parser_reads_every_head_size(n: int) -> None:
    value = b"x" * min(n, 70000)
    msg = m.GetOk(max(n, 1), value, n, n, n)
    body = m.encode_message(msg)[4:]
    assert check_parser(m.SCHEMAS[m.GetOk], body) == msg
    assert type(check_parser(m.SCHEMAS[m.GetOk], body).value) is bytes


GET_OK = b"\x86\x18\x1e"  # array of 6, type id 30
WRITE_OK = b"\x87\x18\x1f"  # array of 7, type id 31


@pytest.mark.parametrize(
    ("cls", "body", "why"),
    [
        (m.GetOk, m.encode_message(m.GetOk(1, b"v", 1, 2, 3))[4:] + b"\x00", "trailing bytes"),
        (m.GetOk, m.encode_message(m.GetOk(1, b"v", 1, 2, 3))[4:-1], "the body ends early"),
        (m.GetOk, b"\x86\x19\x00\x1e\x01\xf6\x00\x00\x00", "the type id in a long head"),
        (m.GetOk, b"\x9f\x18\x1e\x01\xf6\x00\x00\x00\xff", "an indefinite array"),
        (m.GetOk, GET_OK + b"\x01\x5f\x41a\xff\x00\x00\x00", "indefinite bytes"),
        (m.GetOk, GET_OK + b"\x01\xc2\x41\x01\x00\x00\x00", "a tag"),
        (m.GetOk, GET_OK + b"\x00\xf6\x00\x00\x00", "request id 0"),
        (m.GetOk, GET_OK + b"\x01\x61a\x00\x00\x00", "text for bytes"),
        (m.GetOk, GET_OK + b"\x01\xf6\x20\x00\x00", "a negative int"),
        (m.GetOk, GET_OK + b"\x01\xf6\xf5\x00\x00", "a bool for an int"),
        (m.GetOk, GET_OK + b"\x01\xf6\x00\x00", "a field missing"),
        (m.WriteOk, WRITE_OK + b"\x01\x01\x00\x00\x00\x80", "an int for a bool"),
        (m.WriteOk, WRITE_OK + b"\x01\xf5\x00\x00\x00\x81\x82\x00\x00", "ops not empty"),
    ],
)
def test_parser_leaves_these_to_the_generic_path(cls: type, body: bytes, why: str) -> None:
    assert PARSERS[cls](body) is None, why
    assert m._parse_hot(body) is None, why


def test_the_generic_path_reads_what_the_parser_leaves() -> None:
    body = WRITE_OK + b"\x01\xf5\x00\x00\x00\x81\x82\x00\x00"
    assert m.from_wire(decode_body(body)) == m.WriteOk(1, True, 0, 0, 0, (m.OpResult(0, 0),))
    body = b"\x86\x19\x00\x1e\x01\xf6\x00\x00\x00"
    assert m.from_wire(decode_body(body)) == m.GetOk(1, None, 0, 0, 0)


def test_parser_takes_only_bytes() -> None:
    body = m.encode_message(m.GetOk(1, b"v", 1, 2, 3))[4:]
    assert PARSERS[m.GetOk](body) == m.GetOk(1, b"v", 1, 2, 3)
    assert PARSERS[m.GetOk](bytearray(body)) is None  # type: ignore[arg-type]  # (slices would be bytearrays)


def test_parser_checks_enum_members_and_ranges() -> None:
    get = m.SCHEMAS[m.Get]
    ok = m.encode_message(m.Get(5, b"k", m.ReadConsistency.STALE, 3))[4:]
    parsed = check_parser(get, ok)
    assert parsed.consistency is m.ReadConsistency.STALE
    assert PARSERS[m.Get](ok.replace(b"\x02\x03", b"\x09\x03")) is None  # not a member
    wide = ok[:-1] + _long_head(0, 2**32, 8)  # partition is a uint32
    assert PARSERS[m.Get](wide) is None
    assert generic(wide, get)[0] == "error"


def test_parser_follows_a_new_schema() -> None:
    @dataclass(frozen=True, slots=True)
    class _Tiny:
        n: int
        level: m.ReadConsistency
        blob: bytes

        def __post_init__(self) -> None:  # not buildable: the class itself is called
            pass

    tiny = Schema(_Tiny, 7, (Field("n", UInt(lo=3, hi=9), ""),
                             Field("level", Enum(m.ReadConsistency), ""),
                             Field("blob", Bytes(min_len=2), "")),
                  check=lambda t: "n: not 4" if t.n == 4 else None)
    parse = tiny.compile_decoder(name="parse_tiny")
    assert parse(cbor2.dumps([7, 3, 2, b"ab"])) == _Tiny(3, m.ReadConsistency.STALE, b"ab")
    for wire in ([7, 2, 2, b"ab"], [7, 10, 2, b"ab"], [7, 3, 2, b"a"], [7, 4, 2, b"ab"],
                 [7, 3, 3, b"ab"], [8, 3, 2, b"ab"], [7, 3, 2]):
        assert parse(cbor2.dumps(wire)) is None, wire


def test_compile_decoder_refuses_what_it_cannot_generate() -> None:
    with pytest.raises(TypeError, match=r"Hello.cluster_id \(Text\) has no hand parser"):
        m.SCHEMAS[m.Hello].compile_decoder(name="f")

    @dataclass(frozen=True, slots=True)
    class _Bad:
        len: int

    with pytest.raises(TypeError, match=r"_Bad\.len cannot be a variable"):
        Schema(_Bad, 9, (Field("len", UInt(), ""),)).compile_decoder(name="f")
    assert Text().hand_parse("x", {}) is None


# --- next_message: the frame decoder with the parsers -----------------------------------


def _frames_stream(msgs: list[Any]) -> bytes:
    return b"".join(m.encode_message(msg) for msg in msgs)


def _generic_stream(data: bytes, cuts: list[int]) -> list[Any]:
    dec = FrameDecoder()
    out: list[Any] = []
    for chunk in _chunks(data, cuts):
        dec.receive_data(chunk)
        while (item := dec.next_frame()) is not NEED_DATA:
            out.append(m.from_wire(item))
    return out


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(any_message, min_size=1, max_size=6), st.lists(st.integers(0, 10**6)))
def test_next_message_equals_from_wire_next_frame(msgs: list[Any], cuts: list[int]) -> None:
    data = _frames_stream(msgs)
    dec = FrameDecoder()
    got: list[Any] = []
    for chunk in _chunks(data, cuts):
        dec.receive_data(memoryview(bytearray(chunk)))  # a buffer the caller reuses
        while (msg := m.next_message(dec)) is not NEED_DATA:
            got.append(msg)
    assert got == msgs == _generic_stream(data, cuts)
    assert all(_same(a, b) for a, b in zip(got, msgs, strict=True))
    dec.receive_data(b"")
    assert m.next_message(dec) is CLOSED


def _error(read: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", read())
    except RemoteProtocolError as exc:
        return ("error", exc.code, exc.message, exc.request_id)


@given(st.sampled_from(list(m.HOT_MESSAGES)), st.data())
def test_next_message_errors_are_the_generic_ones(cls: type, data: st.DataObject) -> None:
    schema = m.SCHEMAS[cls]
    msg = data.draw(STRATEGIES[cls])
    wire = [schema.type_id, *(f.type.encode(getattr(msg, f.name)) for f in schema.fields)]
    wire[data.draw(st.integers(1, len(wire) - 1))] = data.draw(plain)
    body = cbor2.dumps(wire)
    if data.draw(st.booleans()):
        body += b"\x00"  # trailing: the frame layer's error, and the decoder in ERROR
    frame = struct.pack(">I", len(body)) + body
    fast, slow = FrameDecoder(), FrameDecoder()
    fast.receive_data(frame)
    slow.receive_data(frame)
    assert _error(lambda: m.next_message(fast)) == _error(lambda: m.from_wire(slow.next_frame()))
    assert fast.state is slow.state


def test_a_trailing_byte_still_puts_the_decoder_in_error() -> None:
    body = m.encode_message(m.GetOk(1, b"v", 1, 2, 3))[4:] + b"\x00"
    dec = FrameDecoder()
    dec.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(RemoteProtocolError, match="trailing bytes"):
        m.next_message(dec)
    assert dec.state is DecoderState.ERROR


def test_next_frame_without_parse_is_unchanged() -> None:
    frame = m.encode_message(m.GetOk(3, None, 0, 0, 9))
    dec = FrameDecoder()
    dec.receive_data(frame + frame[:5])
    assert dec.next_frame() == [30, 3, None, 0, 0, 9]
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(frame[5:])
    assert m.next_message(dec) == m.GetOk(3, None, 0, 0, 9)
    assert dec.buffered == 0


def test_receive_data_keeps_no_reference_to_a_reused_buffer() -> None:
    frame = m.encode_message(m.GetOk(3, b"value", 1, 2, 9))
    buf = bytearray(frame)
    dec = FrameDecoder()
    dec.receive_data(memoryview(buf)[:10])
    buf[:] = b"\xff" * len(buf)  # the caller reuses its buffer
    dec.receive_data(frame[10:])
    assert m.next_message(dec) == m.GetOk(3, b"value", 1, 2, 9)


@given(st.lists(any_message, min_size=1, max_size=4))
def test_decode_body_and_parsers_agree_on_every_message(msgs: list[Any]) -> None:
    for msg in msgs:
        body = m.encode_message(msg)[4:]
        parsed = m._parse_hot(body)
        assert parsed is None or _same(parsed, m.from_wire(decode_body(body)))
        parsed_types = (*m.HOT_MESSAGES, m.WatchEvents)
        assert (parsed is not None) == (type(msg) in parsed_types and msg == parsed)
