"""Encoding fast paths produce exactly the bytes of the generic path (cbor2.dumps, to_wire).

The generic path is the reference: every fast encoder must be byte-identical
to it for valid input, and fall back to it (same bytes, same errors) for
anything unusual.
"""

from __future__ import annotations

import inspect
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.errors import ErrorCode
from prkdb.raft.types import Entry, EntryKind, Message, MsgType
from prkdb.wire import messages as m
from prkdb.wire import raft_codec
from prkdb.wire.errors import LocalProtocolError
from prkdb.wire.frames import (
    CBOR_ARRAY,
    CBOR_BYTES,
    CBOR_UINT,
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    PreEncoded,
    cbor_head,
    encode_body,
    encode_frame,
)
from prkdb.wire.messages import to_wire
from prkdb.wire.schema import (
    Bool,
    Bytes,
    Enum,
    Field,
    ListOf,
    Optional,
    Record,
    Schema,
    Text,
    UInt,
    WireType,
)
from tests.wire.strategies import STRATEGIES, raft_batches, raft_messages

# Plain CBOR data as our messages use it, plus the odd corners cbor2 handles
# (negative ints, bignums, floats, text, maps).
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.binary(max_size=300)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=60,
)

BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


# --- the reused encoder ------------------------------------------------------------------


@given(plain)
def test_encode_body_equals_cbor2_dumps(obj: Any) -> None:
    assert encode_body(obj) == cbor2.dumps(obj)


class _Unencodable:
    pass


def _cyclic() -> list[Any]:
    inner: list[Any] = [1]
    outer = [2, [3, inner]]
    inner.append(outer)
    return outer


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([1, [2, _Unencodable()]], id="unknown-type-deep"),
        pytest.param(_cyclic(), id="cycle"),
        pytest.param([b"x" * 1000, _Unencodable()], id="after-many-bytes"),
    ],
)
def test_failed_encode_leaves_nothing_behind(bad: Any) -> None:
    """A failure halfway through an item must not leak bytes into the next body."""
    good = [31, 7, True, 1234567, 3, 2, []]
    encode_body(good)
    with pytest.raises(LocalProtocolError) as info:
        encode_body(bad)
    assert info.value.code == ErrorCode.INTERNAL
    assert encode_body(good) == cbor2.dumps(good)
    assert encode_frame(good) == struct.pack(">I", len(cbor2.dumps(good))) + cbor2.dumps(good)


def test_unknown_type_error_text_is_cbor2s() -> None:
    """The PreEncoded hook must not change how other unknown types are refused."""
    with pytest.raises(cbor2.CBOREncodeError) as native:
        cbor2.dumps([_Unencodable()])
    with pytest.raises(LocalProtocolError) as ours:
        encode_body([_Unencodable()])
    assert ours.value.message == f"cannot encode list as cbor: {native.value}"


def test_threads_get_their_own_encoder() -> None:
    """Worker threads (snapshots) encode concurrently with the event loop thread."""
    items = [[i, b"v" * (i % 300), list(range(i % 40))] for i in range(300)]
    expected = [cbor2.dumps(x) for x in items]
    errors: list[str] = []

    def work() -> None:
        for _ in range(20):
            got = [encode_body(x) for x in items]
            if got != expected:
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    assert errors == []


def test_large_body_is_not_kept() -> None:
    """Each body gets a fresh buffer: encoding a small item after a large one is small."""
    encode_body([b"x" * (4 * 1024 * 1024)])
    assert encode_body([1]) == b"\x81\x01"


# --- hand-built pieces -------------------------------------------------------------------


@pytest.mark.parametrize("n", BOUNDARIES)
def test_cbor_head_matches_cbor2(n: int) -> None:
    assert cbor_head(CBOR_UINT, n) == cbor2.dumps(n)
    payload = b"x" * n if n <= 70000 else None
    if payload is not None:
        assert cbor_head(CBOR_BYTES, n) + payload == cbor2.dumps(payload)
    if n <= 70000:
        assert cbor_head(CBOR_ARRAY, n) + b"\x00" * n == cbor2.dumps([0] * n)


