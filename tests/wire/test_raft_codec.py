"""raft_codec: round trips of every wire MsgType, compactness, and strict rejection."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.raft.types import (
    LOCAL_MSGS,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from prkdb.wire import raft_codec
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.raft_codec import (
    WIRE_MSG_TYPES,
    decode_entry,
    decode_message,
    decode_snapshot,
    encode_entry,
    encode_message,
)
from prkdb.wire.schema import frozen_builder
from tests.wire.strategies import raft_messages

SNAP = Snapshot(SnapshotMeta(10, 3, ConfState((1, 2, 3))), b"state")


def through_cbor(obj: Any) -> Any:
    return cbor2.loads(cbor2.dumps(obj))


@pytest.mark.parametrize("mtype", sorted(WIRE_MSG_TYPES), ids=lambda t: t.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(mtype: MsgType, data: st.DataObject) -> None:
    msg = data.draw(raft_messages(mtype))
    assert decode_message(through_cbor(encode_message(msg))) == msg


def test_local_types_are_not_wire_types() -> None:
    assert WIRE_MSG_TYPES.isdisjoint(LOCAL_MSGS)
    assert frozenset(MsgType) == WIRE_MSG_TYPES | LOCAL_MSGS


@pytest.mark.parametrize("mtype", sorted(LOCAL_MSGS), ids=lambda t: t.name)
def test_local_types_rejected_both_ways(mtype: MsgType) -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Message(mtype, to=1, from_=2))
    with pytest.raises(RemoteProtocolError, match="type"):
        decode_message([int(mtype), 1, 2, 0])


def test_heartbeat_is_compact() -> None:
    hb = Message(MsgType.HEARTBEAT, to=2, from_=1, term=7, commit=42)
    wire = encode_message(hb)
    assert wire == [10, 2, 1, 7, 0, 0, [], 42]
    assert len(cbor2.dumps(wire)) <= 12
    vote = Message(MsgType.VOTE_RESP, to=2, from_=1, term=7)
    assert encode_message(vote) == [6, 2, 1, 7]


def test_reject_true_and_snapshot_are_kept() -> None:
    m = Message(MsgType.APP_RESP, to=1, from_=2, term=3, index=5, reject=True, reject_hint=4)
    assert encode_message(m) == [4, 1, 2, 3, 0, 5, [], 0, True, 4]
    s = Message(MsgType.SNAP, to=2, from_=1, term=3, snapshot=SNAP)
    assert encode_message(s)[-1] == [10, 3, [1, 2, 3], b"state"]
    assert decode_message(through_cbor(encode_message(s))) == s


def test_entry_layout() -> None:
    assert encode_entry(Entry(1, 2)) == [1, 2]
    assert encode_entry(Entry(1, 2, data=b"x")) == [1, 2, b"x"]
    assert encode_entry(Entry(1, 2, EntryKind.CONF_CHANGE)) == [1, 2, b"", 1]
    for e in (Entry(1, 2), Entry(1, 2, data=b"x"), Entry(1, 2, EntryKind.CONF_CHANGE, b"c")):
        assert decode_entry(encode_entry(e)) == e


GOOD = [3, 2, 1, 5, 4, 10, [[5, 11, b"a"]], 9]  # APP: prev 10/4, one entry 11 at term 5


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ("nope", "array"),
        ([3, 2, 1], "4..12"),
        ([*GOOD, False, 0, b"", None, "extra"], "4..12"),
        ([99, 2, 1, 5], "type"),
        ([True, 2, 1, 5], "type"),
        ([3.0, 2, 1, 5], "type"),
        ([10, 0, 1, 5], "to"),
        ([10, 2, 0, 5], "from"),
        ([10, 2, -1, 5], "from"),
        ([10, 2, 1, -5], "term"),
        ([10, 2, 1, 2**64], "term"),
        ([10, 2, 1, True], "term"),
        ([10, 2, 1, 5, "0"], "log_term"),
        ([10, 2, 1, 5, 0, None], "index"),
        ([10, 2, 1, 5, 0, 0, {}], "entries"),
        ([10, 2, 1, 5, 0, 0, [], 1.5], "commit"),
        ([11, 2, 1, 5, 0, 0, [], 0, 1], "reject"),
        ([11, 2, 1, 5, 0, 0, [], 0, False, -1], "reject_hint"),
        ([10, 2, 1, 5, 0, 0, [], 0, False, 0, "ctx"], "context"),
        ([10, 2, 1, 5, 0, 0, [[1, 1]]], "must not carry entries"),
        ([10, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [1], b""]], "snapshot"),
        ([9, 2, 1, 5], "SNAP must carry"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [0, 1, [1], b""]], "index"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 0, [1], b""]], "term"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [], b""]], "voters"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [2, 1], b""]], "voters"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [1, 1], b""]], "voters"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [0], b""]], "voters"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [1], "s"]], "data"),
        ([9, 2, 1, 5, 0, 0, [], 0, False, 0, b"", [1, 1, [1]]], "snapshot"),
        ([3, 2, 1, 5, 4, 10, [[5, 12, b"a"]], 9], "does not follow"),
        ([3, 2, 1, 5, 4, 10, [[6, 11, b"a"]], 9], "term 6"),
        ([3, 2, 1, 5, 4, 10, [[3, 11, b"a"]], 9], "term 3"),
        ([3, 2, 1, 5, 4, 10, [[5, 11], [4, 12]], 9], "term 4"),
        ([3, 2, 1, 5, 0, 0, [[0, 1]], 9], "term 0"),
        ([3, 2, 1, 5, 4, 10, [[5, 11, "a"]], 9], "data"),
        ([3, 2, 1, 5, 4, 10, [[5, 11, b"a", 7]], 9], "kind"),
        ([3, 2, 1, 5, 4, 10, [[5, 11, b"a", False]], 9], "kind"),
        ([3, 2, 1, 5, 4, 10, [[5]], 9], "2..4"),
        ([3, 2, 1, 5, 4, 10, [(5, 11)], 9], "entry"),
        ([3, 2, 1, 5, 4, 10, [[5, 11, b"a", 0, 0]], 9], "2..4"),
    ],
)
def test_malformed_rejected(obj: Any, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode_message(obj)


def test_good_app_accepted() -> None:
    m = decode_message(GOOD)
    assert m.type is MsgType.APP and m.entries == (Entry(5, 11, data=b"a"),)
    assert isinstance(m.type, MsgType)


def test_prop_entries_not_checked_for_contiguity() -> None:
    m = decode_message([2, 1, 2, 0, 0, 0, [[0, 0, b"cmd"]]])
    assert m.entries == (Entry(0, 0, data=b"cmd"),)


def test_decode_snapshot_direct() -> None:
    assert decode_snapshot([10, 3, [1, 2, 3], b"state"]) == SNAP


# --- the APP fast path agrees with the strict path -----------------------------------

U64 = 2**64 - 1
_near_uint = st.one_of(
    st.integers(0, 6), st.sampled_from([U64 - 1, U64, U64 + 1, -1]), st.booleans()
)


@st.composite
def app_entries(draw: Any) -> tuple[list[Any], int, int, int]:
    """(raw entries, index, log_term, term): mostly valid, each field sometimes off."""
    index = draw(st.sampled_from([0, 1, 100, U64 - 3, U64 - 1, U64]))
    log_term = draw(st.integers(0, 4))
    term = draw(st.integers(0, 6) | st.just(U64))
    raw: list[Any] = []
    expect, t = index + 1, max(log_term, 1)

    def off(good: Any, bad: st.SearchStrategy[Any]) -> Any:
        return draw(bad) if draw(st.integers(0, 15)) == 0 else good

    for _ in range(draw(st.integers(1, 5))):
        t = off(draw(st.integers(t, t + 1)), _near_uint)
        i = off(expect, _near_uint)
        data = off(draw(st.binary(max_size=3)), st.sampled_from(["x", None, 0, bytearray()]))
        shape = off(3, st.sampled_from([1, 2, 4, 5]))
        item: Any = [t, i, data, draw(st.integers(0, 2))][:shape] + [0] * max(0, shape - 4)
        raw.append(off(item, st.just(tuple(item))))
        expect += 1
    return raw, index, log_term, term


def _strict_entries(raw: list[Any], index: int, log_term: int, term: int) -> Any:
    try:
        entries = tuple(decode_entry(e) for e in raw)
        raft_codec._check_appended(entries, index, log_term, term)
    except RemoteProtocolError as exc:
        return ("error", exc.message)
    return entries


@settings(max_examples=500, deadline=None)
@given(app_entries())
def test_app_fast_path_accepts_only_what_strict_accepts(case: Any) -> None:
    raw, index, log_term, term = case
    fast = raft_codec._decode_appended(raw, index, log_term, term)
    if fast is not None:
        assert fast == _strict_entries(raw, index, log_term, term)


@settings(max_examples=300, deadline=None)
@given(app_entries())
def test_decode_app_same_outcome_as_strict(case: Any) -> None:
    """Through decode_message: the same message or the same error as entries-by-strict-path."""
    raw, index, log_term, term = case
    wire = [int(MsgType.APP), 2, 1, term, log_term, index, raw, 0]
    strict = _strict_entries(raw, index, log_term, term)
    try:
        got: Any = decode_message(wire).entries
    except RemoteProtocolError as exc:
        got = ("error", exc.message)
    assert got == strict


def test_app_fast_path_takes_the_common_shape() -> None:
    raw = [[2, 11, b"a"], [3, 12, b"b"]]
    assert raft_codec._decode_appended(raw, 10, 2, 3) == (
        Entry(2, 11, data=b"a"),
        Entry(3, 12, data=b"b"),
    )
    # the leader's no-op has no data field: valid, but left to the strict path
    assert raft_codec._decode_appended([[3, 11]], 10, 2, 3) is None
    assert decode_message([3, 2, 1, 3, 2, 10, [[3, 11]], 0]).entries == (Entry(3, 11),)


@settings(max_examples=100, deadline=None)
@given(raft_messages())
def test_frozen_builder_builds_what_the_constructor_builds(msg: Message) -> None:
    fields = [getattr(msg, f) for f in Message.__dataclass_fields__]
    built = frozen_builder(Message)(*fields)
    assert built == msg and type(built) is Message and hash(built) == hash(msg)
    with pytest.raises(AttributeError):
        built.term = 1  # type: ignore[misc]  # still frozen
    for e in msg.entries:
        assert frozen_builder(Entry)(e.term, e.index, e.kind, e.data) == e


def test_frozen_builder_refuses_classes_it_would_get_wrong() -> None:
    with pytest.raises(TypeError, match="__post_init__"):
        frozen_builder(ConfState)
    with pytest.raises(TypeError, match="slotted dataclass"):
        frozen_builder(RemoteProtocolError)
