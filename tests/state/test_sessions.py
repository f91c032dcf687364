"""Client sessions: exactly-once retries, stale sequences, deterministic expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.state import (
    CompareAndSetCommand,
    DeleteCommand,
    KVStateMachine,
    PutCommand,
    ResultCode,
    SessionTable,
    WriteResult,
    encode_command,
)

from .strategies import entries


def _apply(m: KVStateMachine, index: int, cmd, client_id=None, seq=None) -> WriteResult:
    r = m.apply(index, encode_command(cmd, client_id, seq))
    assert r is not None
    return r


def test_retry_after_lost_reply_applies_once():
    m = KVStateMachine()
    first = _apply(m, 1, PutCommand(b"k", b"v"), b"client", 1)
    # The reply is lost; the client retries the same seq, which the new
    # leader appends again at a later index.
    m.apply(2, b"")
    retry = _apply(m, 3, PutCommand(b"k", b"v"), b"client", 1)
    assert retry == first  # same result, including the original revision 1
    assert m.get(b"k") == (b"v", 1, 1, 1, 0)  # applied once: version 1, not 2
    assert m.sessions.get(b"client") == (1, 3, first)  # refreshed at index 3
    # The next seq applies normally.
    assert _apply(m, 4, PutCommand(b"k", b"v2"), b"client", 2).version == 2


def test_retry_of_failed_cas_returns_the_same_failure():
    m = KVStateMachine()
    failed = _apply(m, 1, CompareAndSetCommand(b"k", expected_version=3, new_value=b"v"), 7, 1)
    assert failed.code is ResultCode.CAS_FAILED
    _apply(m, 2, PutCommand(b"k", b"x"))  # someone else writes meanwhile
    assert _apply(m, 3, CompareAndSetCommand(b"k", expected_version=3, new_value=b"v"), 7,
                  1) == failed


def test_retry_of_non_idempotent_delete_is_not_reapplied():
    m = KVStateMachine()
    _apply(m, 1, PutCommand(b"k", b"v"))
    first = _apply(m, 2, DeleteCommand(b"k"), b"c", 1)
    _apply(m, 3, PutCommand(b"k", b"again"))
    assert _apply(m, 4, DeleteCommand(b"k"), b"c", 1) == first
    assert m.get(b"k") == (b"again", 1, 3, 3, 0)


def test_older_seq_is_stale_and_not_applied():
    m = KVStateMachine()
    _apply(m, 1, PutCommand(b"k", b"v1"), b"c", 5)
    r = _apply(m, 2, PutCommand(b"k", b"late"), b"c", 4)
    assert r == WriteResult(
        ResultCode.STALE_SEQUENCE, 2,
        message="seq 4 is older than the last applied seq 5 of this client",
    )
    assert m.get(b"k") == (b"v1", 1, 1, 1, 0)
    assert m.sessions.get(b"c")[0] == 5  # type: ignore[index]


def test_sessions_are_per_client_and_ids_are_typed():
    m = KVStateMachine()
    _apply(m, 1, PutCommand(b"k", b"a"), b"1", 1)
    # int 1 is a different client from bytes b"1": this applies.
    assert _apply(m, 2, PutCommand(b"k", b"b"), 1, 1).version == 2
    assert len(m.sessions) == 2


def test_sessionless_writes_leave_the_table_alone():
    m = KVStateMachine()
    _apply(m, 1, PutCommand(b"k", b"v"))
    _apply(m, 2, PutCommand(b"k", b"v"))
    assert len(m.sessions) == 0 and m.get(b"k") == (b"v", 2, 2, 1, 0)


def test_session_expires_after_ttl_log_indexes():
    m = KVStateMachine(session_ttl_entries=10)
    _apply(m, 1, PutCommand(b"k", b"v"), b"c", 1)
    m.apply(11, b"")  # 11 - 1 = 10: not *more* than the TTL
    assert b"c" in m.sessions
    m.apply(12, b"")  # 12 - 1 = 11 > 10: dropped, by a no-op entry too
    assert b"c" not in m.sessions
    # Known weakness: a retry after expiry is applied again.
    assert _apply(m, 13, PutCommand(b"k", b"v"), b"c", 1).version == 2


def test_retry_refreshes_ttl():
    m = KVStateMachine(session_ttl_entries=10)
    _apply(m, 1, PutCommand(b"k", b"v"), b"c", 1)
    _apply(m, 10, PutCommand(b"k", b"v"), b"c", 1)  # retry touches the session
    m.apply(20, b"")
    assert b"c" in m.sessions
    m.apply(21, b"")
    assert b"c" not in m.sessions


def test_stale_seq_does_not_refresh_ttl():
    m = KVStateMachine(session_ttl_entries=10)
    _apply(m, 1, PutCommand(b"k", b"v"), b"c", 2)
    _apply(m, 10, PutCommand(b"k", b"v"), b"c", 1)
    m.apply(12, b"")
    assert b"c" not in m.sessions


def test_capacity_evicts_least_recently_used_by_log_index():
    m = KVStateMachine(max_sessions=3)
    for i, cid in enumerate([b"a", b"b", b"c"], 1):
        _apply(m, i, PutCommand(b"k", b"v"), cid, 1)
    _apply(m, 4, PutCommand(b"k", b"v"), b"a", 1)  # retry: a becomes most recent
    _apply(m, 5, PutCommand(b"k", b"v"), b"d", 1)  # over capacity: b (used at 2) goes
    assert [cid for cid, *_ in m.sessions] == [b"c", b"a", b"d"]
    assert [used for _, _, used, _ in m.sessions] == [3, 4, 5]


def test_table_rejects_bad_config():
    with pytest.raises(ValueError, match=r"max_sessions \(0\) must be a positive int"):
        SessionTable(max_sessions=0)
    with pytest.raises(ValueError, match="session_ttl_entries"):
        KVStateMachine(session_ttl_entries=0)


@given(st.lists(entries(), max_size=60), st.lists(st.integers(1, 3), max_size=60))
def test_replicas_fed_the_same_log_agree_exactly(log, gaps):
    """Two machines (small bounds, so expiry and eviction happen) applying the
    same entries at the same indexes end with identical data, session table
    (order included), results and snapshot bytes."""
    a = KVStateMachine(max_sessions=2, session_ttl_entries=6, max_batch_ops=3)
    b = KVStateMachine(max_sessions=2, session_ttl_entries=6, max_batch_ops=3)
    index = 0
    for i, data in enumerate(log):
        index += gaps[i] if i < len(gaps) else 1
        assert a.apply(index, data) == b.apply(index, data)
        assert len(a.sessions) <= 2
        for _, _, used, _ in a.sessions:
            assert index - used <= 6
    assert a == b
    assert a.snapshot() == b.snapshot()