@pytest.mark.parametrize("n", [-1, -24, 2**64, 2**70])
def test_cbor_head_refuses_what_cbor2_writes_differently(n: int) -> None:
    with pytest.raises(struct.error):
        cbor_head(CBOR_UINT, n)


@given(plain, plain)
def test_pre_encoded_is_spliced_in_place(a: Any, b: Any) -> None:
    obj = [a, [b, a], {"k": b}]
    spliced = [PreEncoded(cbor2.dumps(a)), [b, PreEncoded(cbor2.dumps(a))], {"k": b}]
    assert encode_body(spliced) == cbor2.dumps(obj)


# --- hand-built message encoders ---------------------------------------------------------

def generic(msg: m.WireMessage, max_frame: int = 16 * 1024 * 1024) -> bytes:
    """The reference: the schema path every fast encoder must match."""
    return encode_frame(to_wire(msg), max_frame=max_frame)


# Ints at every head-size boundary, plus values the fast paths must hand back
# to the generic path (negative, past 64 bits, bool).
edge_int = st.sampled_from(BOUNDARIES) | st.integers(0, 2**64 - 1)
odd_int = st.sampled_from([-1, 2**64, 2**70, True, False])
any_int = edge_int | odd_int
edge_bytes = st.binary(max_size=40) | st.sampled_from([b"x" * 23, b"x" * 24, b"x" * 256])
any_bytes = edge_bytes | st.sampled_from([bytearray(b"ab"), "text"])


@given(any_int, any_bytes, st.sampled_from([*m.ReadConsistency, 0, 2, True]), any_int)
def test_get_request(rid: Any, key: Any, level: Any, partition: Any) -> None:
    fast = m.encode_get_request(rid, key, level, partition)
    assert fast == generic(m.Get(rid, key, level, partition))
    assert m.encode_message(m.Get(rid, key, level, partition)) == fast


@given(any_int, any_bytes, any_bytes, any_int, any_int)
def test_put_request(rid: Any, key: Any, value: Any, client_id: Any, seq: Any) -> None:
    fast = m.encode_put_request(rid, key, value, client_id, seq)
    assert fast == generic(m.Put(rid, key, value, client_id, seq))
    assert m.encode_message(m.Put(rid, key, value, client_id, seq)) == fast


@given(any_int, any_bytes, any_int, any_int)
def test_delete_request(rid: Any, key: Any, client_id: Any, seq: Any) -> None:
    fast = m.encode_delete_request(rid, key, client_id, seq)
    assert fast == generic(m.Delete(rid, key, client_id, seq))
    assert m.encode_message(m.Delete(rid, key, client_id, seq)) == fast


@given(any_int, st.none() | any_bytes, any_int, any_int, any_int)
def test_get_ok(rid: Any, value: Any, version: Any, mod: Any, applied: Any) -> None:
    fast = m.encode_get_ok(rid, value, version, mod, applied)
    assert fast == generic(m.GetOk(rid, value, version, mod, applied))
    assert m.encode_message(m.GetOk(rid, value, version, mod, applied)) == fast


@given(any_int, st.booleans() | st.sampled_from([0, 1]), any_int, any_int, any_int)
def test_write_ok(rid: Any, ok: Any, revision: Any, version: Any, prev: Any) -> None:
    fast = m.encode_write_ok(rid, ok, revision, version, prev)
    assert fast == generic(m.WriteOk(rid, ok, revision, version, prev))
    assert m.encode_message(m.WriteOk(rid, ok, revision, version, prev)) == fast


def test_write_ok_with_ops_takes_the_generic_path() -> None:
    msg = m.WriteOk(7, True, 10, 0, 0, (m.OpResult(1, 0), m.OpResult(0, 3)))
    assert m.encode_message(msg) == generic(msg)


