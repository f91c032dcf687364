"""Snapshots: round trips at any point, and strict decoding of corrupt ones."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    SNAPSHOT_FORMAT,
    KVStateMachine,
    PutCommand,
    SnapshotDecodeError,
    encode_command,
)

from .strategies import entries


def _machine() -> KVStateMachine:
    # Small bounds so that the suffix exercises expiry and eviction of
    # sessions that were restored from the snapshot.
    return KVStateMachine(max_sessions=3, session_ttl_entries=8, max_batch_ops=3)


@settings(max_examples=150)
@given(st.lists(entries(), max_size=50), st.data())
def test_restore_then_continue_matches_uninterrupted_machine(log, data):
    cut = data.draw(st.integers(0, len(log)), label="cut")
    original = _machine()
    for index, entry in enumerate(log[:cut], 1):
        original.apply(index, entry)
    snap = original.snapshot()

    restored = _machine()
    restored.apply(1, encode_command(PutCommand(b"junk", b"replaced by restore")))
    restored.restore(snap)
    assert restored == original
    assert restored.snapshot() == snap
    assert restored.applied_index == cut

    for index, entry in enumerate(log[cut:], cut + 1):
        assert restored.apply(index, entry) == original.apply(index, entry)
    assert restored == original
    assert restored.snapshot() == original.snapshot()


def test_snapshot_contents():
    m = KVStateMachine()
    m.apply(3, encode_command(PutCommand(b"k", b"v"), b"c", 1))
    fmt, applied, flat, sessions = cbor2.loads(m.snapshot())
    assert (fmt, applied, flat) == (SNAPSHOT_FORMAT, 3, [b"k", b"v", 1, 3])
    assert sessions[:3] == [b"c", 1, 3]


def test_empty_machine_round_trips():
    m = KVStateMachine()
    m2 = KVStateMachine()
    m2.restore(m.snapshot())
    assert m2 == m and m2.applied_index == 0 and len(m2) == 0


def _good() -> list:
    m = KVStateMachine()
    m.apply(1, encode_command(PutCommand(b"k", b"v"), b"c", 1))
    m.apply(2, encode_command(PutCommand(b"j", b"w"), b"d", 1))
    return cbor2.loads(m.snapshot())


def _with(pos, value) -> bytes:
    item = _good()
    if isinstance(pos, tuple):
        item[pos[0]][pos[1]] = value
    else:
        item[pos] = value
    return cbor2.dumps(item)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not valid CBOR"),
        (cbor2.dumps(_good()) + b"\x00", "trailing bytes"),
        (cbor2.dumps({"applied": 1}), "4-element array"),
        (_with(0, 2), "unsupported snapshot format 2"),
        (_with(1, -1), "applied index must be >= 0"),
        (_with(2, [b"k", b"v", 1]), "array of 4-tuples"),
        (_with((2, 0), "k"), "malformed record"),
        (_with((2, 2), 0), "malformed record"),  # version 0
        (_with((2, 3), 3), "malformed record"),  # mod_revision > applied index
        (cbor2.dumps([1, 2, [b"k", b"v", 1, 1, b"k", b"v", 1, 2], []]), "duplicate key"),
        (_with(3, [b"c", 1, 1]), "malformed session table"),
        (_with((3, 2), 5), "malformed session table"),  # last_used > applied
        (_with((3, 6), 0), "malformed session table"),  # breaks LRU order
        (_with((3, 3), [99, 1, 0, 0, [], ""]), "unknown result code 99"),
        (_with((3, 0), "c"), "client_id must be bytes or int"),
    ],
)
def test_restore_rejects_corrupt_snapshot_and_keeps_state(data, message):
    m = KVStateMachine()
    m.apply(7, encode_command(PutCommand(b"mine", b"x"), b"me", 1))
    before = m.snapshot()
    with pytest.raises(SnapshotDecodeError, match=message):
        m.restore(data)
    assert m.snapshot() == before


@settings(max_examples=50)
@given(st.lists(entries(), max_size=30), st.lists(entries(), max_size=10))
def test_decode_changes_nothing_until_install(log, later):
    # The driver decodes a leader's snapshot in a worker thread while this
    # machine keeps serving (and applying), then installs it on the loop.
    source = _machine()
    for index, entry in enumerate(log, 1):
        source.apply(index, entry)
    snap = source.snapshot()

    m = _machine()
    m.apply(1, encode_command(PutCommand(b"mine", b"before")))
    before = m.snapshot()
    decoded = m.decode_snapshot(snap)
    assert m.snapshot() == before  # decoding alone touched nothing
    m.install(decoded)
    assert m == source and m.snapshot() == snap
    for index, entry in enumerate(later, len(log) + 1):
        assert m.apply(index, entry) == source.apply(index, entry)
    assert m == source
