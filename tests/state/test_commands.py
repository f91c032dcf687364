"""Command encoding: round trips, compactness, and strict decoding."""

from __future__ import annotations

import contextlib
import re

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prkdb.state import (
    UNCHECKED,
    BatchCommand,
    CommandDecodeError,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    PutCommand,
    TxnCommand,
    decode_command,
    encode_command,
)
from prkdb.state.commands import OpTag, _check_session_ids, _op_to_cbor

from .strategies import client_ids, commands


@given(commands)
def test_round_trip_without_session(cmd):
    assert decode_command(encode_command(cmd)) == (cmd, None, None)


@given(commands, client_ids, st.integers(0, 2**64 - 1))
def test_round_trip_with_session(cmd, client_id, seq):
    assert decode_command(encode_command(cmd, client_id, seq)) == (cmd, client_id, seq)


def test_cas_distinguishes_unchecked_from_absent():
    unchecked = CompareAndSetCommand(b"k", expected_version=1, new_value=b"v")
    absent = CompareAndSetCommand(b"k", expected_value=None, expected_version=1, new_value=b"v")
    assert unchecked.expected_value is UNCHECKED
    assert decode_command(encode_command(unchecked))[0].expected_value is UNCHECKED
    assert decode_command(encode_command(absent))[0].expected_value is None


def test_put_encoding_is_compact():
    # Array head + tag + key head + 2-byte value head: 5 bytes over 16+100.
    data = encode_command(PutCommand(b"k" * 16, b"v" * 100))
    assert len(data) == 116 + 5
    assert cbor2.loads(data)[0] == 1
    # The session envelope adds array head, tag, client id and seq.
    assert len(encode_command(PutCommand(b"k" * 16, b"v" * 100), 7, 1)) == 121 + 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not valid CBOR"),
        (b"\x83\x01\x41", "not valid CBOR"),  # truncated
        (cbor2.dumps({"op": 1}), "non-empty array"),
        (cbor2.dumps([]), "non-empty array"),
        (cbor2.dumps(["put", b"k", b"v"]), "tag must be an int"),
        (cbor2.dumps([True, b"k", b"v"]), "tag must be an int"),
        (cbor2.dumps([99, b"k"]), "unknown command tag 99"),
        (cbor2.dumps([1, b"k"]), "Put must be an array of 3 items, got 2"),
        (cbor2.dumps([1, "k", b"v"]), "Put key must be a byte string, got str"),
        (cbor2.dumps([1, b"k", None]), "Put value must be a byte string"),
        (cbor2.dumps([2, b"k", b"x"]), "Delete must be an array of 2"),
        (cbor2.dumps([3, b"k", b"e", -1, b"v"]), "expected_version must be a non-negative"),
        (cbor2.dumps([3, b"k", 5, None, b"v"]), "expected_value must be a byte string"),
        (cbor2.dumps([4, [[3, b"k", None, None, b"v"]]]),
         "batch ops must be Put (1, 8) or Delete"),
        (cbor2.dumps([4, [[4, []]]]), "batch ops must be Put (1, 8) or Delete"),
        (cbor2.dumps([4, b"ops"]), "Batch ops must be an array"),
        (cbor2.dumps([0, b"c", 1]), "session envelope must be an array of 4"),
        (cbor2.dumps([0, "c", 1, [2, b"k"]]), "client_id must be bytes or a 64-bit int"),
        (cbor2.dumps([0, b"c", -1, [2, b"k"]]), "seq must be a non-negative"),
        (cbor2.dumps([0, b"c", 2**64, [2, b"k"]]), "seq must be a non-negative"),
        (cbor2.dumps([0, b"c", 1, [0, b"c", 1, [2, b"k"]]]), "unknown command tag 0"),
        (encode_command(PutCommand(b"k", b"v")) + b"\x00", "canonical"),
        (encode_command(DeleteCommand(b"k"), b"c", 1) + b"\x00", "canonical"),
        (b"\x9f\x02\x41k\xff", "canonical"),  # indefinite-length array
        (b"\x83\x18\x01\x41k\x41v", "canonical"),  # non-shortest int head
        (b"\x82\x02\x5f\x41k\xff", "canonical"),  # indefinite-length byte string
    ],
)
def test_decode_rejects_malformed(data, message):
    with pytest.raises(CommandDecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_command(data)


def test_decode_rejects_non_bytes():
    with pytest.raises(CommandDecodeError, match="must be bytes"):
        decode_command(bytearray(b"\x82\x02\x41k"))  # type: ignore[arg-type]


@given(st.binary(min_size=1, max_size=40))
def test_decode_random_bytes_raises_only_decode_error(data):
    with contextlib.suppress(CommandDecodeError):
        decode_command(data)


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="together"):
        encode_command(DeleteCommand(b"k"), client_id=b"c")
    with pytest.raises(ValueError, match="seq must be"):
        encode_command(DeleteCommand(b"k"), b"c", -1)
    with pytest.raises(ValueError, match="client_id must be"):
        encode_command(DeleteCommand(b"k"), "c", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a command"):
        encode_command("put")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch ops must be Put or Delete"):
        encode_command(BatchCommand((CompareAndSetCommand(b"k", expected_version=0,
                                                          new_value=b"v"),)))  # type: ignore[arg-type]


_ids = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from([-(2**64) - 1, 2**64, True, b"c", 1.0]),
)
_seqs = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([-1, 2**64, True, 1.5]))