@pytest.mark.parametrize(
    "encode",
    [
        lambda mf: m.encode_put_request(1, b"k", b"v" * 100, 1, 1, max_frame=mf),
        lambda mf: m.encode_get_request(1, b"k" * 100, m.ReadConsistency.STALE, 0, max_frame=mf),
        lambda mf: m.encode_delete_request(1, b"k" * 100, 1, 1, max_frame=mf),
        lambda mf: m.encode_get_ok(1, b"v" * 100, 1, 1, 1, max_frame=mf),
        lambda mf: m.encode_write_ok(1, True, 2**40, 1, 1, max_frame=mf),
    ],
)
def test_fast_encoders_refuse_oversize_like_encode_frame(encode: Any) -> None:
    size = len(encode(10**6)) - 4
    assert len(encode(size)) == size + 4
    with pytest.raises(LocalProtocolError) as info:
        encode(size - 1)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert info.value.details == {"limit": size - 1, "size": size}


def test_fast_encoder_unencodable_is_the_generic_error() -> None:
    with pytest.raises(LocalProtocolError) as fast:
        m.encode_put_request(1, b"k", _Unencodable(), 1, 1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError) as slow:
        generic(m.Put(1, b"k", _Unencodable(), 1, 1))  # type: ignore[arg-type]
    assert (fast.value.code, fast.value.message) == (slow.value.code, slow.value.message)


# --- encoders generated from the schema tables ------------------------------------------
#
# The tests above pin the public encoders one by one; these check the generator
# itself, over every schema it can compile (not only today's hot messages), so a
# field added to a table is covered without a new test.


def _compiles(schema: Schema) -> bool:
    try:
        schema.compile_encoder(name="probe", max_frame=16 * 1024 * 1024)
    except TypeError:
        return False
    return True


COMPILABLE = [s for s in m.SCHEMAS.values() if _compiles(s)]
COMPILED = {
    s.cls: s.compile_encoder(name=f"encode_{s.name}", max_frame=16 * 1024 * 1024)
    for s in COMPILABLE
}


def _outcome(encode: Callable[[], bytes]) -> tuple[Any, ...]:
    """The bytes, or the error: what must match between a generated encoder and the generic one.

    TypeError is the generic path's answer to a list field that is not a
    sequence (e.g. ``WriteOk.ops=None``); the generated code must give it too.
    """
    try:
        return ("ok", encode())
    except LocalProtocolError as exc:
        return ("error", exc.code, exc.message, exc.details)
    except TypeError as exc:
        return ("TypeError", str(exc))


def odd_values(wtype: WireType) -> st.SearchStrategy[Any]:
    """Values for a field of `wtype`: valid ones at every head size, and ones the guards refuse."""
    if isinstance(wtype, Enum):
        return st.sampled_from(list(wtype.cls)) | any_int
    if isinstance(wtype, UInt):
        return any_int
    if isinstance(wtype, Bool):
        return st.booleans() | st.sampled_from([0, 1, None])
    if isinstance(wtype, Bytes):
        return any_bytes
    if isinstance(wtype, Optional):
        return st.none() | odd_values(wtype.inner)
    if isinstance(wtype, ListOf):
        empty: st.SearchStrategy[Any] = st.just(()) | st.just([])
        if not isinstance(wtype.inner, Record):  # e.g. RaftBatch.items: see the Raft tests
            return empty
        return empty | st.lists(odd_values(wtype.inner), max_size=2).map(tuple)
    if isinstance(wtype, Record):
        return st.builds(wtype.cls, *(odd_values(f.type) for f in wtype.fields))
    if isinstance(wtype, Text):  # names inside records (UserInfo)
        return st.text(max_size=10) | st.just("x" * (wtype.max_len + 1))
    raise AssertionError(f"no odd values for {type(wtype).__name__}")


def odd_messages(schema: Schema) -> st.SearchStrategy[Any]:
    return st.builds(schema.cls, *(odd_values(f.type) for f in schema.fields))


