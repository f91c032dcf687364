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
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.raft_codec import (
    WIRE_MSG_TYPES,
    decode_entry,
    decode_message,
    decode_snapshot,
    encode_entry,
    encode_message,
)
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