@given(st.builds(PutCommand, st.binary(max_size=30), st.binary(max_size=300)), _ids, _seqs)
def test_session_put_fast_path_matches_general_encoding(cmd, client_id, seq):
    """encode_command's Put-in-session shortcut: the general path's bytes, or its error."""
    try:
        _check_session_ids(client_id, seq, ValueError)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)[:20]):
            encode_command(cmd, client_id, seq)
        return
    want = cbor2.dumps([OpTag.SESSION.value, client_id, seq, _op_to_cbor(cmd)])
    assert encode_command(cmd, client_id, seq) == want
    assert decode_command(want) == (cmd, client_id, seq)


# -- issue 16: leased puts, txns, leases --------------------------------------------------


def test_new_command_layouts():
    assert cbor2.loads(encode_command(PutCommand(b"k", b"v", 0))) == [1, b"k", b"v"]
    assert encode_command(PutCommand(b"k", b"v", 0)) == encode_command(PutCommand(b"k", b"v"))
    assert cbor2.loads(encode_command(PutCommand(b"k", b"v", 5 << 16))) == [8, b"k", b"v",
                                                                           5 << 16]
    txn = TxnCommand(
        (Compare(b"k", CompareTarget.VALUE, CompareOp.LESS, b"x"),
         Compare(b"k", CompareTarget.LEASE, CompareOp.GREATER, 3)),
        (PutCommand(b"k", b"v", 9), DeleteCommand(b"j"), GetOp(b"k")),
        (GetOp(b"j"),),
    )
    assert cbor2.loads(encode_command(txn)) == [
        5, [[b"k", 0, 2, b"x"], [b"k", 4, 3, 3]], [[8, b"k", b"v", 9], [2, b"j"], [9, b"k"]],
        [[9, b"j"]],
    ]
    assert cbor2.loads(encode_command(LeaseGrantCommand(2000))) == [6, 2000]
    assert cbor2.loads(encode_command(LeaseRevokeCommand(7, True))) == [7, 7, True]
    assert cbor2.loads(encode_command(LeaseRevokeCommand(7))) == [7, 7, False]
    # The enums' values are a contract with the wire layer and the log.
    assert [int(t) for t in CompareTarget] == [0, 1, 2, 3, 4]
    assert [t.name for t in CompareTarget] == [
        "VALUE", "VERSION", "CREATE_REVISION", "MOD_REVISION", "LEASE"]
    assert [(o.name, int(o)) for o in CompareOp] == [
        ("EQUAL", 0), ("NOT_EQUAL", 1), ("LESS", 2), ("GREATER", 3)]


