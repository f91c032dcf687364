"""Unit tests of the core's building blocks: log, storage, tracker, quorum, reads, config."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.raft import (
    Compacted,
    ConfigError,
    ConfState,
    EntriesUnavailable,
    Entry,
    MemoryStorage,
    Message,
    MsgType,
    RaftConfig,
    RaftInvariantError,
    Snapshot,
    SnapshotMeta,
)
from prkdb.raft.describe import describe_entry, describe_message
from prkdb.raft.log import RaftLog
from prkdb.raft.log_unstable import Unstable
from prkdb.raft.quorum import VoteResult, committed_index, quorum_size, vote_result
from prkdb.raft.read_only import ReadOnly
from prkdb.raft.storage import limit_size
from prkdb.raft.tracker import Inflights, Progress, ProgressState


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    """`ents((term, index), ...)`."""
    return [Entry(t, i) for t, i in pairs]


def storage_with(terms: list[int]) -> MemoryStorage:
    s = MemoryStorage((1, 2, 3))
    s.append([Entry(t, i) for i, t in enumerate(terms, start=1)])
    return s


def log_with(terms: list[int], committed: int = 0) -> RaftLog:
    log = RaftLog(storage_with(terms), 1 << 30)
    log.committed = committed
    return log


def terms_of(log: RaftLog) -> list[int]:
    return [e.term for e in log.slice(log.first_index(), log.last_index() + 1, 1 << 30)]


# -- MemoryStorage --------------------------------------------------------------
def test_memory_storage_positions_and_reads() -> None:
    s = storage_with([1, 1, 2, 3])
    assert (s.first_index(), s.last_index()) == (1, 4)
    assert [s.term(i) for i in range(5)] == [0, 1, 1, 2, 3]
    assert [e.index for e in s.entries(2, 5, 1 << 30)] == [2, 3, 4]
    with pytest.raises(EntriesUnavailable):
        s.term(5)
    with pytest.raises(EntriesUnavailable):
        s.entries(2, 6, 1 << 30)
    with pytest.raises(Compacted):
        s.entries(0, 2, 1 << 30)


def test_memory_storage_compact_keeps_the_dummy_term() -> None:
    s = storage_with([1, 1, 2, 3, 3])
    s.compact(3)
    assert (s.first_index(), s.last_index()) == (4, 5)
    assert s.term(3) == 2  # the log-matching check after a snapshot needs it
    with pytest.raises(Compacted):
        s.term(2)
    with pytest.raises(Compacted):
        s.entries(3, 5, 1 << 30)
    s.compact(2)  # older: a no-op
    assert s.first_index() == 4
    with pytest.raises(EntriesUnavailable):
        s.compact(6)


def test_memory_storage_snapshots() -> None:
    s = storage_with([1, 2, 2])
    snap = s.create_snapshot(2, ConfState((1, 2, 3)), b"data")
    assert snap.meta == SnapshotMeta(2, 2, ConfState((1, 2, 3)))
    assert s.create_snapshot(1, None, b"old") is snap  # not newer: unchanged
    with pytest.raises(EntriesUnavailable):
        s.create_snapshot(9, None, b"")
    s.apply_snapshot(Snapshot(SnapshotMeta(10, 4, ConfState((1, 2))), b"x"))
    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 4)
    assert s.initial_state()[1] == ConfState((1, 2))
    with pytest.raises(RaftInvariantError):
        s.apply_snapshot(Snapshot(SnapshotMeta(5, 4)))


def test_memory_storage_append_truncates_and_rejects_gaps() -> None:
    s = storage_with([1, 1, 1])
    s.append(ents((2, 2), (2, 3), (2, 4)))
    assert [s.term(i) for i in range(1, 5)] == [1, 2, 2, 2]
    s.compact(2)
    s.append(ents((3, 1), (3, 2), (3, 3)))  # entries below first are skipped
    assert (s.first_index(), s.last_index(), s.term(3)) == (3, 3, 3)
    with pytest.raises(RaftInvariantError, match="missing log entries"):
        s.append(ents((3, 5)))


@pytest.mark.parametrize(
    ("max_size", "n"),
    [(0, 1), (16, 1), (33, 2), (48, 3), (1 << 20, 5)],
    ids=["zero-keeps-one", "one", "two", "three", "all"],
)
def test_limit_size(max_size: int, n: int) -> None:
    es = [Entry(1, i) for i in range(1, 6)]  # 16 bytes each
    assert len(limit_size(es, max_size)) == n
    assert limit_size([], 0) == []


# -- Unstable ------------------------------------------------------------------
def test_unstable_truncate_and_append_cases() -> None:
    u = Unstable(5)
    u.truncate_and_append(ents((1, 5), (1, 6)))  # directly after
    assert [(e.term, e.index) for e in u.entries] == [(1, 5), (1, 6)]
    u.truncate_and_append(ents((2, 6), (2, 7)))  # inside: cut and append
    assert [(e.term, e.index) for e in u.entries] == [(1, 5), (2, 6), (2, 7)]
    u.truncate_and_append(ents((3, 4)))  # before offset: replace all
    assert u.offset == 4 and [(e.term, e.index) for e in u.entries] == [(3, 4)]
    assert (u.maybe_last_index(), u.maybe_term(4), u.maybe_term(5)) == (4, 3, None)
    assert u.maybe_first_index() is None
    with pytest.raises(RaftInvariantError):
        u.slice(3, 5)


def test_unstable_stable_to_ignores_superseded_acks() -> None:
    u = Unstable(1)
    u.truncate_and_append(ents((1, 1), (1, 2), (1, 3)))
    u.stable_to(2, 9)  # wrong term: entries were replaced since
    assert u.offset == 1
    u.stable_to(2, 1)
    assert u.offset == 3 and [e.index for e in u.entries] == [3]
    u.stable_to(1, 1)  # already stable
    assert u.offset == 3


def test_unstable_snapshot() -> None:
    u = Unstable(3)
    u.truncate_and_append(ents((1, 3)))
    snap = Snapshot(SnapshotMeta(10, 4))
    u.restore(snap)
    assert (u.offset, u.entries, u.maybe_first_index(), u.maybe_last_index()) == (11, [], 11, 10)
    assert u.maybe_term(10) == 4 and u.maybe_term(9) is None
    u.stable_snap_to(9)
    assert u.snapshot is snap
    u.stable_snap_to(10)
    assert u.snapshot is None


# -- RaftLog ---------------------------------------------------------------------
def test_log_term_and_positions() -> None:
    log = log_with([1, 1, 2])
    log.append(ents((3, 4)))
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 4, 3)
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, 0]
    assert log.match_term(0, 0) and log.match_term(3, 2) and not log.match_term(3, 1)
    assert not log.match_term(9, 0)


@pytest.mark.parametrize(
    ("index", "term", "ok"),
    [(3, 3, True), (2, 3, True), (9, 2, True), (3, 2, True), (2, 2, False), (9, 1, False)],
    ids=["same", "higher-term-shorter", "same-term-longer", "same-term-same", "shorter", "older"],
)
def test_log_is_up_to_date(index: int, term: int, ok: bool) -> None:
    """§5.4.1: compare last terms first, then lengths."""
    log = log_with([1, 2, 2])
    assert log.is_up_to_date(index, term) is ok


@pytest.mark.parametrize(
    ("index", "log_term", "new", "expect_last", "expect_terms"),
    [
        (3, 2, [(3, 4)], 4, [1, 2, 2, 3]),
        (1, 1, [(2, 2), (2, 3)], 3, [1, 2, 2]),  # already have them: no change
        (1, 1, [(3, 2)], 2, [1, 3]),  # conflict at 2: truncate and append
        (2, 2, [], 2, [1, 2, 2]),  # heartbeat-like empty append
        (3, 1, [(3, 4)], None, [1, 2, 2]),  # prev term mismatch
        (5, 2, [(3, 6)], None, [1, 2, 2]),  # prev beyond our log
    ],
    ids=["append", "duplicate", "conflict", "empty", "prev-mismatch", "gap"],
)
def test_log_maybe_append(
    index: int,
    log_term: int,
    new: list[tuple[int, int]],
    expect_last: int | None,
    expect_terms: list[int],
) -> None:
    log = log_with([1, 2, 2], committed=1)
    assert log.maybe_append(index, log_term, 99, tuple(ents(*new))) == expect_last
    assert terms_of(log) == expect_terms
    # The commit index follows the leader but never past what this append proved.
    assert log.committed == (expect_last if expect_last is not None else 1)


def test_log_maybe_append_refuses_to_overwrite_committed() -> None:
    log = log_with([1, 2, 2], committed=2)
    with pytest.raises(RaftInvariantError, match="conflicts with committed"):
        log.maybe_append(1, 1, 3, tuple(ents((3, 2))))


def test_log_find_conflict_by_term() -> None:
    log = log_with([1, 1, 3, 3, 5, 5])
    assert log.find_conflict_by_term(6, 5) == (6, 5)
    assert log.find_conflict_by_term(6, 4) == (4, 3)
    assert log.find_conflict_by_term(6, 2) == (2, 1)
    assert log.find_conflict_by_term(6, 0) == (0, 0)
    assert log.find_conflict_by_term(3, 9) == (3, 3)


def test_log_maybe_commit_only_current_term() -> None:
    """§5.4.2 / Figure 8: only entries of the leader's term commit by counting."""
    log = log_with([1, 2, 2, 4])
    assert not log.maybe_commit(3, 4)
    assert log.committed == 0
    assert log.maybe_commit(4, 4)
    assert log.committed == 4
    assert not log.maybe_commit(3, 2)  # going backwards never happens
    assert log.committed == 4