def test_the_hot_messages_are_generated() -> None:
    assert set(m.HOT_MESSAGES) <= set(COMPILED)
    for cls in m.HOT_MESSAGES:
        assert m._FAST_ENCODERS[cls].__name__ == f"encode_{cls.__name__}"


@pytest.mark.parametrize("schema", COMPILABLE, ids=lambda s: s.name)
@given(data=st.data())
def test_generated_encoder_round_trips_valid_messages(schema: Schema, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[schema.cls])
    frame = COMPILED[schema.cls](msg, 16 * 1024 * 1024)
    assert frame == generic(msg)
    if schema.cls in m.HOT_MESSAGES:
        assert m.encode_message(msg) == frame
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    assert m.from_wire(decoder.next_frame()) == msg


@pytest.mark.parametrize("schema", COMPILABLE, ids=lambda s: s.name)
@given(data=st.data())
def test_generated_encoder_equals_generic_for_odd_fields(
    schema: Schema, data: st.DataObject
) -> None:
    msg = data.draw(odd_messages(schema))
    expected = _outcome(lambda: generic(msg))
    assert _outcome(lambda: COMPILED[schema.cls](msg, 16 * 1024 * 1024)) == expected
    if schema.cls in m.HOT_MESSAGES:
        assert _outcome(lambda: m.encode_message(msg)) == expected


def _edges(wtype: WireType) -> list[Any]:
    """Every head-size boundary of `wtype`'s values, and the values its guard refuses."""
    if isinstance(wtype, (UInt, Enum)):
        members = list(wtype.cls) if isinstance(wtype, Enum) else []
        return [*members, *BOUNDARIES, -1, -24, 2**64, 2**70, True, False]
    if isinstance(wtype, Bool):
        return [True, False, 0, 1, None]
    if isinstance(wtype, Bytes):
        sizes = [0, 1, 23, 24, 255, 256, 65535, 65536]
        return [*(b"x" * n for n in sizes), bytearray(b"ab"), "text", None]
    if isinstance(wtype, Optional):
        return [None, *_edges(wtype.inner)]
    if isinstance(wtype, ListOf):
        assert isinstance(wtype.inner, Record)
        item = wtype.inner.cls(*(_edges(f.type)[2] for f in wtype.inner.fields))
        return [(), [], (item,), [item, item], None]
    raise AssertionError(f"no edges for {type(wtype).__name__}")


HOT_SAMPLES: dict[type, Any] = {
    m.Get: m.Get(7, b"k", m.ReadConsistency.STALE, 3),
    m.Put: m.Put(7, b"k", b"v", 9, 1),
    m.Delete: m.Delete(7, b"k", 9, 2),
    m.GetOk: m.GetOk(7, b"v", 2, 10, 12),
    m.WriteOk: m.WriteOk(7, True, 11, 1, 0),
}


@pytest.mark.parametrize(
    ("cls", "field"),
    [(cls, f) for cls in m.HOT_MESSAGES for f in m.SCHEMAS[cls].fields],
    ids=lambda x: x.__name__ if isinstance(x, type) else x.name,
)
def test_hot_encoders_equal_generic_at_every_edge(cls: type, field: Field) -> None:
    """Exhaustive over one field at a time: each edge value in an otherwise valid message."""
    for value in _edges(field.type):
        msg = replace(HOT_SAMPLES[cls], **{field.name: value})
        expected = _outcome(lambda: generic(msg))  # noqa: B023 (called right here)
        assert _outcome(lambda: m.encode_message(msg)) == expected, value  # noqa: B023


PUBLIC_ENCODERS: list[tuple[Callable[..., bytes], type]] = [
    (m.encode_get_request, m.Get),
    (m.encode_put_request, m.Put),
    (m.encode_delete_request, m.Delete),
    (m.encode_get_ok, m.GetOk),
    (m.encode_write_ok, m.WriteOk),
]