def test_decoded_compare_fields_are_the_enums():
    txn = TxnCommand((Compare(b"k", 1, 3, 0),), (), ())  # type: ignore[arg-type]
    (c,), _, _ = decode_command(encode_command(txn))[0].compares, None, None
    assert type(c.target) is CompareTarget and type(c.op) is CompareOp
    assert (c.target, c.op) == (CompareTarget.VERSION, CompareOp.GREATER)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (cbor2.dumps([8, b"k", b"v", 0]), "leased Put (tag 8) must have a lease > 0"),
        (cbor2.dumps([8, b"k", b"v"]), "leased Put must be an array of 4 items"),
        (cbor2.dumps([8, b"k", b"v", -1]), "leased Put lease must be a non-negative 64-bit"),
        (cbor2.dumps([8, b"k", b"v", True]), "leased Put lease must be a non-negative 64-bit"),
        (cbor2.dumps([8, b"k", "v", 1]), "Put value must be a byte string"),
        (cbor2.dumps([9, b"k"]), "GetOp (tag 9) is only allowed inside a Txn"),
        (cbor2.dumps([4, [[9, b"k"]]]), "batch ops must be Put (1, 8) or Delete (2), got tag 9"),
        (cbor2.dumps([5, [], []]), "Txn must be an array of 4 items"),
        (cbor2.dumps([5, {}, [], []]), "Txn compares must be an array"),
        (cbor2.dumps([5, [], [], None]), "Txn failure must be an array"),
        (cbor2.dumps([5, [], [[3, b"k", None, None, b"v"]], []]),
         "txn ops must be Put (1, 8), Delete (2) or Get (9), got tag 3"),
        (cbor2.dumps([5, [], [[5, [], [], []]], []]), "txn ops must be Put"),
        (cbor2.dumps([5, [], [[9, b"k", b"x"]], []]), "GetOp must be an array of 2"),
        (cbor2.dumps([5, [], [[9, "k"]], []]), "GetOp key must be a byte string"),
        (cbor2.dumps([5, [b"k"], [], []]), "Txn compare must be an array"),
        (cbor2.dumps([5, [[b"k", 1, 0]], [], []]), "Txn compare must be an array of 4"),
        (cbor2.dumps([5, [[b"k", 5, 0, 0]], [], []]), "compare target must be 0-4, got 5"),
        (cbor2.dumps([5, [[b"k", True, 0, 0]], [], []]), "compare target must be 0-4, got True"),
        (cbor2.dumps([5, [[b"k", 1, 4, 0]], [], []]), "compare op must be 0-3, got 4"),
        (cbor2.dumps([5, [[b"k", 1, -1, 0]], [], []]), "compare op must be 0-3, got -1"),
        (cbor2.dumps([5, [[b"k", 0, 0, 1]], [], []]), r"operand \(VALUE\) must be a byte str"),
        (cbor2.dumps([5, [[b"k", 1, 0, b"1"]], [], []]), r"operand \(VERSION\) must be a non-neg"),
        (cbor2.dumps([5, [[b"k", 4, 0, -1]], [], []]), r"operand \(LEASE\) must be a non-neg"),
        (cbor2.dumps([5, [[b"k", 2, 0, None]], [], []]),
         r"operand \(CREATE_REVISION\) must be a non-neg"),
        (cbor2.dumps([5, [["k", 1, 0, 0]], [], []]), "Txn compare key must be a byte string"),
        (cbor2.dumps([6]), "LeaseGrant must be an array of 2"),
        (cbor2.dumps([6, -5]), "LeaseGrant ttl_ms must be a non-negative 64-bit int"),
        (cbor2.dumps([6, 1.5]), "LeaseGrant ttl_ms must be a non-negative 64-bit int"),
        (cbor2.dumps([7, 1]), "LeaseRevoke must be an array of 3"),
        (cbor2.dumps([7, 1, 0]), "LeaseRevoke expired must be a bool, got int"),
        (cbor2.dumps([7, b"1", False]), "LeaseRevoke lease_id must be a non-negative"),
        (cbor2.dumps([7, 2**64, False]), "LeaseRevoke lease_id must be a non-negative"),
        (encode_command(LeaseRevokeCommand(1)) + b"\x00", "canonical"),
        (b"\x83\x07\x01\xf4"[:-1] + b"\xf4\x00", "canonical"),
    ],
)
def test_decode_rejects_malformed_new_commands(data, message):
    # Messages with parentheses are literal; the others may be regexes (r"\(").
    literal = "(" in message and "\\(" not in message
    with pytest.raises(CommandDecodeError, match=re.escape(message) if literal else message):
        decode_command(data)


def test_encode_rejects_foreign_objects_in_txns():
    with pytest.raises(TypeError, match="txn compares must be Compare, got tuple"):
        encode_command(TxnCommand(((b"k", 1, 0, 0),), (), ()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="txn ops must be Put, Delete or GetOp, got Lease"):
        encode_command(TxnCommand((), (), (LeaseGrantCommand(1),)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch ops must be Put or Delete, got GetOp"):
        encode_command(BatchCommand((GetOp(b"k"),)))  # type: ignore[arg-type]


def test_leased_put_in_session_skips_the_int_fast_path():
    cmd = PutCommand(b"k", b"v", 3 << 16)
    assert decode_command(encode_command(cmd, 5, 1)) == (cmd, 5, 1)
    assert cbor2.loads(encode_command(cmd, 5, 1)) == [0, 5, 1, [8, b"k", b"v", 3 << 16]]
