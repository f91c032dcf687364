"""Snapshots: round trips at any point, and strict decoding of corrupt ones."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    SNAPSHOT_FORMAT,
    KVStateMachine,
    LeaseGrantCommand,
    OpResult,
    PutCommand,
    ResultCode,
    SnapshotDecodeError,
    WriteResult,
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
    m = KVStateMachine(partition=5)
    m.apply(3, encode_command(PutCommand(b"k", b"v"), b"c", 1))
    m.apply(4, encode_command(LeaseGrantCommand(9000)))
    lease = 4 << 16 | 5
    m.apply(6, encode_command(PutCommand(b"k", b"w", lease)))
    fmt, applied, flat, sessions, leases = cbor2.loads(m.snapshot())
    # Format 2 while the auth store is empty (SNAPSHOT_FORMAT 3 adds it: test_auth_store.py)
    assert (fmt, applied) == (2, 6) and SNAPSHOT_FORMAT == 3
    assert flat == [b"k", b"w", 2, 6, 3, lease]  # value, version, mod, create, lease
    assert leases == [lease, 9000]
    assert sessions[:3] == [b"c", 1, 3]
    assert sessions[3] == [2, 0, 3, 1, 0, [], "", True, 0]  # result shape 2


def test_empty_machine_round_trips():
    m = KVStateMachine()
    m2 = KVStateMachine()
    m2.restore(m.snapshot())
    assert m2 == m and m2.applied_index == 0 and len(m2) == 0


_L = 2 << 16  # the lease _good() grants at index 2 (partition 0)


def _good() -> list:
    m = KVStateMachine()
    m.apply(1, encode_command(PutCommand(b"k", b"v"), b"c", 1))
    m.apply(2, encode_command(LeaseGrantCommand(5000), b"d", 1))
    m.apply(3, encode_command(PutCommand(b"j", b"w", _L)))
    m.apply(4, encode_command(PutCommand(b"k", b"v2")))
    item = cbor2.loads(m.snapshot())
    # [2, 4, [k v2 2 4 1 0, j w 1 3 3 L], [c 1 1 r, d 1 2 r], [L, 5000]]
    assert item[2] == [b"k", b"v2", 2, 4, 1, 0, b"j", b"w", 1, 3, 3, _L]
    return item


def _with(pos, value, *more) -> bytes:
    """_good() with item[pos] (or item[pos[0]][pos[1]]) = value, for each (pos, value) pair."""
    item = _good()
    changes = [(pos, value), *zip(more[::2], more[1::2])]
    for p, v in changes:
        if isinstance(p, tuple):
            item[p[0]][p[1]] = v
        else:
            item[p] = v
    return cbor2.dumps(item)


def _v1(flat, sessions=(), applied=4) -> bytes:
    return cbor2.dumps([1, applied, list(flat), list(sessions)])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not valid CBOR"),
        (cbor2.dumps(_good()) + b"\x00", "trailing bytes"),
        (cbor2.dumps({"applied": 1}), "non-empty array"),
        (cbor2.dumps([]), "non-empty array"),
        (_with(0, 4), "unsupported snapshot format 4"),
        (_with(0, True), "unsupported snapshot format True"),
        (cbor2.dumps(_good()[:4]), "format 2 must be a 5-element array, got 4"),
        (cbor2.dumps([1, *_good()[1:]]), "format 1 must be a 4-element array, got 5"),
        (_with(1, -1), "applied index must be >= 0"),
        (_with(2, [b"k", b"v", 1, 1, 1]), "array of 6-tuples"),
        (_with((2, 0), "k"), "malformed record"),
        (_with((2, 1), None), "malformed record"),
        (_with((2, 2), 0), "malformed record"),  # version 0
        (_with((2, 3), 5), "malformed record"),  # mod_revision > applied index
        (_with((2, 4), 0), "malformed record"),  # create_revision 0
        (_with((2, 4), 5), "malformed record"),  # create_revision > mod_revision
        (_with((2, 10), 2), "malformed record"),  # version 1 but create != mod
        (_with((2, 11), True), "malformed record"),  # lease a bool
        (_with((2, 5), 7 << 16), "names lease 458752, which the snapshot does not have"),
        # attached at mod 2, but the lease was granted at 2: not before
        (_with((2, 3), 2, (2, 5), _L), "names lease 131072"),
        (cbor2.dumps([2, 2, [b"k", b"v", 1, 1, 1, 0, b"k", b"v", 1, 2, 2, 0], [], []]),
         "duplicate key"),
        (_with(4, [_L]), "array of \\(id, ttl_ms\\) pairs"),
        (_with(4, {}), "array of \\(id, ttl_ms\\) pairs"),
        (_with(4, [_L, 0]), "malformed ttl_ms 0"),
        (_with(4, [_L, "5"]), "malformed ttl_ms"),
        (_with(4, [_L | 1, 5000]), "of another partition than 0"),
        (_with(4, [9 << 16, 5000]), "granted after the applied index 4"),
        (_with(4, [0, 5000]), "lease id 0"),
        (_with(4, [_L, 5000, _L, 5000]), "out of order"),
        (_with(4, [3 << 16, 5, _L, 5000]), "out of order"),
        (_with(3, [b"c", 1, 1]), "malformed session table"),
        (_with((3, 2), 5), "malformed session table"),  # last_used > applied
        (_with((3, 6), 0), "malformed session table"),  # breaks LRU order
        (_with((3, 3), [2, 99, 1, 0, 0, [], "", True, 0]), "unknown result code 99"),
        (_with((3, 3), [99, 1, 0, 0, [], ""]), "unknown result code 99"),
        (_with((3, 3), [2, 0, 1, 0, 0, [], "", 1, 0]), "succeeded must be a bool"),
        (_with((3, 3), [2, 0, 1, 0, 0, [[1]], "", True, 0]), "op must be an array of 2 or 6"),
        (_with((3, 3), [2, 0, 1, 0, 0, [[1, 0, "v", 1, 1, 0]], "", True, 0]),
         "op value must be bytes or null"),
        (_with((3, 3), [2, 0, 1, 0, 0, [], "", True, -1]), "lease_id must be a non-negative"),
        (_with((3, 3), [3, 0, 1, 0, 0, [], "", True, 0]), "9-element array starting with 2"),
        (_with((3, 0), "c"), "client_id must be bytes or int"),
        # format 1
        (_v1([b"k", b"v", 1]), "array of 4-tuples"),
        (_v1([b"k", b"v", 0, 1]), "malformed record"),
        (_v1([b"k", b"v", 1, 5]), "malformed record"),
        (_v1([b"k", b"v", 1, 1, b"k", b"v", 1, 2]), "duplicate key"),
        (_v1([], [b"c", 1, 1]), "malformed session table"),
    ],
)
def test_restore_rejects_corrupt_snapshot_and_keeps_state(data, message):
    m = KVStateMachine()
    m.apply(7, encode_command(PutCommand(b"mine", b"x"), b"me", 1))
    before = m.snapshot()
    with pytest.raises(SnapshotDecodeError, match=message):
        m.restore(data)
    assert m.snapshot() == before


def test_good_fixture_restores():
    m = KVStateMachine()
    m.restore(cbor2.dumps(_good()))
    m.check_invariants()
    assert m.lease(_L) == (5000, [b"j"])
    assert m.get(b"k") == (b"v2", 2, 4, 1, 0)


def test_lease_ids_must_name_this_partition():
    source = KVStateMachine(partition=3)
    source.apply(1, encode_command(LeaseGrantCommand(5000)))
    snap = source.snapshot()
    assert KVStateMachine(partition=3).decode_snapshot(snap).applied == 1
    with pytest.raises(SnapshotDecodeError, match="of another partition than 0"):
        KVStateMachine().restore(snap)


def test_format_1_is_still_read():
    """A snapshot written before leases: records get create_revision :=
    mod_revision and no lease; cached results of the old 6-element shape load;
    the next snapshot is format 2."""
    ok_put = [0, 3, 2, 1, [], ""]
    batch = [0, 4, 0, 0, [1, 0, 0, 2], ""]
    old = cbor2.dumps([1, 4, [b"k", b"v", 2, 3, b"n", b"w", 1, 4], [b"c", 7, 3, ok_put,
                                                                    5, 1, 4, batch]])
    m = KVStateMachine()
    m.restore(old)
    m.check_invariants()
    assert m.items() == [(b"k", (b"v", 2, 3, 3, 0)), (b"n", (b"w", 1, 4, 4, 0))]
    assert m.leases() == [] and m.applied_index == 4
    assert m.sessions.get(b"c") == (7, 3, WriteResult(ResultCode.OK, 3, 2, 1))
    assert m.sessions.get(5) == (1, 4, WriteResult(ResultCode.OK, 4,
                                                   ops=(OpResult(1, 0), OpResult(0, 2))))
    # A retry of the old session's write replays the cached (old-shape) result.
    assert m.apply(5, encode_command(PutCommand(b"k", b"v"), b"c", 7)) == WriteResult(
        ResultCode.OK, 3, 2, 1)
    assert cbor2.loads(m.snapshot())[0] == 2
    again = KVStateMachine()
    again.restore(m.snapshot())
    assert again == m


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
