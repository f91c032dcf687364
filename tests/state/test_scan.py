"""Scans and counts over the ordered key index, checked against the dict by brute force."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    UNCHECKED,
    BatchCommand,
    CompareAndSetCommand,
    DeleteCommand,
    KVStateMachine,
    PutCommand,
    encode_command,
    prefix_end,
)

# Binary keys that sit at the edges of byte order (0x00, 0xff, prefixes of
# each other), so ranges and prefixes cut between them in every way.
_KEYS = [b"\x00", b"\x00\x00", b"\x00\xff", b"a", b"a\x00", b"a\xff", b"ab", b"b", b"\xff",
         b"\xff\x00", b"\xff\xff"]
scan_keys = st.sampled_from(_KEYS)
bounds = st.one_of(st.just(b""), scan_keys, st.binary(max_size=3))
values = st.binary(max_size=4)

_puts = st.builds(PutCommand, scan_keys, values)
_deletes = st.builds(DeleteCommand, scan_keys)
_cas = st.builds(
    lambda k, ev, nv: CompareAndSetCommand(k, expected_value=ev, new_value=nv),
    scan_keys,
    st.one_of(st.just(UNCHECKED), st.none(), values),
    st.one_of(st.none(), values),
)
_batches = st.builds(
    BatchCommand, st.lists(st.one_of(_puts, _deletes), max_size=4).map(tuple)
)
# A step is a log entry (with or without a session), or "snap": replace the
# machine by one restored from its snapshot.
steps = st.one_of(
    st.builds(encode_command, st.one_of(_puts, _deletes, _cas, _batches)),
    st.builds(
        lambda c, s: encode_command(c, b"c1", s),
        st.one_of(_puts, _deletes, _batches),
        st.integers(0, 4),
    ),
    st.just("snap"),
)


def _brute(m: KVStateMachine, start: bytes, end: bytes | None) -> list[tuple[bytes, ...]]:
    return sorted(
        (k, *rec) for k, rec in m.items() if start <= k and (end is None or k < end)
    )


def _check_index(m: KVStateMachine) -> None:
    keys = sorted(k for k, _ in m.items())
    assert list(m._keys) == keys  # the invariant itself
    assert [item[0] for item in m.scan(b"", None, keys_only=True)] == keys
    assert m.count(b"", None) == len(m)


@settings(max_examples=300)
@given(st.lists(steps, max_size=40), st.lists(st.tuples(bounds, st.one_of(st.none(), bounds),
                                                       st.integers(0, 4), st.booleans()),
                                             min_size=1, max_size=5))
def test_index_and_scans_match_the_dict(log, queries):
    m = KVStateMachine(max_batch_ops=3)
    index = 0
    for step in log:
        if step == "snap":
            restored = KVStateMachine(max_batch_ops=3)
            restored.apply(1, encode_command(PutCommand(b"junk", b"replaced by restore")))
            restored.restore(m.snapshot())
            assert restored == m
            m = restored
        else:
            index += 1
            m.apply(index, step)
        _check_index(m)

    for start, end, limit, keys_only in queries:
        want = _brute(m, start, end)
        assert m.count(start, end) == len(want)
        if limit:
            want = want[:limit]
        if keys_only:
            want = [(k, b"", *rest) for k, _, *rest in want]
        assert m.scan(start, end, limit=limit, keys_only=keys_only) == want


@settings(max_examples=200)
@given(st.lists(steps, max_size=30), st.one_of(st.just(b""), scan_keys, st.binary(max_size=2)))
def test_prefix_scan_is_exactly_the_keys_with_the_prefix(log, prefix):
    m = KVStateMachine(max_batch_ops=3)
    for index, step in enumerate((s for s in log if s != "snap"), 1):
        m.apply(index, step)
    got = [item[0] for item in m.scan(prefix, prefix_end(prefix), keys_only=True)]
    assert got == sorted(k for k, _ in m.items() if k.startswith(prefix))
    assert m.count(prefix, prefix_end(prefix)) == len(got)


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_prefix_end_bounds_exactly_the_prefixed_keys(prefix, key):
    end = prefix_end(prefix)
    in_range = prefix <= key and (end is None or key < end)
    assert in_range == key.startswith(prefix)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"", None),
        (b"\xff", None),
        (b"\xff\xff", None),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"a", b"b"),
        (b"\x00", b"\x01"),
        (b"a\x00", b"a\x01"),
        (b"\x01\xfe\xff", b"\x01\xff"),
    ],
)
def test_prefix_end_examples(prefix, end):
    assert prefix_end(prefix) == end


def _filled(*keys: bytes) -> KVStateMachine:
    m = KVStateMachine()
    for index, key in enumerate(keys, 1):
        m.apply(index, encode_command(PutCommand(key, b"v" + key)))
    return m


def test_scan_returns_what_get_returns_in_key_order():
    m = _filled(b"b", b"\xff", b"a", b"\x00")
    m.apply(5, encode_command(PutCommand(b"a", b"again")))
    assert m.scan(b"", None) == [(k, *m.get(k)) for k in (b"\x00", b"a", b"b", b"\xff")]
    assert m.scan(b"", None)[1] == (b"a", b"again", 2, 5, 3, 0)
    assert m.scan(b"a", b"b", keys_only=True) == [(b"a", b"", 2, 5, 3, 0)]


def test_empty_and_inverted_ranges():
    m = _filled(b"a", b"b", b"c")
    assert m.scan(b"b", b"b") == [] and m.count(b"b", b"b") == 0
    assert m.scan(b"c", b"a") == [] and m.count(b"c", b"a") == 0
    assert m.scan(b"d", None) == [] and m.count(b"d", None) == 0
    assert KVStateMachine().scan(b"", None) == [] and KVStateMachine().count(b"", None) == 0


def test_binary_edges_and_limits():
    m = _filled(b"\x00", b"\x00\x00", b"\xff", b"\xff\xff")
    assert [k for k, *_ in m.scan(b"", None)] == [b"\x00", b"\x00\x00", b"\xff", b"\xff\xff"]
    assert [k for k, *_ in m.scan(b"\x00", b"\xff")] == [b"\x00", b"\x00\x00"]
    assert [k for k, *_ in m.scan(b"\xff", None, limit=1)] == [b"\xff"]
    assert [k for k, *_ in m.scan(b"", None, limit=10)] == [k for k, *_ in m.scan(b"", None)]
    assert m.count(b"\x00", b"\xff") == 2


def test_delete_and_cas_keep_the_index():
    m = _filled(b"a", b"b")
    m.apply(3, encode_command(DeleteCommand(b"a")))
    m.apply(4, encode_command(DeleteCommand(b"zz")))  # absent: no change
    m.apply(5, encode_command(CompareAndSetCommand(b"b", expected_version=1, new_value=None)))
    m.apply(6, encode_command(CompareAndSetCommand(b"c", expected_value=None, new_value=b"x")))
    assert m.scan(b"", None, keys_only=True) == [(b"c", b"", 1, 6, 6, 0)]


def test_negative_limit_is_a_caller_mistake():
    with pytest.raises(ValueError, match="scan limit must be >= 0, got -1"):
        KVStateMachine().scan(b"", None, limit=-1)