@pytest.mark.parametrize(("encode", "cls"), PUBLIC_ENCODERS, ids=lambda x: x.__name__)
def test_public_encoder_takes_the_fields_in_order(encode: Callable[..., bytes], cls: type) -> None:
    params = list(inspect.signature(encode).parameters.values())
    assert params[-1].name == "max_frame" and params[-1].kind is params[-1].KEYWORD_ONLY
    assert params[-1].default == DEFAULT_MAX_FRAME
    names = [f.name for f in m.SCHEMAS[cls].fields]
    assert [p.name for p in params[:-1]] == names[: len(params) - 1]
    assert encode.__doc__ and encode.__doc__.startswith(f"The frame of ``{cls.__name__}(")
    assert f"def {encode.__name__}(" in inspect.getsource(encode)  # the generated code


# A message type the tables do not have: the generator must need nothing but its schema.
@dataclass(frozen=True, slots=True)
class _Toy:
    n: int
    level: m.ReadConsistency
    flag: bool
    blob: bytes
    maybe_blob: bytes | None
    maybe_n: int | None
    ops: tuple[m.OpResult, ...] = ()


_OP = m.SCHEMAS[m.WriteOk].fields[-1].type
TOY = Schema(
    _Toy,
    99,
    (
        Field("n", UInt(), ""),
        Field("level", Enum(m.ReadConsistency), ""),
        Field("flag", Bool(), ""),
        Field("blob", Bytes(), ""),
        Field("maybe_blob", Optional(Bytes()), ""),
        Field("maybe_n", Optional(UInt()), ""),
        Field("ops", _OP, ""),
    ),
)
_TOY_FIELDS = [f.name for f in TOY.fields]
ENCODE_TOY = TOY.compile_encoder(name="encode_toy", max_frame=1000)
ENCODE_TOY_ARGS = TOY.compile_encoder(_TOY_FIELDS[:-1], name="encode_toy_args", max_frame=1000)


def _toy_generic(msg: _Toy, max_frame: int = 1000) -> bytes:
    return encode_frame(TOY.encode(msg), max_frame=max_frame)


@given(odd_messages(TOY))
def test_generated_encoders_follow_a_new_schema(msg: _Toy) -> None:
    expected = _outcome(lambda: _toy_generic(msg))
    assert _outcome(lambda: ENCODE_TOY(msg, 1000)) == expected
    args = [getattr(msg, n) for n in _TOY_FIELDS[:-1]]
    default = replace(msg, ops=())
    assert _outcome(lambda: ENCODE_TOY_ARGS(*args)) == _outcome(lambda: _toy_generic(default))


def test_generated_encoder_keeps_its_frame_limit() -> None:
    msg = _Toy(1, m.ReadConsistency.STALE, True, b"x" * 100, None, 5)
    size = len(_toy_generic(msg)) - 4
    assert ENCODE_TOY(msg, size) == _toy_generic(msg, size)
    with pytest.raises(LocalProtocolError) as info:
        ENCODE_TOY(msg, size - 1)
    assert info.value.details == {"limit": size - 1, "size": size}
    with pytest.raises(LocalProtocolError):
        ENCODE_TOY_ARGS(1, m.ReadConsistency.STALE, True, b"x" * 1000, None, 5)


def test_compile_refuses_what_it_cannot_generate() -> None:
    with pytest.raises(TypeError, match="must start _Toy's fields"):
        TOY.compile_encoder(["level", "n"], name="f", max_frame=1)
    with pytest.raises(TypeError, match=r"_Toy\.blob has no default"):
        TOY.compile_encoder(["n", "level", "flag"], name="f", max_frame=1)
    with pytest.raises(TypeError, match=r"Hello.cluster_id \(Text\) has no hand encoding"):
        m.SCHEMAS[m.Hello].compile_encoder(name="f", max_frame=1)

    @dataclass(frozen=True, slots=True)
    class Shadows:
        len: int

    with pytest.raises(TypeError, match=r"Shadows\.len cannot be a variable"):
        Schema(Shadows, 98, (Field("len", UInt(), ""),)).compile_encoder(name="f", max_frame=1)
    assert Text().hand_cbor("x", {}) is None  # text fields stay on the generic path