def test_log_commit_and_apply_bounds() -> None:
    log = log_with([1, 1, 1])
    with pytest.raises(RaftInvariantError, match="past the last index"):
        log.commit_to(4)
    log.commit_to(2)
    log.commit_to(1)  # never moves back
    assert log.committed == 2
    assert [e.index for e in log.next_committed_ents()] == [1, 2]
    with pytest.raises(RaftInvariantError):
        log.applied_to(3)
    log.applied_to(2)
    assert not log.has_next_committed_ents()
    with pytest.raises(RaftInvariantError):
        log.applied_to(1)


def test_log_slices_span_storage_and_unstable_with_a_size_limit() -> None:
    log = log_with([1, 1, 1])
    log.append(ents((2, 4), (2, 5)))
    assert [e.index for e in log.entries_from(2, 1 << 30)] == [2, 3, 4, 5]
    assert [e.index for e in log.entries_from(2, 40)] == [2, 3]
    assert [e.index for e in log.entries_from(3, 40)] == [3, 4]
    assert log.entries_from(6, 1 << 30) == []
    log.storage.compact(2)  # type: ignore[attr-defined]
    with pytest.raises(Compacted):
        log.entries_from(2, 1 << 30)
    with pytest.raises(Compacted):
        log.term_or_raise(1)
    assert log.term_or_raise(2) == 1
    with pytest.raises(RaftInvariantError):
        log.slice(3, 9, 1 << 30)


