"""KVStateMachine: versions, revisions, CAS, batches, limits, no-ops, invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.state import (
    BatchCommand,
    CompareAndSetCommand,
    DeleteCommand,
    InvalidCommand,
    KVStateMachine,
    Limits,
    OpResult,
    PutCommand,
    ResultCode,
    StateInvariantError,
    WriteResult,
    encode_command,
    validate_command,
)

from .strategies import Model, commands


class Driver:
    """Feeds commands at consecutive log indexes, like the partition driver."""

    def __init__(self, machine: KVStateMachine | None = None) -> None:
        self.m = machine if machine is not None else KVStateMachine()
        self.index = self.m.applied_index

    def __call__(self, cmd, client_id=None, seq=None) -> WriteResult:
        self.index += 1
        result = self.m.apply(self.index, encode_command(cmd, client_id, seq))
        assert result is not None
        return result

    def raw(self, data: bytes) -> WriteResult | None:
        self.index += 1
        return self.m.apply(self.index, data)


# -- versions and revisions ----------------------------------------------------


def test_put_creates_at_version_1_and_bumps_with_mod_revision():
    d = Driver()
    assert d(PutCommand(b"k", b"v1")) == WriteResult(ResultCode.OK, 1, version=1, prev_version=0)
    d(PutCommand(b"other", b"x"))
    r = d(PutCommand(b"k", b"v2"))
    assert (r.ok, r.revision, r.version, r.prev_version) == (True, 3, 2, 1)
    assert d.m.get(b"k") == (b"v2", 2, 3, 1, 0)  # created at 1
    assert d.m.get(b"other") == (b"x", 1, 2, 2, 0)
    assert len(d.m) == 2 and d.m.applied_index == 3


def test_delete_resets_version_and_reports_previous():
    d = Driver()
    d(PutCommand(b"k", b"v"))
    d(PutCommand(b"k", b"v"))
    assert d(DeleteCommand(b"k")) == WriteResult(ResultCode.OK, 3, version=0, prev_version=2)
    assert d.m.get(b"k") is None and b"k" not in d.m
    # Deleting an absent key succeeds and changes nothing.
    assert d(DeleteCommand(b"k")) == WriteResult(ResultCode.OK, 4, version=0, prev_version=0)
    # Re-creating starts again at version 1.
    assert d(PutCommand(b"k", b"new")).version == 1
    assert d.m.get(b"k") == (b"new", 1, 5, 5, 0)  # create_revision reset


def test_empty_value_is_allowed():
    d = Driver()
    assert d(PutCommand(b"k", b"")).ok
    assert d.m.get(b"k") == (b"", 1, 1, 1, 0)


# -- compare-and-set -------------------------------------------------------------


def _with_key(version: int) -> Driver:
    """A machine where b"k" == b"v<version>" at the given version (0 = absent)."""
    d = Driver()
    for i in range(1, version + 1):
        d(PutCommand(b"k", b"v%d" % i))
    return d


@pytest.mark.parametrize(
    ("version", "cas", "ok"),
    [
        # on value
        (2, CompareAndSetCommand(b"k", expected_value=b"v2", new_value=b"n"), True),
        (2, CompareAndSetCommand(b"k", expected_value=b"v1", new_value=b"n"), False),
        (0, CompareAndSetCommand(b"k", expected_value=b"v1", new_value=b"n"), False),
        # on version
        (2, CompareAndSetCommand(b"k", expected_version=2, new_value=b"n"), True),
        (2, CompareAndSetCommand(b"k", expected_version=1, new_value=b"n"), False),
        (0, CompareAndSetCommand(b"k", expected_version=0, new_value=b"n"), True),
        (1, CompareAndSetCommand(b"k", expected_version=0, new_value=b"n"), False),
        # on absence
        (0, CompareAndSetCommand(b"k", expected_value=None, new_value=b"n"), True),
        (1, CompareAndSetCommand(b"k", expected_value=None, new_value=b"n"), False),
        # both conditions must hold
        (2, CompareAndSetCommand(b"k", expected_value=b"v2", expected_version=2,
                                 new_value=b"n"), True),
        (2, CompareAndSetCommand(b"k", expected_value=b"v2", expected_version=1,
                                 new_value=b"n"), False),
        (2, CompareAndSetCommand(b"k", expected_value=b"v1", expected_version=2,
                                 new_value=b"n"), False),
        (0, CompareAndSetCommand(b"k", expected_value=None, expected_version=0, new_value=b"n"),
         True),
    ],
    ids=lambda x: repr(x) if not isinstance(x, CompareAndSetCommand) else "",
)
def test_cas_conditions(version, cas, ok):
    d = _with_key(version)
    before = d.m.get(b"k")
    r = d(cas)
    if ok:
        assert r.code is ResultCode.OK
        assert (r.version, r.prev_version) == (version + 1, version)
        assert d.m.get(b"k") == (b"n", version + 1, d.index, 1 if version else d.index, 0)
    else:
        assert r.code is ResultCode.CAS_FAILED and not r.ok
        # A failed CAS reports the current version so the client can retry.
        assert (r.version, r.prev_version) == (version, version)
        assert r.message.startswith("compare failed: ")
        assert d.m.get(b"k") == before


def test_cas_with_new_value_none_deletes():
    d = _with_key(3)
    r = d(CompareAndSetCommand(b"k", expected_version=3, new_value=None))
    assert (r.ok, r.version, r.prev_version) == (True, 0, 3)
    assert d.m.get(b"k") is None
    # DeleteCommand-via-CAS of an absent key: condition on absence holds, nothing to remove.
    r = d(CompareAndSetCommand(b"k", expected_version=0, new_value=None))
    assert (r.ok, r.version, r.prev_version) == (True, 0, 0)
    # Condition failing leaves the key.
    d(PutCommand(b"k", b"v"))
    assert not d(CompareAndSetCommand(b"k", expected_value=b"other", new_value=None)).ok
    assert d.m.get(b"k") == (b"v", 1, d.index - 1, d.index - 1, 0)


def test_cas_without_condition_is_invalid():
    cas = CompareAndSetCommand(b"k", new_value=b"v")
    with pytest.raises(InvalidCommand, match="needs expected_value or expected_version") as e:
        validate_command(cas)
    assert e.value.code is ResultCode.INVALID_COMMAND
    d = Driver()
    assert d(cas).code is ResultCode.INVALID_COMMAND
    assert len(d.m) == 0


# -- batches ----------------------------------------------------------------------


def test_batch_applies_in_order_with_one_revision():
    d = Driver()
    d(PutCommand(b"gone", b"x"))
    r = d(BatchCommand((PutCommand(b"a", b"1"), PutCommand(b"a", b"2"), DeleteCommand(b"gone"),
                        PutCommand(b"b", b"3"))))
    assert r.ok and r.revision == 2
    assert r.ops == (OpResult(1, 0), OpResult(2, 1), OpResult(0, 1), OpResult(1, 0))
    assert d.m.get(b"a") == (b"2", 2, 2, 2, 0)
    assert d.m.get(b"b") == (b"3", 1, 2, 2, 0)
    assert d.m.get(b"gone") is None
    assert d.m.get(b"a") == (b"2", 2, 2, 2, 0)


def test_empty_batch_is_a_successful_noop():
    d = Driver()
    assert d(BatchCommand(())) == WriteResult(ResultCode.OK, 1)
    assert len(d.m) == 0


@pytest.mark.parametrize(
    ("ops", "code", "message"),
    [
        ((PutCommand(b"a", b"1"),) * 4, ResultCode.BATCH_TOO_LARGE,
         "batch has 4 ops, over max_batch_ops (3)"),
        ((PutCommand(b"a", b"1"), PutCommand(b"", b"2")), ResultCode.INVALID_COMMAND,
         "batch op 1: key must not be empty"),
        ((DeleteCommand(b"a"), PutCommand(b"b", b"x" * 11)), ResultCode.VALUE_TOO_LARGE,
         "batch op 1: value is 11 bytes"),
        ((PutCommand(b"k" * 9, b""),), ResultCode.KEY_TOO_LARGE,
         "batch op 0: key is 9 bytes, over max_key_size (8)"),
    ],
)
def test_bad_batch_applies_nothing(ops, code, message):
    d = Driver(KVStateMachine(max_key_size=8, max_value_size=10, max_batch_ops=3))
    d(PutCommand(b"a", b"old"))
    before = d.m.items()
    r = d(BatchCommand(ops))
    assert r.code is code and not r.ok and r.ops == ()
    assert r.message.startswith(message)
    assert d.m.items() == before
    with pytest.raises(InvalidCommand, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_command(BatchCommand(ops), d.m.limits)


def test_batch_with_non_put_delete_op_is_invalid():
    bad = BatchCommand((PutCommand(b"a", b"1"), CompareAndSetCommand(b"a", expected_version=0,
                                                                     new_value=b"x")))  # type: ignore[arg-type]
    with pytest.raises(InvalidCommand, match="batch op 1: must be Put or Delete"):
        validate_command(bad)


# -- limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (PutCommand(b"k" * 9, b"v"), ResultCode.KEY_TOO_LARGE,
         "key is 9 bytes, over max_key_size (8)"),
        (PutCommand(b"k", b"v" * 11), ResultCode.VALUE_TOO_LARGE,
         "value is 11 bytes, over max_value_size (10)"),
        (DeleteCommand(b"k" * 9), ResultCode.KEY_TOO_LARGE, "key is 9 bytes"),
        (PutCommand(b"", b"v"), ResultCode.INVALID_COMMAND, "key must not be empty"),
        (CompareAndSetCommand(b"k", expected_value=b"e" * 11, new_value=b"v"),
         ResultCode.VALUE_TOO_LARGE,
         "expected_value is 11 bytes"),
        (CompareAndSetCommand(b"k", expected_version=0, new_value=b"v" * 11),
         ResultCode.VALUE_TOO_LARGE,
         "new_value is 11 bytes"),
    ],
)
def test_limit_violation_is_a_failed_noop(cmd, code, message):
    d = Driver(KVStateMachine(max_key_size=8, max_value_size=10, max_batch_ops=3))
    r = d(cmd)
    assert (r.code, r.revision, r.ok) == (code, 1, False)
    assert r.message == message or r.message.startswith(message)
    assert len(d.m) == 0 and d.m.applied_index == 1
    with pytest.raises(InvalidCommand) as e:
        validate_command(cmd, d.m.limits)
    assert e.value.code is code and str(e.value) == r.message


def test_limits_at_the_boundary_are_accepted():
    limits = Limits(max_key_size=8, max_value_size=10, max_batch_ops=3)
    validate_command(PutCommand(b"k" * 8, b"v" * 10), limits)
    validate_command(BatchCommand((DeleteCommand(b"k"),) * 3), limits)


def test_default_limits():
    assert Limits() == Limits(64 * 1024, 4 * 1024 * 1024, 1000)
    assert KVStateMachine().limits == Limits()
    with pytest.raises(ValueError, match=r"max_key_size \(0\) must be a positive int"):
        Limits(max_key_size=0)


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        (PutCommand("k", b"v"), "key must be bytes, got str"),  # type: ignore[arg-type]
        (PutCommand(b"k", "v"), "value must be bytes, got str"),  # type: ignore[arg-type]
        (CompareAndSetCommand(b"k", expected_version=-1, new_value=b"v"),
         "expected_version must be"),
        (CompareAndSetCommand(b"k", expected_version=True, new_value=b"v"),
         "expected_version must be"),
        (BatchCommand([PutCommand(b"k", b"v")]), "Batch ops must be a tuple, got list"),  # type: ignore[arg-type]
        ("put", "not a command: str"),
    ],
)
def test_validate_rejects_ill_typed_commands(cmd, message):
    with pytest.raises(InvalidCommand, match=message) as e:
        validate_command(cmd)
    assert e.value.code is ResultCode.INVALID_COMMAND


# -- no-ops, malformed entries, index invariant -------------------------------------------


def test_empty_entry_is_a_skipped_noop_that_advances_applied_index():
    d = Driver()
    d(PutCommand(b"k", b"v"))
    assert d.raw(b"") is None
    assert d.m.applied_index == 2
    assert d.m.items() == [(b"k", (b"v", 1, 1, 1, 0))]


def test_malformed_entry_is_applied_as_failed_noop():
    d = Driver()
    r = d.raw(b"\x83\x01\x41")
    assert r is not None and r.code is ResultCode.MALFORMED_COMMAND
    assert "not valid CBOR" in r.message and r.revision == 1
    assert d.m.applied_index == 1 and len(d.m) == 0


@pytest.mark.parametrize("index", [5, 4])
def test_apply_index_must_increase(index):
    m = KVStateMachine()
    m.apply(5, encode_command(PutCommand(b"k", b"v")))
    message = f"apply index {index} must be greater than the applied index 5"
    with pytest.raises(StateInvariantError, match=message):
        m.apply(index, b"")
    assert m.applied_index == 5
    m.apply(9, b"")  # gaps are fine
    assert m.applied_index == 9


def test_apply_index_zero_is_rejected():
    with pytest.raises(StateInvariantError):
        KVStateMachine().apply(0, b"")


# -- model check ------------------------------------------------------------------------


@given(st.lists(commands, max_size=40))
def test_machine_matches_reference_model(cmds):
    """Every command kind (puts with and without leases, deletes, CAS, batches,
    txns, grants, revokes) against the naive model: the whole result (the
    message only where it explains a failure), the records and the leases."""
    d, model = Driver(KVStateMachine(max_leases=3)), Model(max_leases=3)
    for cmd in cmds:
        r = d(cmd)
        want = model.expect(d.index, cmd)
        if not want.ok:
            assert r.message  # a failure always says why
            r = WriteResult(r.code, r.revision, r.version, r.prev_version, r.ops)
        assert r == want, cmd
        d.m.check_invariants()
    assert dict(d.m.items()) == model.data
    assert d.m.leases() == list(model.leases.items())
    for lease_id in model.leases:
        assert d.m.lease(lease_id) == (model.leases[lease_id], model.lease_keys(lease_id))