# --- Raft entries and batches ------------------------------------------------------------


odd_entry = st.builds(
    Entry,
    any_int,
    any_int,
    st.sampled_from(EntryKind),
    any_bytes | st.just(b""),
)


@given(st.lists(odd_entry, max_size=6))
def test_entries_cbor_equals_cbor2(entries: list[Entry]) -> None:
    expected = cbor2.dumps([raft_codec.encode_entry(e) for e in entries])
    assert raft_codec.encode_entries_cbor(entries) == expected


@given(raft_batches())
def test_raft_batch_fast_paths_equal_generic(batch: m.RaftBatch) -> None:
    expected = generic(batch)
    assert m.encode_message(batch) == expected
    assert m.encode_raft_batch(batch.from_node, batch.items) == expected
    assert m.RaftBatchEncoder(batch.from_node).encode(batch.items) == expected


@given(st.lists(raft_messages(MsgType.APP), min_size=1, max_size=4), st.data())
def test_shared_encoder_over_a_round_equals_per_frame_encoding(
    apps: list[Message], data: st.DataObject
) -> None:
    """A leader's round: the same runs of entries to several peers, in any mix of partitions."""
    enc = m.RaftBatchEncoder(1)
    for to in (2, 3, 4):
        items = tuple(
            (data.draw(st.integers(0, 2)), replace(a, to=to, from_=1, entries=tuple(a.entries)))
            for a in apps
        )
        assert enc.encode(items) == generic(m.RaftBatch(1, items))


def _app(partition: int, data: bytes, to: int = 2) -> tuple[int, Message]:
    entries = tuple(Entry(5, 101 + i, data=data) for i in range(3))
    return (partition, Message(MsgType.APP, to=to, from_=1, term=5, log_term=5, index=100,
                               entries=entries, commit=99))


def test_shared_encoder_never_mixes_up_equal_looking_runs() -> None:
    """Same partition/index/count but other data (a new leader's log) must be re-encoded."""
    enc = m.RaftBatchEncoder(1)
    first = (_app(0, b"old"), _app(1, b"other"))
    assert enc.encode(first) == generic(m.RaftBatch(1, first))
    later = (_app(0, b"new", to=3), _app(1, b"other", to=3))
    assert enc.encode(later) == generic(m.RaftBatch(1, later))


def test_shared_encoder_keeps_the_frame_limit() -> None:
    items = (_app(0, b"v" * 1000),)
    size = len(generic(m.RaftBatch(1, items))) - 4
    assert len(m.RaftBatchEncoder(1, max_frame=size).encode(items)) == size + 4
    with pytest.raises(LocalProtocolError) as info:
        m.RaftBatchEncoder(1, max_frame=size - 1).encode(items)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_local_message_is_refused_like_the_generic_path() -> None:
    beat = Message(MsgType.BEAT, to=1, from_=1, term=1)
    with pytest.raises(LocalProtocolError) as slow:
        generic(m.RaftBatch(1, ((0, beat),)))
    with pytest.raises(LocalProtocolError) as fast:
        m.RaftBatchEncoder(1).encode(((0, beat),))
    assert fast.value.message == slow.value.message


# --- ScanOk: a hand-written fast encoder (a page of records, not a generated one) -------


@settings(max_examples=100, deadline=None)
@given(STRATEGIES[m.ScanOk])
def test_scan_ok_encoder_equals_generic(msg: m.ScanOk) -> None:
    assert m._FAST_ENCODERS[m.ScanOk] is m._encode_scan_ok
    assert m.encode_message(msg) == generic(msg, DEFAULT_MAX_FRAME)


@settings(max_examples=200, deadline=None)
@given(odd_messages(m.SCHEMAS[m.ScanOk]))
def test_scan_ok_encoder_equals_generic_for_odd_fields(msg: Any) -> None:
    assert _outcome(lambda: m.encode_message(msg)) == _outcome(
        lambda: generic(msg, DEFAULT_MAX_FRAME)
    )