def test_log_append_below_committed_raises() -> None:
    log = log_with([1, 1, 1], committed=2)
    with pytest.raises(RaftInvariantError, match="below committed"):
        log.append(ents((2, 2)))


def test_log_restore_snapshot() -> None:
    log = log_with([1, 1])
    log.restore(Snapshot(SnapshotMeta(7, 3)))
    assert (log.first_index(), log.last_index(), log.committed, log.last_term()) == (8, 7, 7, 3)


# -- Inflights -------------------------------------------------------------------
def test_inflights_count_and_byte_bounds() -> None:
    w = Inflights(3, max_bytes=100)
    w.add(1, 10)
    w.add(2, 10)
    assert not w.full()
    w.add(3, 10)
    assert w.full() and w.count() == 3
    w.free_le(2)
    assert (w.count(), w.bytes, w.full()) == (1, 10, False)
    w.add(4, 95)
    assert w.full() and w.count() == 2  # by bytes
    w.free_first_one()
    assert (w.count(), w.bytes) == (1, 95)
    w.reset()
    assert (w.count(), w.bytes, w.full()) == (0, 0, False)
    w.free_first_one()  # empty: no-op
    assert Inflights(1).full() is False


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 5), st.integers(0, 50)),
        st.tuples(st.just("free_le"), st.integers(0, 200), st.just(0)),
        st.tuples(st.just("free_first"), st.just(0), st.just(0)),
        st.tuples(st.just("reset"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@given(st.integers(1, 8), st.integers(0, 120), _ops)
def test_inflights_matches_a_list_model(cap: int, max_bytes: int, ops: list) -> None:
    w = Inflights(cap, max_bytes)
    model: list[tuple[int, int]] = []
    last = 0
    for op, a, b in ops:
        if op == "add":
            if len(model) >= cap or (max_bytes and sum(s for _, s in model) >= max_bytes):
                assert w.full()
                continue  # the leader never adds to a full window
            last += a  # indexes increase
            w.add(last, b)
            model.append((last, b))
        elif op == "free_le":
            w.free_le(a)
            model = [(i, s) for i, s in model if i > a]
        elif op == "free_first":
            w.free_first_one()
            model = model[1:]
        else:
            w.reset()
            model = []
        total = sum(s for _, s in model)
        assert w.count() == len(model)
        assert w.bytes == total
        assert w.full() == (len(model) >= cap or (0 < max_bytes <= total))


# -- Progress ----------------------------------------------------------------------
def new_progress(match: int = 0, next_: int = 1) -> Progress:
    pr = Progress(next_, Inflights(2))
    pr.match = match
    return pr


def test_progress_state_transitions() -> None:
    pr = new_progress(match=4, next_=9)
    pr.become_replicate()
    assert (pr.state, pr.next) == (ProgressState.REPLICATE, 5)
    pr.inflights.add(5, 1)
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot, pr.inflights.count()) == (ProgressState.SNAPSHOT, 20, 0)
    assert pr.is_paused()
    pr.become_probe()  # after a snapshot: resume past it
    assert (pr.state, pr.next, pr.pending_snapshot) == (ProgressState.PROBE, 21, 0)
    pr.become_probe()
    assert pr.next == 5


def test_progress_maybe_update() -> None:
    pr = new_progress(match=3, next_=4)
    pr.msg_app_flow_paused = True
    assert pr.maybe_update(5)
    assert (pr.match, pr.next, pr.msg_app_flow_paused) == (5, 6, False)
    assert not pr.maybe_update(4)  # old news
    assert (pr.match, pr.next) == (5, 6)
    pr.update_optimistic(9)
    assert pr.next == 10


def test_progress_maybe_decr_to_in_probe() -> None:
    pr = new_progress(match=0, next_=11)
    pr.msg_app_flow_paused = True
    assert not pr.maybe_decr_to(7, 3)  # not the probe we sent (next-1 == 10)
    assert pr.maybe_decr_to(10, 3)
    assert (pr.next, pr.msg_app_flow_paused) == (4, False)
    assert pr.maybe_decr_to(3, 8)  # a hint above the rejection is capped by it
    assert pr.next == 3


def test_progress_maybe_decr_to_in_replicate() -> None:
    pr = new_progress(match=5, next_=6)
    pr.become_replicate()
    pr.update_optimistic(12)
    assert not pr.maybe_decr_to(5, 0)  # stale: at or below match
    assert pr.maybe_decr_to(9, 0)
    assert pr.next == 6


def test_progress_is_paused() -> None:
    pr = new_progress()
    assert not pr.is_paused()
    pr.msg_app_flow_paused = True
    assert pr.is_paused()
    pr.become_replicate()
    assert not pr.is_paused()
    pr.inflights.add(1, 1)
    pr.inflights.add(2, 1)
    assert pr.is_paused()  # window of 2 is full


# -- quorum ------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_size(n: int, q: int) -> None:
    assert quorum_size(n) == q


@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=7, unique=True),
    st.dictionaries(st.integers(1, 9), st.integers(0, 100)),
)
def test_committed_index_matches_naive_definition(voters: list[int], match: dict) -> None:
    """etcd quick_test.go: the largest index that a majority has reached."""
    got = committed_index(voters, match)
    naive = max(
        (
            i
            for i in {0, *match.values()}
            if sum(1 for v in voters if match.get(v, 0) >= i) >= len(voters) // 2 + 1
        ),
    )
    assert got == naive


