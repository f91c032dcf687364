"""Leases: ids, grant/revoke/expire, attaching and detaching keys, the lease cap,
exactly-once replay of lease and txn results, and determinism across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    BatchCommand,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    InvalidCommand,
    KVStateMachine,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    OpResult,
    PutCommand,
    ResultCode,
    TxnCommand,
    WriteResult,
    encode_command,
    lease_partition,
    validate_command,
)
from prkdb.state.results import result_from_cbor, result_to_cbor

from .strategies import entries
from .test_kv import Driver


def _granted(partition: int = 0, ttl_ms: int = 5000) -> tuple[Driver, int]:
    d = Driver(KVStateMachine(partition=partition))
    d(PutCommand(b"x", b"unleased"))  # 1
    r = d(LeaseGrantCommand(ttl_ms))  # 2
    return d, r.lease_id


def test_grant_id_is_index_and_partition():
    d, lease = _granted(partition=7, ttl_ms=2500)
    assert lease == 2 << 16 | 7 and lease_partition(lease) == 7
    assert d.m.apply(3, b"") is None
    r = d.m.apply(9, encode_command(LeaseGrantCommand(100)))
    assert r == WriteResult(ResultCode.OK, 9, lease_id=9 << 16 | 7)
    assert d.m.leases() == [(lease, 2500), (9 << 16 | 7, 100)]
    assert d.m.lease(lease) == (2500, []) and d.m.lease(12345) is None
    assert d.m.lease_count == 2 and d.m.has_lease(lease) and not d.m.has_lease(1)


def test_put_attaches_and_detaches():
    d, lease = _granted()
    other = d(LeaseGrantCommand(10)).lease_id
    assert d(PutCommand(b"b", b"1", lease)).ok
    assert d(PutCommand(b"a", b"1", lease)).ok
    assert d.m.get(b"a") == (b"1", 1, 5, 5, lease)
    assert d.m.lease(lease) == (5000, [b"a", b"b"])
    # Same lease again: still attached once; the version goes up.
    assert d(PutCommand(b"a", b"2", lease)).version == 2
    assert d.m.lease(lease) == (5000, [b"a", b"b"])
    # Another lease moves the key; a put without a lease detaches it.
    d(PutCommand(b"a", b"3", other))
    assert d.m.lease(lease) == (5000, [b"b"]) and d.m.lease(other) == (10, [b"a"])
    d(PutCommand(b"a", b"4"))
    assert d.m.lease(other) == (10, []) and d.m.get(b"a")[4] == 0  # type: ignore[index]
    # A delete detaches; so does a CAS that stores a value (a put without a lease).
    d(DeleteCommand(b"b"))
    assert d.m.lease(lease) == (5000, [])
    d(PutCommand(b"c", b"1", lease))
    d(CompareAndSetCommand(b"c", expected_version=1, new_value=b"2"))
    assert d.m.lease(lease) == (5000, []) and d.m.get(b"c")[4] == 0  # type: ignore[index]
    d.m.check_invariants()


def test_put_with_unknown_lease_changes_nothing():
    d, lease = _granted()
    before = d.m.items()
    r = d(PutCommand(b"x", b"new", lease + (1 << 16)))
    assert r.code is ResultCode.LEASE_NOT_FOUND and not r.ok
    assert r.message == f"lease {lease + (1 << 16)} not found (expired, revoked, or of another " \
                        f"partition)"
    # A lease of another partition is unknown here too.
    assert d(PutCommand(b"x", b"new", lease | 1)).code is ResultCode.LEASE_NOT_FOUND
    r = d(BatchCommand((PutCommand(b"y", b"1"), PutCommand(b"z", b"1", 99 << 16))))
    assert r.code is ResultCode.LEASE_NOT_FOUND and r.message.startswith("batch op 1: ")
    assert d.m.items() == before


@pytest.mark.parametrize("expired", [False, True])
def test_revoke_deletes_attached_keys_in_one_entry(expired):
    d, lease = _granted()
    for key in (b"c", b"a", b"b"):
        d(PutCommand(key, b"v", lease))
    d(PutCommand(b"a", b"v2", lease))
    r = d(LeaseRevokeCommand(lease, expired))
    assert r == WriteResult(ResultCode.OK, d.index, version=3)
    assert [k for k, _ in d.m.items()] == [b"x"]
    assert d.m.scan(b"", None, keys_only=True) == [(b"x", b"", 1, 1, 1, 0)]
    assert d.m.leases() == [] and d.m.lease(lease) is None
    # Gone: a second revoke, and a put naming it, find nothing.
    assert d(LeaseRevokeCommand(lease)).code is ResultCode.LEASE_NOT_FOUND
    assert d(PutCommand(b"a", b"v", lease)).code is ResultCode.LEASE_NOT_FOUND
    d.m.check_invariants()


def test_revoke_of_a_lease_without_keys():
    d, lease = _granted()
    assert d(LeaseRevokeCommand(lease, True)) == WriteResult(ResultCode.OK, 3, version=0)


def test_lease_limit():
    d = Driver(KVStateMachine(max_leases=2))
    a = d(LeaseGrantCommand(1)).lease_id
    d(LeaseGrantCommand(1))
    r = d(LeaseGrantCommand(1))
    assert r.code is ResultCode.LEASE_LIMIT and r.lease_id == 0
    assert r.message == "partition has 2 leases, the most max_leases allows"
    assert d.m.lease_count == 2
    d(LeaseRevokeCommand(a))
    assert d(LeaseGrantCommand(1)).ok


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        (LeaseGrantCommand(0), "lease ttl_ms must be a positive 64-bit int, got 0"),
        (LeaseGrantCommand(2**64), "lease ttl_ms must be a positive 64-bit int"),
        (LeaseGrantCommand(True), "lease ttl_ms must be a positive 64-bit int, got True"),
        (LeaseRevokeCommand(0), "lease id must be a positive 64-bit int, got 0"),
        (LeaseRevokeCommand(5, 1), "LeaseRevoke expired must be a bool, got int"),  # type: ignore[arg-type]
        (PutCommand(b"k", b"v", 2**64), "lease must be a 64-bit int >= 0"),
        (PutCommand(b"k", b"v", "1"), "lease must be a 64-bit int >= 0, got '1'"),  # type: ignore[arg-type]
    ],
)
def test_invalid_lease_commands(cmd, message):
    with pytest.raises(InvalidCommand, match=message) as e:
        validate_command(cmd)
    assert e.value.code is ResultCode.INVALID_COMMAND


def test_grant_of_ttl_zero_in_the_log_is_a_failed_noop():
    d = Driver()
    r = d(LeaseGrantCommand(0))
    assert r.code is ResultCode.INVALID_COMMAND and d.m.lease_count == 0


def test_txn_put_attaches_and_compare_sees_the_lease():
    d, lease = _granted()
    r = d(TxnCommand(
        (Compare(b"lock", CompareTarget.CREATE_REVISION, CompareOp.EQUAL, 0),),
        (PutCommand(b"lock", b"me", lease), GetOp(b"lock")),
        (GetOp(b"lock"),),
    ))
    assert r.succeeded and r.ops[1] == OpResult(1, 1, b"me", 3, 3, lease)
    assert d.m.lease(lease) == (5000, [b"lock"])
    held = d(TxnCommand(
        (Compare(b"lock", CompareTarget.LEASE, CompareOp.EQUAL, lease),), (), ()))
    assert held.succeeded


def test_partition_must_fit_16_bits():
    KVStateMachine(partition=65535)
    for bad in (-1, 65536, True):
        with pytest.raises(ValueError, match="partition"):
            KVStateMachine(partition=bad)


# -- sessions ---------------------------------------------------------------------------


def test_retried_grant_and_revoke_replay_their_results():
    d = Driver()
    grant = d(LeaseGrantCommand(3000), b"c", 1)
    assert grant.lease_id == 1 << 16
    # A retry must not grant a second lease: same result, same id.
    assert d(LeaseGrantCommand(3000), b"c", 1) == grant
    assert d.m.lease_count == 1
    d(PutCommand(b"k", b"v", grant.lease_id))
    revoke = d(LeaseRevokeCommand(grant.lease_id), b"c", 2)
    assert revoke.version == 1
    again = d(LeaseRevokeCommand(grant.lease_id), b"c", 2)
    assert again == revoke  # not LEASE_NOT_FOUND: the cached answer
    # And through a snapshot: the cached results survive restore.
    restored = KVStateMachine()
    restored.restore(d.m.snapshot())
    assert restored.apply(d.index + 1, encode_command(LeaseRevokeCommand(grant.lease_id),
                                                      b"c", 2)) == revoke


@settings(max_examples=300)
@given(st.builds(
    WriteResult,
    st.sampled_from(ResultCode),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 5),
    st.lists(st.one_of(
        st.builds(OpResult, st.integers(0, 9), st.integers(0, 9)),
        st.builds(OpResult, st.integers(0, 9), st.integers(0, 9), st.none() | st.binary(max_size=3),
                  st.integers(0, 9), st.integers(0, 9), st.integers(0, 2**64 - 1)),
    ), max_size=4).map(tuple),
    st.text(max_size=5),
    st.booleans(),
    st.integers(0, 2**64 - 1),
))
def test_result_cbor_round_trip(result):
    assert result_from_cbor(cbor2.loads(cbor2.dumps(result_to_cbor(result)))) == result


# -- determinism ------------------------------------------------------------------------


@settings(max_examples=100)
@given(st.lists(entries(), max_size=60))
def test_two_machines_fed_the_same_entries_snapshot_equal_bytes(log):
    a, b = KVStateMachine(partition=3, max_leases=4), KVStateMachine(partition=3, max_leases=4)
    for index, data in enumerate(log, 1):
        assert a.apply(index, data) == b.apply(index, data)
    assert a == b and a.snapshot() == b.snapshot()
    a.check_invariants()
    restored = KVStateMachine(partition=3, max_leases=4)
    restored.restore(a.snapshot())
    assert restored == a and restored.snapshot() == a.snapshot()


_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    from prkdb.state import *
    m = KVStateMachine(partition=1)
    i = 0
    def put(c):
        global i
        i += 1
        m.apply(i, encode_command(c))
    put(LeaseGrantCommand(1000))
    lease = 1 << 16 | 1
    for n in range(300):
        put(PutCommand(b"key%d" % (n * 7919 % 300), b"v", lease if n % 3 else 0))
    put(TxnCommand((), tuple(DeleteCommand(b"key%d" % n) for n in range(0, 300, 11)), ()))
    put(LeaseRevokeCommand(lease, True))
    print(hashlib.sha256(m.snapshot()).hexdigest(), len(m))
""")


def test_snapshot_bytes_do_not_depend_on_the_hash_seed():
    """Lease key sets are sets of bytes, whose order changes with PYTHONHASHSEED;
    replicas are different processes, so nothing may depend on it."""
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, check=True,
                              capture_output=True, text=True)
        outs.add(proc.stdout)
    assert len(outs) == 1, outs
