"""Change events (issue 17): what each command emits, the bounded history
(whole revisions evicted, ``oldest``), ``since`` and its range filter, the
history after a snapshot install, the ``on_events`` callback, and a
property: the events of a never-evicted history replayed onto an empty dict
give the machine's data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    EVENT_OVERHEAD,
    BatchCommand,
    Compacted,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    Event,
    EventKind,
    EventLog,
    GetOp,
    KVStateMachine,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    TxnCommand,
    encode_command,
)
from prkdb.state.events import make_record, record_size

from .strategies import entries
from .test_kv import Driver

PUT, DELETE, EXPIRE = EventKind.PUT, EventKind.DELETE, EventKind.EXPIRE


class Recorder:
    """A driver that also collects what ``on_events`` got, per apply."""

    def __init__(self, machine: KVStateMachine | None = None) -> None:
        self.d = Driver(machine)
        self.m = self.d.m
        self.calls: list[list[Event]] = []
        self.m.on_events = self.calls.append

    def __call__(self, cmd, client_id=None, seq=None) -> list[Event]:
        """Apply ``cmd``; return the events that apply emitted (checked both ways)."""
        before = len(self.calls)
        self.d(cmd, client_id, seq)
        new = self.calls[before:]
        assert len(new) <= 1, "on_events is called once per apply"
        got = new[0] if new else []
        assert not new or got, "on_events is never called with nothing"
        # The history got the same events, at the entry's revision.
        assert self.m.events.since(self.d.index - 1) == got
        assert all(e.revision == self.d.index for e in got)
        return got


# -- what each command emits ----------------------------------------------------


def test_put_emits_put_with_prev_value() -> None:
    r = Recorder()
    assert r(PutCommand(b"k", b"v1")) == [Event(PUT, b"k", 1, b"v1", None)]
    assert r(PutCommand(b"k", b"v2")) == [Event(PUT, b"k", 2, b"v2", b"v1")]
    # The same value again still changes mod_revision and version: a PUT.
    assert r(PutCommand(b"k", b"v2")) == [Event(PUT, b"k", 3, b"v2", b"v2")]
    assert r(PutCommand(b"e", b"")) == [Event(PUT, b"e", 4, b"", None)]  # empty value, not None


def test_delete_emits_only_for_a_present_key() -> None:
    r = Recorder()
    r(PutCommand(b"k", b"v"))
    assert r(DeleteCommand(b"k")) == [Event(DELETE, b"k", 2, None, b"v")]
    assert r(DeleteCommand(b"k")) == []
    assert r(DeleteCommand(b"never")) == []


def test_compare_and_set_emits_on_success_only() -> None:
    r = Recorder()
    assert r(CompareAndSetCommand(b"k", expected_value=b"x", new_value=b"y")) == []
    assert r(CompareAndSetCommand(b"k", expected_value=None, new_value=b"a")) == [
        Event(PUT, b"k", 2, b"a", None)
    ]
    assert r(CompareAndSetCommand(b"k", expected_version=1, new_value=b"b")) == [
        Event(PUT, b"k", 3, b"b", b"a")
    ]
    assert r(CompareAndSetCommand(b"k", expected_value=b"b", new_value=None)) == [
        Event(DELETE, b"k", 4, None, b"b")
    ]
    # A successful CAS that deletes an absent key changes nothing.
    assert r(CompareAndSetCommand(b"k", expected_value=None, new_value=None)) == []


def _absent(key: bytes) -> Compare:
    return Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)


def test_txn_emits_the_changes_of_the_branch_taken_in_op_order() -> None:
    r = Recorder()
    r(PutCommand(b"a", b"1"))
    r(PutCommand(b"b", b"2"))
    success = (
        PutCommand(b"z", b"new"),
        GetOp(b"a"),
        DeleteCommand(b"a"),
        DeleteCommand(b"absent"),
        PutCommand(b"z", b"again"),  # sees the earlier op: prev is "new"
    )
    failure = (DeleteCommand(b"b"), GetOp(b"b"), PutCommand(b"c", b"3"))
    assert r(TxnCommand((_absent(b"z"),), success, failure)) == [
        Event(PUT, b"z", 3, b"new", None),
        Event(DELETE, b"a", 3, None, b"1"),
        Event(PUT, b"z", 3, b"again", b"new"),
    ]
    # Now z exists: the failure branch runs, and emits its own changes.
    assert r(TxnCommand((_absent(b"z"),), success, failure)) == [
        Event(DELETE, b"b", 4, None, b"2"),
        Event(PUT, b"c", 4, b"3", None),
    ]
    # Gets only, or a branch that fails on a missing lease: nothing.
    assert r(TxnCommand((), (GetOp(b"c"),), ())) == []
    assert r(TxnCommand((), (PutCommand(b"d", b"x"), PutCommand(b"e", b"x", 99 << 16)), ())) == []


def test_batch_emits_each_op_that_changed_something() -> None:
    r = Recorder()
    r(PutCommand(b"a", b"1"))
    batch = BatchCommand(
        (PutCommand(b"b", b"2"), DeleteCommand(b"a"), DeleteCommand(b"a"), PutCommand(b"a", b"3"))
    )
    assert r(batch) == [
        Event(PUT, b"b", 2, b"2", None),
        Event(DELETE, b"a", 2, None, b"1"),
        Event(PUT, b"a", 2, b"3", None),
    ]


def test_lease_revoke_emits_delete_or_expire_per_key_in_key_order() -> None:
    r = Recorder()
    assert r(LeaseGrantCommand(5000)) == []  # grants change no key
    lease = 1 << 16
    for key in (b"c", b"a", b"b"):
        r(PutCommand(key, key.upper(), lease))
    assert r(LeaseRevokeCommand(lease)) == [
        Event(DELETE, k, 5, None, k.upper()) for k in (b"a", b"b", b"c")
    ]
    r(LeaseGrantCommand(5000))
    lease2 = 6 << 16
    r(PutCommand(b"x", b"1", lease2))
    r(PutCommand(b"y", b"2", lease2))
    assert r(LeaseRevokeCommand(lease2, expired=True)) == [
        Event(EXPIRE, b"x", 9, None, b"1"),
        Event(EXPIRE, b"y", 9, None, b"2"),
    ]
    assert r(LeaseRevokeCommand(lease2)) == []  # no such lease any more
    r(LeaseGrantCommand(5000))
    assert r(LeaseRevokeCommand(11 << 16, expired=True)) == []  # a lease with no keys


def test_session_replay_noop_and_failed_commands_emit_nothing() -> None:
    r = Recorder()
    assert r(PutCommand(b"k", b"v"), b"client", 1) == [Event(PUT, b"k", 1, b"v", None)]
    assert r(PutCommand(b"k", b"v"), b"client", 1) == []  # a retry: the cached result
    assert r(PutCommand(b"k", b"w"), b"client", 0) == []  # stale seq
    assert r(PutCommand(b"k", b"w", 77 << 16)) == []  # unknown lease
    assert r(PutCommand(b"", b"w")) == []  # limit violation: empty key
    assert r.m.apply(r.d.index + 1, b"") is None  # Raft no-op
    assert r.m.apply(r.d.index + 2, b"\xff\x00garbage") is not None  # malformed
    assert r.calls == [[Event(PUT, b"k", 1, b"v", None)]]
    assert len(r.m.events) == 1


# -- the bounded history --------------------------------------------------------


def _batch(*keys: bytes, value: bytes = b"v") -> BatchCommand:
    return BatchCommand(tuple(PutCommand(k, value) for k in keys))


def test_count_bound_evicts_whole_revisions_and_moves_oldest() -> None:
    d = Driver(KVStateMachine(history_events=5))
    log = d.m.events
    assert (log.oldest, log.newest, len(log)) == (0, 0, 0)
    d(_batch(b"a", b"b"))  # revision 1: 2 events
    d(_batch(b"c", b"d", b"e"))  # revision 2: 3 events (5 held: at the bound)
    assert (log.oldest, len(log)) == (0, 5)
    d(PutCommand(b"f", b"v"))  # 6 > 5: revision 1 goes, both its events
    assert (log.oldest, log.newest, len(log)) == (1, 3, 4)
    assert [e.key for e in log] == [b"c", b"d", b"e", b"f"]
    d(PutCommand(b"g", b"v"))  # 5 again: nothing goes
    assert (log.oldest, len(log)) == (1, 5)
    d(PutCommand(b"h", b"v"))  # 6: revision 2 goes whole, though 1 event would do
    assert (log.oldest, len(log)) == (2, 3)
    assert [e.revision for e in log] == [3, 4, 5]


def test_revision_bigger_than_the_bound_leaves_an_empty_history() -> None:
    d = Driver(KVStateMachine(history_events=2))
    d(PutCommand(b"a", b"1"))
    d(_batch(b"x", b"y", b"z"))  # 3 events in one revision: never held in part
    log = d.m.events
    assert (log.oldest, log.newest, len(log), log.held_bytes) == (2, 2, 0, 0)
    assert log.since(2) == []
    with pytest.raises(Compacted):
        log.since(1)


def test_eviction_keeps_a_margin_of_an_eighth() -> None:
    d = Driver(KVStateMachine(history_events=16))
    for i in range(17):
        d(PutCommand(b"k%d" % i, b"v"))
    # The 17th event evicts down to 16 - 16 // 8 = 14 events, not to 16.
    log = d.m.events
    assert (len(log), log.oldest) == (14, 3)
    for i in range(17, 19):
        d(PutCommand(b"k%d" % i, b"v"))
    assert (len(log), log.oldest) == (16, 3)


def test_byte_bound_counts_key_value_and_prev_value() -> None:
    size = record_size(b"k", b"v" * 100, b"p" * 50)
    assert size == 1 + 100 + 50 + EVENT_OVERHEAD
    assert record_size(b"k", None, None) == 1 + EVENT_OVERHEAD
    record = make_record(DELETE, b"k", 7, None, b"old")
    assert record == (1, b"k", 7, None, b"old", 4 + EVENT_OVERHEAD)
    put = 1 + 100 + EVENT_OVERHEAD  # a first put of key k with a 100-byte value
    overwrite = 1 + 100 + 100 + EVENT_OVERHEAD
    d = Driver(KVStateMachine(history_bytes=put + 2 * overwrite))
    log = d.m.events
    d(PutCommand(b"k", b"a" * 100))
    d(PutCommand(b"k", b"b" * 100))
    d(PutCommand(b"k", b"c" * 100))
    assert (len(log), log.held_bytes, log.oldest) == (3, put + 2 * overwrite, 0)
    d(DeleteCommand(b"k"))  # +1+100+overhead: over, so revision 1 goes (and 2 for the margin)
    assert log.held_bytes <= log.max_bytes - log.max_bytes // 8
    assert [e.revision for e in log] == [3, 4] and log.oldest == 2
    assert log.held_bytes == overwrite + 1 + 100 + EVENT_OVERHEAD


def test_byte_bound_evicts_a_txn_whole() -> None:
    one = 1 + 10 + EVENT_OVERHEAD
    d = Driver(KVStateMachine(history_bytes=3 * one))
    d(_batch(b"a", b"b", value=b"x" * 10))
    d(_batch(b"c", value=b"x" * 10))
    d(_batch(b"d", value=b"x" * 10))  # 4 * one > 3 * one: revision 1 (2 events) goes
    log = d.m.events
    assert (log.oldest, [e.key for e in log], log.held_bytes) == (1, [b"c", b"d"], 2 * one)


def test_zero_bounds_keep_no_history_but_still_notify() -> None:
    m = KVStateMachine(history_events=0)
    seen: list[list[Event]] = []
    m.on_events = seen.append
    m.apply(1, encode_command(PutCommand(b"k", b"v")))
    assert seen == [[Event(PUT, b"k", 1, b"v", None)]]
    assert (len(m.events), m.events.oldest) == (0, 1)


def test_bounds_are_validated() -> None:
    for kwargs in ({"max_events": -1}, {"max_bytes": -1}, {"oldest": -1}, {"max_events": 1.5}):
        with pytest.raises(ValueError, match="must be an int >= 0"):
            EventLog(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"history_events \(-1\)"):
        KVStateMachine(history_events=-1)


# -- since ------------------------------------------------------------------------


def test_since_after_at_and_before_oldest() -> None:
    d = Driver(KVStateMachine(history_events=3))
    for i in range(1, 6):
        d(PutCommand(b"k", b"%d" % i))
    log = d.m.events
    assert (log.oldest, log.newest) == (2, 5)
    assert [e.revision for e in log.since(2)] == [3, 4, 5]  # at oldest: everything held
    assert [e.revision for e in log.since(4)] == [5]  # after oldest
    assert log.since(5) == [] and log.since(1000) == []  # at/after the newest
    with pytest.raises(Compacted) as info:
        log.since(1)  # before oldest: revision 2 is gone
    assert (info.value.oldest, info.value.after) == (2, 1)
    assert "after revision 1" in str(info.value) and "2" in str(info.value)
    with pytest.raises(Compacted):
        log.since(1, b"zzz")  # even for a range with no event in it


def test_since_filters_by_key_range() -> None:
    d = Driver()
    d(_batch(b"a", b"app/1", b"app/2", b"b"))
    d(_batch(b"app/", b"app0", b"apq"))
    log = d.m.events

    def keys(after: int, start: bytes, end: bytes | None) -> list[bytes]:
        return [e.key for e in log.since(after, start, end)]

    assert keys(0, b"app/", b"app0") == [b"app/1", b"app/2", b"app/"]  # a prefix
    assert keys(1, b"app/", b"app0") == [b"app/"]
    assert keys(0, b"app0", None) == [b"b", b"app0", b"apq"]  # no upper bound; log order
    assert keys(0, b"", b"app0") == [b"a", b"app/1", b"app/2", b"app/"]
    assert keys(0, b"", None) == [b"a", b"app/1", b"app/2", b"b", b"app/", b"app0", b"apq"]
    assert keys(0, b"b", b"b") == [] and keys(0, b"c", b"b") == []  # empty ranges
    assert keys(0, b"a", b"a\x00") == [b"a"]  # a single key


def test_since_returns_new_lists() -> None:
    d = Driver()
    d(PutCommand(b"k", b"v"))
    got = d.m.events.since(0)
    got.clear()
    assert d.m.events.since(0) == [Event(PUT, b"k", 1, b"v", None)]


# -- snapshots -------------------------------------------------------------------


def test_history_restarts_at_a_snapshot_index() -> None:
    d = Driver()
    for i in range(1, 6):
        d(PutCommand(b"k%d" % i, b"v"))
    snap = d.m.snapshot()
    d(PutCommand(b"later", b"v"))
    other = Driver(KVStateMachine(history_events=100))
    other(PutCommand(b"stale", b"v"))
    other.m.restore(snap)
    assert (other.m.events.oldest, len(other.m.events)) == (5, 0)
    with pytest.raises(Compacted):
        other.m.events.since(4)
    assert other.m.events.since(5) == []
    # Entries applied after the snapshot (a WAL replay, then new ones) are in it.
    other.index = 5
    other(PutCommand(b"k1", b"w"))
    assert other.m.events.since(5) == [Event(PUT, b"k1", 6, b"w", b"v")]
    assert other.m.events.max_events == 100  # the bounds survive the install


def test_install_of_a_decoded_snapshot_resets_too() -> None:
    d = Driver()
    d(PutCommand(b"k", b"v"))
    d(PutCommand(b"k", b"w"))
    state = d.m.decode_snapshot(d.m.snapshot())
    d.m.install(state)
    assert (d.m.events.oldest, len(d.m.events)) == (2, 0)


# -- on_events ---------------------------------------------------------------------


def test_on_events_failure_does_not_break_apply() -> None:
    m = KVStateMachine()
    boom = RuntimeError("watch registry bug")

    def fail(events: list[Event]) -> None:
        raise boom

    m.on_events = fail
    r = m.apply(1, encode_command(PutCommand(b"k", b"v")))
    assert r is not None and r.ok
    assert m.get(b"k") is not None and m.applied_index == 1
    assert (m.on_events_failures, m.on_events_error) == (1, boom)
    assert m.events.since(0) == [Event(PUT, b"k", 1, b"v", None)]
    m.on_events = None
    m.apply(2, encode_command(PutCommand(b"k", b"w")))
    assert m.on_events_failures == 1 and len(m.events) == 2


def test_on_events_gets_a_new_list_of_event_objects() -> None:
    m = KVStateMachine()
    seen: list[list[Event]] = []
    m.on_events = seen.append
    m.apply(1, encode_command(_batch(b"a", b"b")))
    m.apply(2, encode_command(PutCommand(b"c", b"v")))
    assert [[e.key for e in call] for call in seen] == [[b"a", b"b"], [b"c"]]
    assert all(type(e.kind) is EventKind for call in seen for e in call)
    with pytest.raises(AttributeError):
        seen[0][0].key = b"x"  # type: ignore[misc]  # frozen
    # Built through the slots, yet the same as the dataclass's own __init__.
    first = seen[0][0]
    assert first == Event(PUT, b"a", 1, b"v", None) and repr(first) == repr(Event(*_fields(first)))
    assert hash(first) == hash(Event(PUT, b"a", 1, b"v", None))


def _fields(e: Event) -> tuple[EventKind, bytes, int, bytes | None, bytes | None]:
    return (e.kind, e.key, e.revision, e.value, e.prev_value)


def test_events_do_not_enter_equality_or_snapshots() -> None:
    a = KVStateMachine(history_events=1)
    b = KVStateMachine()
    for m in (a, b):
        m.apply(1, encode_command(PutCommand(b"k", b"v")))
        m.apply(2, encode_command(PutCommand(b"k", b"w")))
    assert a == b and a.snapshot() == b.snapshot()
    assert len(a.events) != len(b.events)


# -- property: the events are the changes --------------------------------------------


def _replay(events: list[Event]) -> dict[bytes, bytes]:
    data: dict[bytes, bytes] = {}
    for e in events:
        if e.kind == PUT:
            assert e.value is not None
            assert data.get(e.key) == e.prev_value  # prev_value is the value before
            data[e.key] = e.value
        else:
            assert e.value is None and data.get(e.key) == e.prev_value is not None
            del data[e.key]
    return data


@settings(max_examples=150, deadline=None)
@given(st.lists(entries(), max_size=40))
def test_events_replayed_reproduce_the_data(log: list[bytes]) -> None:
    m = KVStateMachine()
    calls: list[list[Event]] = []
    m.on_events = calls.append
    for index, data in enumerate(log, 1):
        m.apply(index, data)
    history = m.events.since(0)
    assert history == [e for call in calls for e in call]
    revisions = [e.revision for e in history]
    assert revisions == sorted(revisions)
    assert _replay(history) == {k: r[0] for k, r in m.items()}
    # The machine's inlined sizes agree with record_size.
    assert m.events.held_bytes == sum(record_size(e.key, e.value, e.prev_value) for e in history)
    # Cutting at any revision gives the changes after it.
    for cut in sorted(set(revisions))[:3]:
        assert m.events.since(cut) == [e for e in history if e.revision > cut]


@settings(max_examples=50, deadline=None)
@given(st.lists(entries(), max_size=60), st.integers(1, 12))
def test_bounded_history_is_a_suffix_of_whole_revisions(log: list[bytes], bound: int) -> None:
    full = KVStateMachine()
    small = KVStateMachine(history_events=bound)
    for index, data in enumerate(log, 1):
        full.apply(index, data)
        small.apply(index, data)
        assert len(small.events) <= bound
    held = small.events.since(small.events.oldest)
    assert held == full.events.since(small.events.oldest)
    assert all(e.revision > small.events.oldest for e in held)