def test_scan_ok_encoder_keeps_the_frame_limit() -> None:
    page = m.ScanOk(1, m.key_values([(b"k%d" % i, b"v" * 100, 1, 2, 2, 0) for i in range(20)]),
                    20, False, 9)
    size = len(generic(page)) - 4
    assert len(m.encode_message(page, max_frame=size)) == size + 4
    with pytest.raises(LocalProtocolError) as info:
        m.encode_message(page, max_frame=size - 1)
    assert info.value.code == ErrorCode.TOO_LARGE


# --- WatchEvents: the hot stream, hand-written as ScanOk -------------------------------


@settings(max_examples=100, deadline=None)
@given(STRATEGIES[m.WatchEvents])
def test_watch_events_encoder_equals_generic(msg: m.WatchEvents) -> None:
    assert m._FAST_ENCODERS[m.WatchEvents] is m._encode_watch_events
    assert m.encode_message(msg) == generic(msg, DEFAULT_MAX_FRAME)


@settings(max_examples=200, deadline=None)
@given(odd_messages(m.SCHEMAS[m.WatchEvents]))
def test_watch_events_encoder_equals_generic_for_odd_fields(msg: Any) -> None:
    assert _outcome(lambda: m.encode_message(msg)) == _outcome(
        lambda: generic(msg, DEFAULT_MAX_FRAME)
    )


def test_watch_events_encoder_writes_kinds_as_ints() -> None:
    """A kind given as a bool or a plain int is written as the generic path's int."""
    for kind in (True, 1, m.EventKind.DELETE):
        msg = m.WatchEvents(1, 0, (m.Event(kind, b"k", 3, None, None),), 3)  # type: ignore[arg-type]
        assert m.encode_message(msg) == generic(msg, DEFAULT_MAX_FRAME)


def test_watch_events_encoder_keeps_the_frame_limit() -> None:
    frame = m.WatchEvents(1, 0, tuple(
        m.Event(m.EventKind.PUT, b"k%d" % i, 5 + i, b"v" * 100, None) for i in range(20)
    ), 30)
    size = len(generic(frame)) - 4
    assert len(m.encode_message(frame, max_frame=size)) == size + 4
    with pytest.raises(LocalProtocolError) as info:
        m.encode_message(frame, max_frame=size - 1)
    assert info.value.code == ErrorCode.TOO_LARGE


@settings(max_examples=100, deadline=None)
@given(STRATEGIES[m.WatchEvents])
def test_a_shared_event_list_makes_the_same_frame(msg: m.WatchEvents) -> None:
    """The frame many watches share (events encoded once) is `encode_message`'s frame."""
    events = m.encode_event_list(msg.events)
    assert events is not None
    assert m.watch_events_frame(msg.request_id, msg.partition, events, msg.progress) == (
        generic(msg, DEFAULT_MAX_FRAME))


def test_a_shared_event_list_refuses_odd_kinds_and_keeps_the_frame_limit() -> None:
    assert m.encode_event_list([m.Event(1, b"k", 3, None, None)]) is None  # type: ignore[arg-type]
    msg = m.WatchEvents(7, 2, (m.Event(m.EventKind.PUT, b"k", 3, b"v" * 50, None),), 9)
    events = m.encode_event_list(msg.events)
    assert events is not None
    size = len(generic(msg)) - 4
    assert len(m.watch_events_frame(7, 2, events, 9, max_frame=size)) == size + 4
    with pytest.raises(LocalProtocolError) as info:
        m.watch_events_frame(7, 2, events, 9, max_frame=size - 1)
    assert info.value.code == ErrorCode.TOO_LARGE


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=8),
                          *[st.integers(0, 2**64 - 1)] * 4), max_size=5))
def test_key_values_equals_the_constructor(items: list[Any]) -> None:
    built = m.key_values(items)
    assert type(built) is tuple
    assert built == tuple(m.KeyValue(*item) for item in items)
    assert all(type(kv) is m.KeyValue for kv in built)
