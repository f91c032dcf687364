"""Transactions: compares (every target and op, etcd's absent-key rule), branches,
per-op results, one revision, atomicity on every kind of violation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.state import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    InvalidCommand,
    KVStateMachine,
    LeaseGrantCommand,
    OpResult,
    PutCommand,
    ResultCode,
    TxnCommand,
    WriteResult,
    encode_command,
    validate_command,
)

from .strategies import Model, commands, txns
from .test_kv import Driver

V, E, NE, LT, GT = (CompareTarget.VALUE, CompareOp.EQUAL, CompareOp.NOT_EQUAL, CompareOp.LESS,
                    CompareOp.GREATER)


_PUT_OK = (PutCommand(b"ok", b"1"),)


def _txn(*compares: Compare, success=_PUT_OK, failure=()) -> TxnCommand:
    return TxnCommand(tuple(compares), tuple(success), tuple(failure))


def _present() -> Driver:
    """b"k" = b"m" at version 2, created at 2, modified at 4, on lease (3 << 16)."""
    d = Driver()
    d(PutCommand(b"other", b"x"))  # 1
    d(PutCommand(b"k", b"a"))  # 2
    d(LeaseGrantCommand(5000))  # 3
    d(PutCommand(b"k", b"m", 3 << 16))  # 4
    assert d.m.get(b"k") == (b"m", 2, 4, 2, 3 << 16)
    return d


# (target, operand, {op: holds}) for the present key above.
_PRESENT_CASES = [
    (CompareTarget.VALUE, b"m", {E: True, NE: False, LT: False, GT: False}),
    (CompareTarget.VALUE, b"l", {E: False, NE: True, LT: False, GT: True}),
    (CompareTarget.VALUE, b"ma", {E: False, NE: True, LT: True, GT: False}),  # bytewise order
    (CompareTarget.VALUE, b"", {E: False, NE: True, LT: False, GT: True}),
    (CompareTarget.VERSION, 2, {E: True, NE: False, LT: False, GT: False}),
    (CompareTarget.VERSION, 3, {E: False, NE: True, LT: True, GT: False}),
    (CompareTarget.VERSION, 0, {E: False, NE: True, LT: False, GT: True}),
    (CompareTarget.CREATE_REVISION, 2, {E: True, NE: False, LT: False, GT: False}),
    (CompareTarget.CREATE_REVISION, 4, {E: False, NE: True, LT: True, GT: False}),
    (CompareTarget.MOD_REVISION, 4, {E: True, NE: False, LT: False, GT: False}),
    (CompareTarget.MOD_REVISION, 2, {E: False, NE: True, LT: False, GT: True}),
    (CompareTarget.LEASE, 3 << 16, {E: True, NE: False, LT: False, GT: False}),
    (CompareTarget.LEASE, 0, {E: False, NE: True, LT: False, GT: True}),
]

# For an absent key: no value (every VALUE compare false), every number 0.
_ABSENT_CASES = [
    (CompareTarget.VALUE, b"", {E: False, NE: False, LT: False, GT: False}),
    (CompareTarget.VALUE, b"x", {E: False, NE: False, LT: False, GT: False}),
    *[
        (t, 0, {E: True, NE: False, LT: False, GT: False})
        for t in (CompareTarget.VERSION, CompareTarget.CREATE_REVISION,
                  CompareTarget.MOD_REVISION, CompareTarget.LEASE)
    ],
    *[
        (t, 1, {E: False, NE: True, LT: True, GT: False})
        for t in (CompareTarget.VERSION, CompareTarget.CREATE_REVISION,
                  CompareTarget.MOD_REVISION, CompareTarget.LEASE)
    ],
]


def _expand(cases):
    return [(t, operand, op, holds) for t, operand, table in cases for op, holds in table.items()]


@pytest.mark.parametrize(("target", "operand", "op", "holds"), _expand(_PRESENT_CASES),
                         ids=str)
def test_compare_on_present_key(target, operand, op, holds):
    d = _present()
    before = d.m.items()
    r = d(_txn(Compare(b"k", target, op, operand), success=(GetOp(b"k"),),
               failure=(GetOp(b"other"),)))
    assert r.ok and r.succeeded is holds and r.revision == d.index
    assert r.ops == ((OpResult(2, 2, b"m", 4, 2, 3 << 16),) if holds
                     else (OpResult(1, 1, b"x", 1, 1, 0),))
    assert d.m.items() == before  # reads change nothing


@pytest.mark.parametrize(("target", "operand", "op", "holds"), _expand(_ABSENT_CASES), ids=str)
def test_compare_on_absent_key(target, operand, op, holds):
    d = _present()
    assert d(_txn(Compare(b"nope", target, op, operand))).succeeded is holds


def test_exists_and_absent_idioms():
    d = _present()
    exists = Compare(b"k", CompareTarget.VERSION, GT, 0)
    absent = Compare(b"k", CompareTarget.VERSION, E, 0)
    assert d(_txn(exists)).succeeded and not d(_txn(absent)).succeeded
    d(DeleteCommand(b"k"))
    assert not d(_txn(exists)).succeeded and d(_txn(absent)).succeeded


def test_all_compares_must_hold_and_none_is_success():
    d = _present()
    yes = Compare(b"k", CompareTarget.VALUE, E, b"m")
    no = Compare(b"k", CompareTarget.VERSION, E, 9)
    assert d(_txn(yes, yes)).succeeded
    assert not d(_txn(yes, no)).succeeded
    assert not d(_txn(no, yes)).succeeded
    assert d(_txn()).succeeded  # no compares: always success


def test_branch_ops_run_in_order_see_earlier_ops_and_share_one_revision():
    d = _present()
    r = d(_txn(
        Compare(b"k", CompareTarget.VERSION, E, 1),  # false: failure runs
        success=(PutCommand(b"never", b"x"),),
        failure=(
            GetOp(b"new"),
            PutCommand(b"new", b"1"),
            PutCommand(b"new", b"2"),
            GetOp(b"new"),
            DeleteCommand(b"k"),
            GetOp(b"k"),
            PutCommand(b"k", b"again"),
            GetOp(b"k"),
        ),
    ))
    i = d.index
    assert r == WriteResult(ResultCode.OK, i, succeeded=False, ops=(
        OpResult(0, 0),
        OpResult(1, 0),
        OpResult(2, 1),
        OpResult(2, 2, b"2", i, i, 0),
        OpResult(0, 2),
        OpResult(0, 0),
        OpResult(1, 0),
        OpResult(1, 1, b"again", i, i, 0),  # re-created: a new create_revision, no lease
    ))
    assert d.m.get(b"never") is None
    assert d.m.get(b"new") == (b"2", 2, i, i, 0)
    assert d.m.lease(3 << 16) == (5000, [])  # the delete detached k
    d.m.check_invariants()


def test_compares_see_the_state_before_the_entry():
    d = Driver()
    # The success branch creates b"a"; the compare said absent, and that was
    # decided before any op ran.
    r = d(_txn(Compare(b"a", CompareTarget.VERSION, E, 0),
               success=(PutCommand(b"a", b"1"), GetOp(b"a"))))
    assert r.succeeded and r.ops[1] == OpResult(1, 1, b"1", 1, 1, 0)


def test_empty_branch_is_a_successful_noop():
    d = _present()
    before = d.m.items()
    assert d(TxnCommand((), (), ())) == WriteResult(ResultCode.OK, d.index)
    assert d(_txn(Compare(b"k", CompareTarget.VERSION, E, 0), failure=())) == WriteResult(
        ResultCode.OK, d.index, succeeded=False)
    assert d.m.items() == before


# -- atomicity: a violation anywhere changes nothing ------------------------------------


def _small() -> Driver:
    d = Driver(KVStateMachine(max_key_size=8, max_value_size=10, max_batch_ops=3))
    d(PutCommand(b"a", b"old"))
    return d


@pytest.mark.parametrize(
    ("txn", "code", "message"),
    [
        (_txn(*[Compare(b"a", CompareTarget.VERSION, E, 1)] * 4), ResultCode.BATCH_TOO_LARGE,
         "txn has 4 compares, over max_batch_ops (3)"),
        (_txn(success=(PutCommand(b"a", b"1"),) * 4), ResultCode.BATCH_TOO_LARGE,
         "txn has 4 success ops, over max_batch_ops (3)"),
        # limits hold for the branch that does not run too
        (_txn(failure=(GetOp(b"a"),) * 4), ResultCode.BATCH_TOO_LARGE,
         "txn has 4 failure ops, over max_batch_ops (3)"),
        (_txn(failure=(PutCommand(b"b", b"x" * 11),)), ResultCode.VALUE_TOO_LARGE,
         "txn failure op 0: value is 11 bytes"),
        (_txn(success=(PutCommand(b"a", b"1"), DeleteCommand(b"k" * 9))),
         ResultCode.KEY_TOO_LARGE, "txn success op 1: key is 9 bytes, over max_key_size (8)"),
        (_txn(success=(GetOp(b""),)), ResultCode.INVALID_COMMAND,
         "txn success op 0: key must not be empty"),
        (_txn(Compare(b"k" * 9, CompareTarget.VERSION, E, 0)), ResultCode.KEY_TOO_LARGE,
         "txn compare 0: key is 9 bytes"),
        (_txn(Compare(b"a", CompareTarget.VALUE, E, b"x" * 11)), ResultCode.VALUE_TOO_LARGE,
         "txn compare 0: compare operand (VALUE) is 11 bytes"),
        (_txn(success=(PutCommand(b"a", b"1"), PutCommand(b"b", b"1", 7 << 16))),
         ResultCode.LEASE_NOT_FOUND, "success op 1: lease 458752 not found"),
        (_txn(Compare(b"a", CompareTarget.VERSION, E, 7),
              failure=(DeleteCommand(b"a"), PutCommand(b"b", b"1", 7 << 16))),
         ResultCode.LEASE_NOT_FOUND, "failure op 1: lease 458752 not found"),
    ],
)
def test_violation_applies_nothing(txn, code, message):
    d = _small()
    before = d.m.items()
    r = d(txn)
    assert (r.code, r.revision, r.ops, r.ok) == (code, d.index, (), False)
    assert r.message.startswith(message), r.message
    assert d.m.items() == before
    if code is not ResultCode.LEASE_NOT_FOUND:  # the one only apply can know
        with pytest.raises(InvalidCommand) as e:
            validate_command(txn, d.m.limits)
        assert e.value.code is code and str(e.value) == r.message
    else:
        validate_command(txn, d.m.limits)


def test_unknown_lease_in_the_branch_that_does_not_run_is_fine():
    d = _small()
    r = d(_txn(success=(PutCommand(b"b", b"1"),), failure=(PutCommand(b"c", b"1", 7 << 16),)))
    assert r.ok and r.succeeded and d.m.get(b"b") is not None


def test_txn_limits_at_the_boundary_are_accepted():
    d = _small()
    three = (GetOp(b"a"),) * 3
    validate_command(_txn(*[Compare(b"a", V, E, b"x" * 10)] * 3, success=three, failure=three),
                     d.m.limits)


@pytest.mark.parametrize(
    ("txn", "message"),
    [
        (TxnCommand([], (), ()), "Txn compares must be a tuple, got list"),  # type: ignore[arg-type]
        (TxnCommand((), [], ()), "Txn success must be a tuple"),  # type: ignore[arg-type]
        (TxnCommand(((b"k", 1, 0, 0),), (), ()),  # type: ignore[arg-type]
         "txn compare 0: must be a Compare, got tuple"),
        (TxnCommand((), (LeaseGrantCommand(5),), ()),  # type: ignore[arg-type]
         "txn success op 0: must be Put, Delete or GetOp, got LeaseGrantCommand"),
        (_txn(Compare(b"a", True, E, 1)),  # type: ignore[arg-type]
         "unknown compare target True"),
    ],
)
def test_ill_typed_txn_is_invalid(txn, message):
    with pytest.raises(InvalidCommand, match=message) as e:
        validate_command(txn)
    assert e.value.code is ResultCode.INVALID_COMMAND


@pytest.mark.parametrize(
    ("txn", "code", "message"),
    [
        (_txn(Compare(b"a", CompareTarget.VALUE, E, 1)), ResultCode.INVALID_COMMAND,
         "txn compare 0: compare operand (VALUE) must be bytes, got int"),
        (_txn(Compare(b"a", CompareTarget.VERSION, E, b"1")), ResultCode.INVALID_COMMAND,
         "txn compare 0: compare operand (VERSION) must be a 64-bit int >= 0, got b'1'"),
        (_txn(Compare(b"a", CompareTarget.LEASE, E, -1)), ResultCode.INVALID_COMMAND,
         "txn compare 0: compare operand (LEASE) must be a 64-bit int >= 0"),
        (_txn(Compare(b"a", 5, E, 1)), ResultCode.INVALID_COMMAND,  # type: ignore[arg-type]
         "txn compare 0: unknown compare target 5"),
        (_txn(Compare(b"a", CompareTarget.VERSION, 4, 1)),  # type: ignore[arg-type]
         ResultCode.INVALID_COMMAND, "txn compare 0: unknown compare op 4"),
        (_txn(success=(PutCommand(b"b", b"1", -1),)), ResultCode.INVALID_COMMAND,
         "txn success op 0: lease must be a 64-bit int >= 0, got -1"),
    ],
)
def test_ill_typed_fields_are_invalid_and_never_apply(txn, code, message):
    # validate_command names the field; if such a command reached the log
    # anyway its bytes would not even decode (MALFORMED_COMMAND), or apply's
    # own check_command would refuse it: either way nothing changes.
    with pytest.raises(InvalidCommand) as e:
        validate_command(txn)
    assert e.value.code is code and str(e.value).startswith(message)
    d = _small()
    before = d.m.items()
    try:
        data = encode_command(txn)
    except TypeError:
        return
    r = d.raw(data)
    assert r is not None and r.code in (ResultCode.MALFORMED_COMMAND, code)
    assert d.m.items() == before


def test_plain_int_targets_and_ops_are_accepted():
    # The wire layer may build compares from decoded ints; equal to the enums.
    d = _present()
    r = d(TxnCommand((Compare(b"k", 1, 0, 2),), (GetOp(b"k"),)))  # type: ignore[arg-type]
    assert r.succeeded


# -- model check ------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.one_of(txns, txns, commands), max_size=30))
def test_txns_match_the_model(cmds):
    d, model = Driver(), Model()
    for cmd in cmds:
        r = d(cmd)
        want = model.expect(d.index, cmd)
        if not want.ok:
            r = WriteResult(r.code, r.revision, r.version, r.prev_version, r.ops)
        assert r == want, cmd
    d.m.check_invariants()
    assert dict(d.m.items()) == model.data


def test_txn_with_session_is_exactly_once():
    d = _present()
    txn = _txn(Compare(b"k", CompareTarget.VALUE, E, b"m"),
               success=(PutCommand(b"k", b"n"), GetOp(b"k")))
    first = d(txn, b"client", 1)
    assert first.succeeded
    # The compare would now fail and the put bump the version again; the retry
    # returns the first result, with its GetOp record, and changes nothing.
    before = d.m.items()
    assert d(txn, b"client", 1) == first
    assert d.m.items() == before
    assert first.ops[1].value == b"n"


def test_txn_entry_encodes_small():
    txn = _txn(Compare(b"k", CompareTarget.VERSION, E, 0), success=(PutCommand(b"k", b"v"),))
    # [5, [[k, 1, 0, 0]], [[1, k, v]], []]: 17 bytes
    assert len(encode_command(txn)) == 17