def test_committed_index_examples() -> None:
    assert committed_index([1, 2, 3], {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index([1, 2, 3, 4], {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index([1, 2, 3], {1: 5, 9: 100}) == 0  # non-voters do not count
    assert committed_index([], {}) == 0


@pytest.mark.parametrize(
    ("voters", "votes", "result"),
    [
        ([1], {1: True}, VoteResult.WON),
        ([1, 2, 3], {1: True}, VoteResult.PENDING),
        ([1, 2, 3], {1: True, 2: True}, VoteResult.WON),
        ([1, 2, 3], {1: True, 2: False}, VoteResult.PENDING),
        ([1, 2, 3], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3, 4], {1: True, 2: True, 3: False}, VoteResult.PENDING),
        ([1, 2, 3, 4], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3], {1: True, 7: True}, VoteResult.PENDING),  # non-voter ignored
        ([], {}, VoteResult.WON),
    ],
    ids=["solo", "1of3", "2of3", "1yes1no", "lost", "2of4", "lost4", "nonvoter", "empty"],
)
def test_vote_result(voters: list[int], votes: dict, result: VoteResult) -> None:
    assert vote_result(voters, votes) == result


# -- ReadOnly ------------------------------------------------------------------------
def test_read_only_confirms_batches_in_order() -> None:
    ro = ReadOnly()
    ro.add_request(5, b"a", 0)
    ro.add_request(6, b"b", 2)
    ro.add_request(7, b"c", 0)
    ro.add_request(99, b"b", 0)  # duplicate context: ignored
    assert ro.last_pending_context() == b"c"
    assert ro.recv_ack(3, b"b") == {3}
    assert ro.recv_ack(3, b"zzz") is None
    done = ro.advance(b"b")  # confirms a and b, not c
    assert [(r.context, r.index, r.origin) for r in done] == [(b"a", 5, 0), (b"b", 6, 2)]
    assert ro.advance(b"b") == []
    assert ro.last_pending_context() == b"c"
    ro.reset()
    assert ro.last_pending_context() == b"" and ro.pending == {}


# -- config --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"id": 0}, "id (0) must be > 0"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks (0) must be > 0"),
        (
            {"election_ticks": 3, "heartbeat_ticks": 4},
            "election_ticks (3) must be > heartbeat_ticks (4)",
        ),
        (
            {"election_ticks": 4, "heartbeat_ticks": 4},
            "election_ticks (4) must be > heartbeat_ticks (4)",
        ),
        ({"max_size_per_msg": 0}, "max_size_per_msg (0) must be > 0"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs (0) must be > 0"),
        ({"max_inflight_bytes": -1}, "max_inflight_bytes (-1) must be >= 0"),
        ({"max_uncommitted_size": -1}, "max_uncommitted_size (-1) must be >= 0"),
        ({"max_committed_size_per_ready": 0}, "max_committed_size_per_ready (0) must be > 0"),
        ({"applied": -1}, "applied (-1) must be >= 0"),
        ({"peers": (1, 0)}, "peers ((1, 0)) must all be > 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_config_validate_names_the_bad_value(kw: dict, message: str) -> None:
    base = {"id": 1, "peers": (1, 2, 3)}
    cfg = RaftConfig(**(base | kw))
    with pytest.raises(ConfigError) as exc:
        cfg.validate()
    assert str(exc.value) == message


def test_config_defaults_are_valid() -> None:
    cfg = RaftConfig(id=1, peers=(1, 2, 3), rng=random.Random(0))
    cfg.validate()
    assert (cfg.election_ticks, cfg.heartbeat_ticks, cfg.pre_vote, cfg.check_quorum) == (
        10,
        2,
        True,
        True,
    )


# -- describe --------------------------------------------------------------------------
def test_describe_message_formats() -> None:
    m = Message(
        MsgType.APP, to=2, from_=1, term=1, log_term=1, index=2, commit=2, entries=(Entry(1, 3),)
    )
    assert describe_message(m) == "1->2 MsgApp Term:1 Log:1/2 Commit:2 Entries:[1/3]"
    r = Message(MsgType.APP_RESP, to=1, from_=2, term=3, index=7, reject=True, reject_hint=4)
    assert describe_message(r) == "2->1 MsgAppResp Term:3 Log:0/7 Rejected (Hint: 4)"
    h = Message(MsgType.HEARTBEAT, to=3, from_=1, term=2, context=b"r1")
    assert describe_message(h) == "1->3 MsgHeartbeat Term:2 Log:0/0 Context:b'r1'"
    s = Message(
        MsgType.SNAP,
        to=3,
        from_=1,
        term=2,
        snapshot=Snapshot(SnapshotMeta(9, 2, ConfState((3, 1, 2)))),
    )
    assert describe_message(s) == (
        "1->3 MsgSnap Term:2 Log:0/0 Snapshot: Index:9 Term:2 Voters:[1, 2, 3]"
    )
    assert describe_entry(Entry(2, 5, data=b"k")) == "2/5 b'k'"
    every = {describe_message(Message(t)).split()[1] for t in MsgType}
    assert len(every) == len(MsgType) and all(n.startswith("Msg") for n in every)
