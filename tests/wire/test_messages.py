"""Message schemas: round trips of every message, and every field's wrong shapes rejected."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prkdb.client.attempt import error_from_frame, hello_frame
from prkdb.errors import ErrorCode, ProtocolError
from prkdb.raft.types import Message, MsgType, Role
from prkdb.wire import messages as m
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import NEED_DATA, FrameDecoder, decode_body, encode_frame
from prkdb.wire.schema import Bool, Bytes, Details, Enum, ListOf, Optional, Record, Text, UInt
from tests.wire.strategies import STRATEGIES, any_message

HB = Message(MsgType.HEARTBEAT, to=2, from_=1, term=3, commit=4)
LEASE_3 = 77 << 16 | 3  # granted by the entry at index 77 of partition 3

SAMPLES: dict[type, Any] = {
    m.Hello: m.Hello(m.PROTOCOL_VERSION, "c1", "peer", 1),
    m.HelloOk: m.HelloOk(2, "c1"),
    m.Error: m.Error(7, ErrorCode.NOT_LEADER, "not leader", {"leader_id": 2}),
    m.Get: m.Get(1, b"k", m.ReadConsistency.LINEARIZABLE, 3),
    m.Put: m.Put(1, b"k", b"v", 9, 1),
    m.Delete: m.Delete(1, b"k", 9, 2),
    m.Cas: m.Cas(1, b"k", b"old", 3, b"new", 9, 3),
    m.Batch: m.Batch(
        1, 0, (m.BatchOp(m.OpKind.PUT, b"a", b"1"), m.BatchOp(m.OpKind.DELETE, b"b")), 9, 4
    ),
    m.Status: m.Status(1),
    m.RebuildFence: m.RebuildFence(1, 3),
    m.TransferLeader: m.TransferLeader(1, 2, 3),
    m.Snapshot: m.Snapshot(1, None),
    m.BackupBegin: m.BackupBegin(1, 3),
    m.BackupRead: m.BackupRead(2, 3, 120, 4, 1 << 20, 1 << 20),
    m.BackupBeginOk: m.BackupBeginOk(1, 3, 2, 120, 4, 5000, bytes(range(32))),
    m.BackupChunk: m.BackupChunk(2, 1 << 20, b"snap", 5000),
    m.GetOk: m.GetOk(1, b"v", 2, 10, 12),
    m.WriteOk: m.WriteOk(1, True, 11, 1, 0, (m.OpResult(1, 0),)),
    m.StatusOk: m.StatusOk(
        1,
        1,
        "c1",
        (m.NodeInfo(1, "h:1", "h:2"),),
        (m.PartitionStatus(0, 1, 3, 9, 9, Role.LEADER, (m.ReplicaProgress(2, 9),)),),
    ),
    m.AdminOk: m.AdminOk(1, {"transferred": True}),
    m.RaftBatch: m.RaftBatch(1, ((0, HB), (5, HB))),
    m.Scan: m.Scan(1, 3, b"user:", b"user;", 100, False, False, m.ReadConsistency.FOLLOWER),
    m.Txn: m.Txn(
        1,
        3,
        (
            m.Compare(b"{u}:a", m.CompareTarget.VALUE, m.CompareOp.EQUAL, value=b"x"),
            m.Compare(b"{u}:b", m.CompareTarget.VERSION, m.CompareOp.GREATER, number=0),
        ),
        (m.TxnOp(m.TxnOpKind.PUT, b"{u}:a", b"y", LEASE_3), m.TxnOp(m.TxnOpKind.GET, b"{u}:b")),
        (m.TxnOp(m.TxnOpKind.DELETE, b"{u}:a"),),
        9,
        5,
    ),
    m.LeaseGrant: m.LeaseGrant(1, 3, 10_000, 9, 6),
    m.LeaseRevoke: m.LeaseRevoke(1, LEASE_3, 9, 7),
    m.LeaseKeepAlive: m.LeaseKeepAlive(1, 3, (LEASE_3, LEASE_3 + (1 << 16))),
    m.LeaseTimeToLive: m.LeaseTimeToLive(1, LEASE_3, True),
    m.LeaseList: m.LeaseList(1, 3),
    m.ScanOk: m.ScanOk(1, (m.KeyValue(b"user:1", b"a", 2, 40, 12, 0),), 7, True, 41),
    m.TxnOk: m.TxnOk(1, True, 42, (m.TxnOpResult(3, 2), m.TxnOpResult(1, 0, b"v", 9, 9, 0))),
    m.LeaseOk: m.LeaseOk(1, LEASE_3, 10_000, 9_500, (b"{u}:a",)),
    m.LeaseKeepAliveOk: m.LeaseKeepAliveOk(1, (10_000, 0)),
    m.LeaseListOk: m.LeaseListOk(1, (m.LeaseInfo(LEASE_3, 10_000, 4_000),)),
    m.Watch: m.Watch(5, 3, b"svc/", b"svc0", 40, True),
    m.WatchCancel: m.WatchCancel(5),
    m.WatchEvents: m.WatchEvents(
        5,
        3,
        (
            m.Event(m.EventKind.PUT, b"svc/a", 41, b"10.0.0.1", None),
            m.Event(m.EventKind.DELETE, b"svc/b", 41, None, b"10.0.0.2"),
            m.Event(m.EventKind.EXPIRE, b"svc/a", 44, None, b"10.0.0.1"),
        ),
        45,
    ),
    m.Login: m.Login(1, "alice", "pw"),
    m.Authenticate: m.Authenticate(1, "v1.abc.def"),
    m.AuthOk: m.AuthOk(1, "alice", "v1.abc.def", 1_700_000_000_000),
    m.UserAdd: m.UserAdd(1, "alice", "pw", ("app",), 9, 8),
    m.UserDelete: m.UserDelete(1, "alice", 9, 9),
    m.UserPasswd: m.UserPasswd(1, "alice", "pw2", 9, 10),
    m.UserGrant: m.UserGrant(1, "alice", "app", 9, 11),
    m.UserRevoke: m.UserRevoke(1, "alice", "app", 9, 12),
    m.UserList: m.UserList(1),
    m.RoleAdd: m.RoleAdd(1, "app", 9, 13),
    m.RoleDelete: m.RoleDelete(1, "app", 9, 14),
    m.RoleGrant: m.RoleGrant(1, "app", b"app/", b"app0", m.Perm.READWRITE, 9, 15),
    m.RoleRevoke: m.RoleRevoke(1, "app", b"app/", b"app0", 9, 16),
    m.RoleList: m.RoleList(1),
    m.UserListOk: m.UserListOk(1, (m.UserInfo("alice", ("app",), True),)),
    m.RoleListOk: m.RoleListOk(
        1, (m.RoleInfo("app", (m.PermInfo(b"app/", None, m.Perm.READ),)),)),
}


def test_every_message_has_a_sample_and_a_strategy() -> None:
    assert set(SAMPLES) == set(m.SCHEMAS) == set(STRATEGIES)


def through_cbor(obj: Any) -> Any:
    return cbor2.loads(cbor2.dumps(obj))


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_sample_round_trip(cls: type) -> None:
    msg = SAMPLES[cls]
    wire = m.to_wire(msg, check=True)
    assert wire[0] == m.SCHEMAS[cls].type_id
    assert m.from_wire(through_cbor(wire)) == msg


@settings(max_examples=300, deadline=None)
@given(any_message)
def test_round_trip_any_message(msg: Any) -> None:
    assert m.from_wire(through_cbor(m.to_wire(msg, check=True))) == msg


@settings(max_examples=50, deadline=None)
@given(st.lists(any_message, max_size=6), st.integers(1, 50))
def test_stream_of_messages(msgs: list[Any], chunk: int) -> None:
    stream = m.encode_messages(msgs)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(stream), chunk):
        dec.receive_data(stream[i : i + chunk])
        while (item := dec.next_frame()) is not NEED_DATA:
            got.append(m.from_wire(item))
    assert got == msgs


def test_enums_come_back_as_enums() -> None:
    got = m.from_wire(through_cbor(m.to_wire(SAMPLES[m.Get])))
    assert type(got.consistency) is m.ReadConsistency
    st_ok = m.from_wire(through_cbor(m.to_wire(SAMPLES[m.StatusOk])))
    assert type(st_ok.partitions[0].role) is Role
    err = m.from_wire([3, 1, 1, "x", {}])
    assert type(err.code) is ErrorCode


def test_unknown_error_code_is_kept_as_int() -> None:
    err = m.from_wire([3, 1, 4242, "from the future", {}])
    assert err.code == 4242 and type(err.code) is int


# --- wrong shapes, generated from the schema table ----------------------------------------

WRONG_VALUES: list[Any] = ["s", b"b", True, -1, 1.5, None, [], {}, 2**64, cbor2.undefined]


def acceptable(wtype: Any, value: Any) -> bool:
    """Could `value` be valid for `wtype` (type-wise)? Used to know what must be rejected."""
    if isinstance(wtype, Optional):
        return value is None or acceptable(wtype.inner, value)
    if isinstance(wtype, Text):
        return type(value) is str and not wtype.choices
    if isinstance(wtype, Bytes):
        return type(value) is bytes and len(value) >= wtype.min_len
    if isinstance(wtype, Bool):
        return type(value) is bool
    if isinstance(wtype, UInt):
        return type(value) is int and wtype.lo <= value <= wtype.hi
    if isinstance(wtype, Enum):
        return False  # none of WRONG_VALUES is a member
    if isinstance(wtype, ListOf):
        return value == []
    if isinstance(wtype, Details):
        return value == {}
    return False


FIELD_CASES = [
    (cls, i, f) for cls, schema in m.SCHEMAS.items() for i, f in enumerate(schema.fields)
]


@pytest.mark.parametrize(
    ("cls", "index", "fld"), FIELD_CASES, ids=[f"{c.__name__}.{f.name}" for c, _, f in FIELD_CASES]
)
def test_wrong_type_names_the_field(cls: type, index: int, fld: Any) -> None:
    good = m.to_wire(SAMPLES[cls])
    rejected = 0
    for bad in WRONG_VALUES:
        obj = list(good)
        obj[index + 1] = bad
        if acceptable(fld.type, bad):
            continue
        with pytest.raises(RemoteProtocolError) as info:
            m.from_wire(obj)
        assert f"{cls.__name__}.{fld.name}" in str(info.value), str(info.value)
        assert info.value.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
        rejected += 1
    assert rejected >= 5


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_missing_and_extra_fields(cls: type) -> None:
    good = m.to_wire(SAMPLES[cls])
    for obj in (good[:-1], [*good, 0], good[:1]):
        if len(obj) == len(good):
            continue
        with pytest.raises(RemoteProtocolError, match=cls.__name__):
            m.from_wire(obj)


@pytest.mark.parametrize(
    ("cls", "fld"),
    [(r.cls, f) for r in m.RECORDS for f in r.fields],
    ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")),
)
def test_nested_records_reject_wrong_types(cls: type, fld: Any) -> None:
    record = next(r for r in m.RECORDS if r.cls is cls)
    assert isinstance(record, Record)
    # find a sample that contains one of these records, and break that field in it
    sample_wire = {
        m.BatchOp: lambda: m.to_wire(SAMPLES[m.Batch]),
        m.OpResult: lambda: m.to_wire(SAMPLES[m.WriteOk]),
        m.NodeInfo: lambda: m.to_wire(SAMPLES[m.StatusOk]),
        m.PartitionStatus: lambda: m.to_wire(SAMPLES[m.StatusOk]),
        m.ReplicaProgress: lambda: m.to_wire(SAMPLES[m.StatusOk]),
        m.KeyValue: lambda: m.to_wire(SAMPLES[m.ScanOk]),
        m.Compare: lambda: m.to_wire(SAMPLES[m.Txn]),
        m.TxnOp: lambda: m.to_wire(SAMPLES[m.Txn]),
        m.TxnOpResult: lambda: m.to_wire(SAMPLES[m.TxnOk]),
        m.LeaseInfo: lambda: m.to_wire(SAMPLES[m.LeaseListOk]),
        m.Event: lambda: m.to_wire(SAMPLES[m.WatchEvents]),
        m.UserInfo: lambda: m.to_wire(SAMPLES[m.UserListOk]),
        m.RoleInfo: lambda: m.to_wire(SAMPLES[m.RoleListOk]),
        m.PermInfo: lambda: m.to_wire(SAMPLES[m.RoleListOk]),
    }[cls]()
    locate = {
        m.BatchOp: lambda w: w[3][0],
        m.OpResult: lambda w: w[6][0],
        m.NodeInfo: lambda w: w[4][0],
        m.PartitionStatus: lambda w: w[5][0],
        m.ReplicaProgress: lambda w: w[5][0][6][0],
        m.KeyValue: lambda w: w[2][0],
        m.Compare: lambda w: w[3][0],
        m.TxnOp: lambda w: w[4][0],
        m.TxnOpResult: lambda w: w[4][0],
        m.LeaseInfo: lambda w: w[2][0],
        m.UserInfo: lambda w: w[2][0],
        m.RoleInfo: lambda w: w[2][0],
        m.PermInfo: lambda w: w[2][0][1][0],
        m.Event: lambda w: w[3][0],
    }[cls]
    idx = [f.name for f in record.fields].index(fld.name)
    for bad in WRONG_VALUES:
        if acceptable(fld.type, bad):
            continue
        wire = through_cbor(sample_wire)
        locate(wire)[idx] = bad
        with pytest.raises(RemoteProtocolError, match=rf"\.{fld.name}: ") as info:
            m.from_wire(wire)
        assert "[0]" in str(info.value)
    wire = through_cbor(sample_wire)
    del locate(wire)[-1]
    with pytest.raises(RemoteProtocolError, match="fields"):
        m.from_wire(wire)


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({}, "non-empty array"),
        ([], "non-empty array"),
        (5, "non-empty array"),
        ([999], "unknown message type"),
        ([True, 1], "unknown message type"),
        (["Get", 1], "unknown message type"),
        ([10, 0, b"k", 0, 0], r"Get.request_id: 0 is outside 1\.\."),
        ([10, 1, b"", 0, 0], "Get.key: must be at least 1 bytes"),
        ([10, 1, b"k", 3, 0], "Get.consistency: 3 is not a valid ReadConsistency"),
        ([10, 1, b"k", 0, 2**32], "Get.partition"),
        ([11, 1, "k", b"v", 1, 1], "Put.key: expected bytes, got str"),
        ([11, 1, b"k", "v", 1, 1], "Put.value: expected bytes, got str"),
        ([11, 1, b"k", bytearray(b"v"), 1, 1], None),  # cbor2 gives bytes; see below
        ([11, 1, b"k", b"v", 0, 1], "Put.client_id"),
        ([11, 1, b"k", b"v", 1, 0], "Put.seq"),
        ([1, 2, b"c", "peer", 1, ""], "Hello.cluster_id: expected text, got bytes"),
        ([1, 2, "c", "admin", 1, ""], "Hello.role"),
        ([1, 2, "c", "peer", 0, ""], "Hello.node_id: a peer must send"),
        ([1, 2, "c", "client", 3, ""], "Hello.node_id: a client must send 0"),
        ([1, 2, "c" * 300, "client", 0, ""], "Hello.cluster_id"),
        ([13, 1, b"k", None, None, b"v", 1, 1], "Cas.expected_value: a Cas needs"),
        ([14, 1, 0, [[0, b"k", None]], 1, 1], r"Batch.ops\[0\].value: a PUT needs a value"),
        ([14, 1, 0, [[1, b"k", b"v"]], 1, 1], r"Batch.ops\[0\].value: a DELETE must have"),
        ([14, 1, 0, [[2, b"k", None]], 1, 1], r"Batch.ops\[0\].kind"),
        ([14, 1, 0, [[0, b"k"]], 1, 1], r"Batch.ops\[0\]"),
        ([3, 1, 1, "m", {1: 2}], "Error.details: map keys must be text"),
        ([3, 1, 1, "m", {"a": 1.5}], r"Error.details\['a'\]: float is not a plain value"),
        ([3, 1, 1, "m", {"a": [cbor2.undefined]}], r"Error.details\['a'\]\[0\]"),
        ([3, 1, -1, "m", {}], "Error.code"),
        ([31, 1, 1, 1, 1, 1, []], "WriteOk.succeeded: expected a bool"),
        ([30, 1, "v", 1, 1, 1], "GetOk.value: expected bytes"),
        ([50, 1, [[0, [10, 2, 7, 3]]]], r"RaftBatch.items\[0\]: message from 7"),
        ([50, 1, [[0, [0, 2, 1, 3]]]], r"RaftBatch.items\[0\]\[1\]: raft message: type"),
        ([50, 1, [[2**32, [10, 2, 1, 3]]]], r"RaftBatch.items\[0\]\[0\]"),
        ([50, 1, [[0]]], r"RaftBatch.items\[0\]: expected a \[partition, message\]"),
        ([50, 0, []], "RaftBatch.from_node"),
        # --- version 3: scans, txns, leases
        ([21, 1, 3, "a", None, 0, False, False, 0], "Scan.start: expected bytes, got str"),
        ([21, 1, 3, b"a", "b", 0, False, False, 0], "Scan.end: expected bytes, got str"),
        ([21, 1, 3, b"a", None, 2**32, False, False, 0], r"Scan.limit: 4294967296 is outside"),
        ([21, 1, 3, b"a", None, 0, 1, False, 0], "Scan.keys_only: expected a bool"),
        ([21, 1, 3, b"a", None, 0, False, None, 0], "Scan.count_only: expected a bool"),
        ([21, 1, 3, b"a", None, 0, False, False, 3], "Scan.consistency: 3 is not a valid"),
        ([22, 1, 3, [[b"k", 0, 0, None, None]], [], [], 1, 1],
         r"Txn.compares\[0\].value: a VALUE compare needs a value"),
        ([22, 1, 3, [[b"k", 0, 1, b"x", 5]], [], [], 1, 1],
         r"Txn.compares\[0\].number: a VALUE compare must have null"),
        ([22, 1, 3, [[b"k", 0, 0, b"x", None], [b"k", 1, 3, None, None]], [], [], 1, 1],
         r"Txn.compares\[1\].number: a VERSION compare needs a number"),
        ([22, 1, 3, [[b"k", 4, 0, b"x", 0]], [], [], 1, 1],
         r"Txn.compares\[0\].value: a LEASE compare must have null"),
        ([22, 1, 3, [[b"k", 5, 0, None, 1]], [], [], 1, 1],
         r"Txn.compares\[0\].target: 5 is not a valid CompareTarget"),
        ([22, 1, 3, [[b"k", 1, 4, None, 1]], [], [], 1, 1],
         r"Txn.compares\[0\].op: 4 is not a valid CompareOp"),
        ([22, 1, 3, [[b"", 1, 0, None, 1]], [], [], 1, 1], r"Txn.compares\[0\].key"),
        ([22, 1, 3, [[b"k", 1, 0, None]], [], [], 1, 1], r"Txn.compares\[0\]: Compare needs 5"),
        ([22, 1, 3, [], [[0, b"k", None, 0]], [], 1, 1],
         r"Txn.success\[0\].value: a PUT needs a value"),
        ([22, 1, 3, [], [], [[2, b"k", None, 0], [1, b"k", b"v", 0]], 1, 1],
         r"Txn.failure\[1\].value: a DELETE must have null"),
        ([22, 1, 3, [], [[2, b"k", None, LEASE_3]], [], 1, 1],
         r"Txn.success\[0\].lease: a GET must have 0"),
        ([22, 1, 4, [], [[0, b"k", b"v", LEASE_3]], [], 1, 1],
         rf"Txn.success\[0\].lease: lease {LEASE_3} lives in partition 3, not 4"),
        ([22, 1, 3, [], [[0, b"k", b"v", 5]], [], 1, 1],
         r"Txn.success\[0\].lease: 5 is not a lease id \(ids are >= 65536\)"),
        ([22, 1, 3, [], [[3, b"k", None, 0]], [], 1, 1], r"Txn.success\[0\].kind: 3 is not"),
        ([22, 1, 3, [], [], [], 0, 1], "Txn.client_id"),
        ([23, 1, 3, 0, 1, 1], r"LeaseGrant.ttl_ms: 0 is outside 1\.\."),
        ([23, 1, 65536, 1000, 1, 1], r"LeaseGrant.partition: 65536 is outside 0\.\.65535"),
        ([23, 1, 3, 1000, 1, 0], "LeaseGrant.seq"),
        ([24, 1, 5, 1, 1], r"LeaseRevoke.lease_id: 5 is outside 65536\.\."),
        ([25, 1, 3, []], "LeaseKeepAlive.lease_ids: name at least one lease"),
        ([25, 1, 4, [LEASE_3 + 1, LEASE_3]],
         rf"LeaseKeepAlive.lease_ids\[1\]: lease {LEASE_3} lives in partition 3, not 4"),
        ([25, 1, 3, [LEASE_3] * 10_001], "LeaseKeepAlive.lease_ids: 10001 ids, more than 10000"),
        ([25, 1, 3, [LEASE_3, 7]], r"LeaseKeepAlive.lease_ids\[1\]: 7 is outside 65536"),
        ([26, 1, LEASE_3, 1], "LeaseTimeToLive.with_keys: expected a bool"),
        ([27, 1, 2**16], "LeaseList.partition"),
        ([32, 1, 1, "c", [], [], "", "md5"], 'StatusOk.key_rule: .md5. is not one of hashtag'),
        ([36, 1, [[b"", b"", 1, 1, 1, 0]], 1, False, 1], r"ScanOk.kvs\[0\].key"),
        ([36, 1, [[b"k", None, 1, 1, 1, 0]], 1, False, 1], r"ScanOk.kvs\[0\].value"),
        ([37, 1, True, 5, [[1, 0, "v", 0, 0, 0]]], r"TxnOk.results\[0\].value"),
        ([38, 1, LEASE_3, 1000, 900, [b""]], r"LeaseOk.keys\[0\]"),
        ([39, 1, [5, -1]], r"LeaseKeepAliveOk.remaining_ms\[1\]"),
        ([40, 1, [[1, 1000, 5]]], r"LeaseListOk.leases\[0\].lease_id"),
        # --- version 3: watches
        ([28, 0, 3, b"a", None, 0, False], r"Watch.request_id: 0 is outside 1\.\."),
        ([28, 1, 3, "a", None, 0, False], "Watch.start: expected bytes, got str"),
        ([28, 1, 3, b"b", b"a", 0, False], "Watch.end: must be greater than start"),
        ([28, 1, 3, b"a", b"a", 0, False], "Watch.end: must be greater than start"),
        ([28, 1, 3, b"a", None, -1, False], "Watch.after"),
        ([28, 1, 3, b"a", None, 0, 0], "Watch.prev_values: expected a bool"),
        ([29, 0], "WatchCancel.request_id"),
        ([41, 1, 3, [[3, b"k", 5, None, None]], 5], r"WatchEvents.events\[0\].kind: 3 is not"),
        ([41, 1, 3, [[0, b"", 5, b"v", None]], 5], r"WatchEvents.events\[0\].key"),
        ([41, 1, 3, [[0, b"k", 0, b"v", None]], 5], r"WatchEvents.events\[0\].revision: 0 is"),
        ([41, 1, 3, [[0, b"k", 5, None, None]], 5],
         r"WatchEvents.events\[0\].value: a PUT event needs a value"),
        ([41, 1, 3, [[0, b"k", 5, b"v", None], [1, b"k", 6, b"v", None]], 6],
         r"WatchEvents.events\[1\].value: a DELETE event needs null"),
        ([41, 1, 3, [[0, b"k", 6, b"v", None], [2, b"k", 5, None, None]], 6],
         r"WatchEvents.events\[1\].revision: 5 after revision 6"),
        ([41, 1, 3, [[0, b"k", 6, b"v", None]], 5],
         r"WatchEvents.progress: 5 is below the revision of an event \(6\)"),
    ],
)
def test_specific_rejections(obj: Any, why: str | None) -> None:
    if why is None:
        # bytearray never comes out of the decoder, but if handed one, it is not bytes.
        with pytest.raises(RemoteProtocolError):
            m.from_wire(obj)
        return
    with pytest.raises(RemoteProtocolError, match=why):
        m.from_wire(obj)


def test_keep_alive_ids_at_the_limit() -> None:
    ids = [LEASE_3] * m.KEEPALIVE_IDS_MAX
    msg = m.from_wire([25, 1, 3, ids])
    assert isinstance(msg, m.LeaseKeepAlive) and len(msg.lease_ids) == m.KEEPALIVE_IDS_MAX


def test_scan_ranges_and_limits() -> None:
    """Any start/end is a range (an empty or inverted one has no keys); limit is per page."""
    for start, end in ((b"", None), (b"b", b"a"), (b"a", b"a"), (b"\xff", None)):
        scan = m.Scan(1, 0, start, end, m.SCAN_LIMIT_MAX, True, True, m.ReadConsistency.STALE)
        assert m.from_wire(through_cbor(m.to_wire(scan, check=True))) == scan


@pytest.mark.parametrize(
    ("target", "value", "number"),
    [(m.CompareTarget.VALUE, b"", None)]
    + [(t, None, 0) for t in m.CompareTarget if t != m.CompareTarget.VALUE],
)
def test_every_compare_target_takes_its_operand(
    target: m.CompareTarget, value: bytes | None, number: int | None
) -> None:
    txn = m.Txn(1, 0, tuple(m.Compare(b"k", target, op, value, number) for op in m.CompareOp),
                (), (), 1, 1)
    assert m.from_wire(through_cbor(m.to_wire(txn, check=True))) == txn
    # the other operand instead (or both): refused, naming the field
    swapped = m.Compare(b"k", target, m.CompareOp.EQUAL,
                        value=None if value is not None else b"x",
                        number=None if number is not None else 0)
    with pytest.raises(LocalProtocolError, match=r"Txn.compares\[0\]\.(value|number)"):
        m.to_wire(m.Txn(1, 0, (swapped,), (), (), 1, 1), check=True)


def test_the_compare_enums_are_the_logs() -> None:
    """One definition: the server copies a Compare's target and op into the TxnCommand."""
    from prkdb.state import commands

    assert m.CompareTarget is commands.CompareTarget
    assert m.CompareOp is commands.CompareOp


def test_the_event_types_are_the_logs() -> None:
    """One definition: the server sends the state machine's events unchanged."""
    from prkdb.state import events

    assert m.Event is events.Event
    assert m.EventKind is events.EventKind


def test_lease_ids_name_their_partition() -> None:
    assert m.lease_partition(LEASE_3) == 3
    assert m.lease_partition(1 << 16 | m.LEASE_PARTITION_MAX) == 65535
    assert LEASE_3 >> m.LEASE_PARTITION_BITS == 77


def test_status_ok_key_rule() -> None:
    status = SAMPLES[m.StatusOk]
    assert status.key_rule == "hashtag"  # the dataclass default
    old = m.StatusOk(1, 1, "c1", (), (), "0.3", "crc32")
    assert m.from_wire(through_cbor(m.to_wire(old, check=True))).key_rule == "crc32"
    assert m.to_wire(status)[-1] == "hashtag"


def test_long_text_is_too_large() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire([3, 1, 1, "x" * 5000, {}])
    assert info.value.code == ErrorCode.TOO_LARGE


def test_bytes_and_text_are_never_confused_after_cbor() -> None:
    """CBOR keeps major types 2 (bytes) and 3 (text) apart; so do we."""
    wire = through_cbor([11, 1, "k", b"v", 1, 1])
    assert type(wire[2]) is str
    with pytest.raises(RemoteProtocolError, match=r"Put\.key"):
        m.from_wire(wire)
    wire = through_cbor([1, 2, b"cluster", "client", 0, ""])
    with pytest.raises(RemoteProtocolError, match=r"Hello\.cluster_id"):
        m.from_wire(wire)


def test_to_wire_check_blames_us() -> None:
    with pytest.raises(LocalProtocolError, match=r"Put\.key"):
        m.to_wire(m.Put(1, "k", b"v", 1, 1), check=True)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match=r"Error\.details"):
        m.to_wire(m.Error(1, ErrorCode.INTERNAL, "x", {"n": 2**70}), check=True)
    with pytest.raises(LocalProtocolError, match="not a wire message"):
        m.to_wire(HB)  # type: ignore[arg-type]


def test_local_raft_message_cannot_be_sent() -> None:
    with pytest.raises(LocalProtocolError, match="local"):
        m.to_wire(m.RaftBatch(1, ((0, Message(MsgType.HUP, to=1, from_=1)),)))


def test_encode_message_is_a_frame() -> None:
    msg = SAMPLES[m.Status]
    assert m.encode_message(msg) == encode_frame([15, 1])


def test_type_ids_are_stable() -> None:
    """Type ids are on the wire: changing one breaks every deployed peer and client."""
    assert {s.name: s.type_id for s in m.SCHEMAS.values()} == {
        "Hello": 1,
        "HelloOk": 2,
        "Error": 3,
        "Get": 10,
        "Put": 11,
        "Delete": 12,
        "Cas": 13,
        "Batch": 14,
        "Status": 15,
        "TransferLeader": 16,
        "Snapshot": 17,
        "RebuildFence": 18,
        "BackupBegin": 19,
        "BackupRead": 20,
        "Scan": 21,
        "Txn": 22,
        "LeaseGrant": 23,
        "LeaseRevoke": 24,
        "LeaseKeepAlive": 25,
        "LeaseTimeToLive": 26,
        "LeaseList": 27,
        "Watch": 28,
        "WatchCancel": 29,
        "GetOk": 30,
        "WriteOk": 31,
        "StatusOk": 32,
        "AdminOk": 33,
        "BackupBeginOk": 34,
        "BackupChunk": 35,
        "ScanOk": 36,
        "TxnOk": 37,
        "LeaseOk": 38,
        "LeaseKeepAliveOk": 39,
        "LeaseListOk": 40,
        "WatchEvents": 41,
        "RaftBatch": 50,
        "Login": 60,
        "Authenticate": 61,
        "AuthOk": 62,
        "UserAdd": 63,
        "UserDelete": 64,
        "UserPasswd": 65,
        "UserGrant": 66,
        "UserRevoke": 67,
        "UserList": 68,
        "RoleAdd": 69,
        "RoleDelete": 70,
        "RoleGrant": 71,
        "RoleRevoke": 72,
        "RoleList": 73,
        "UserListOk": 74,
        "RoleListOk": 75,
    }


def test_request_and_response_sets() -> None:
    assert all(
        s.fields[0].name == "request_id"
        for c, s in m.SCHEMAS.items()
        if c in m.REQUEST_TYPES | m.RESPONSE_TYPES
    )


def test_stream_sets() -> None:
    """A Watch is answered by a stream of WatchEvents; a WatchCancel by nothing."""
    assert {m.Watch} == m.STREAM_REQUEST_TYPES
    assert {m.WatchCancel} == m.ONE_WAY_REQUEST_TYPES
    assert {m.WatchEvents} == m.STREAM_RESPONSE_TYPES
    assert m.STREAM_REQUEST_TYPES | m.ONE_WAY_REQUEST_TYPES <= m.REQUEST_TYPES
    assert m.STREAM_RESPONSE_TYPES <= m.RESPONSE_TYPES
    assert not m.STREAM_REQUEST_TYPES & m.ONE_WAY_REQUEST_TYPES


def test_watch_ranges() -> None:
    """A watch range is [start, end), non-empty: one key, a prefix, or to the end."""
    for start, end in ((b"", None), (b"k", b"k\x00"), (b"svc/", b"svc0"), (b"\xff", None)):
        watch = m.Watch(1, 0, start, end, 0, False)
        assert m.from_wire(through_cbor(m.to_wire(watch, check=True))) == watch


def test_watch_events_frames() -> None:
    """Events of one revision may share a frame; a progress notice has no events."""
    notice = m.WatchEvents(9, 2, (), 120)
    assert m.from_wire(through_cbor(m.to_wire(notice, check=True))) == notice
    same = m.WatchEvents(9, 2, tuple(
        m.Event(m.EventKind.DELETE, b"k%d" % i, 121, None, None) for i in range(3)
    ), 121)
    assert m.from_wire(through_cbor(m.to_wire(same, check=True))) == same
    got = m.from_wire(through_cbor(m.to_wire(SAMPLES[m.WatchEvents])))
    assert isinstance(got, m.WatchEvents)
    assert [type(ev.kind) for ev in got.events] == [m.EventKind] * 3


def test_check_hello() -> None:
    ok = m.Hello(m.PROTOCOL_VERSION, "c1", "client", 0)
    assert m.check_hello(ok, cluster_id="c1") is None
    assert m.check_hello(ok, cluster_id="c1", role="client") is None
    wrong = m.check_hello(ok, cluster_id="c2")
    assert wrong is not None and wrong.code == ErrorCode.WRONG_CLUSTER and wrong.request_id == 0
    version = m.check_hello(m.Hello(99, "c2", "client", 0), cluster_id="c1")
    assert version is not None and version.code == ErrorCode.BAD_VERSION  # version checked first
    assert version.details == {"supported": list(m.CLIENT_VERSIONS)}
    role = m.check_hello(ok, cluster_id="c1", role="peer")
    assert role is not None and role.code == ErrorCode.BAD_REQUEST
    for err in (wrong, version, role):
        assert m.from_wire(through_cbor(m.to_wire(err, check=True))) == err


def test_versions() -> None:
    assert m.PROTOCOL_VERSION == 3
    assert m.CLIENT_VERSIONS == (3,)
    assert m.PEER_VERSIONS == (2, 3) and m.PEER_PROTOCOL_VERSION == 2
    assert m.HelloOk(1, "c1").protocol_version == 3


def test_a_version_2_client_is_told_to_upgrade() -> None:
    for role in (None, "client"):
        err = m.check_hello(m.Hello(2, "c1", "client", 0), cluster_id="c1", role=role)
        assert err is not None and err.code == ErrorCode.BAD_VERSION and err.request_id == 0
        assert err.details == {"supported": [3]}
        assert "client protocol version 2 is not supported" in err.message
        assert "upgrade the client" in err.message
        # what the client SDK makes of it: a ProtocolError carrying the versions
        exc = error_from_frame(m.from_wire(through_cbor(m.to_wire(err, check=True))))
        assert isinstance(exc, ProtocolError) and exc.details == {"supported": [3]}
    newer = m.check_hello(m.Hello(4, "c1", "client", 0), cluster_id="c1")
    assert newer is not None and newer.details == {"supported": [3]}
    assert "older than the client" in newer.message


@pytest.mark.parametrize("version", [2, 3])
def test_peers_may_say_2_or_3(version: int) -> None:
    """A rolling upgrade: old peers say 2, new ones say PEER_PROTOCOL_VERSION (2) or 3."""
    hello = m.Hello(version, "c1", "peer", 2, "ab" * 16)
    assert m.check_hello(hello, cluster_id="c1", role="peer") is None
    assert m.check_hello(hello, cluster_id="c1") is None


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_peers_of_other_versions_are_refused(version: int) -> None:
    err = m.check_hello(m.Hello(version, "c1", "peer", 2), cluster_id="c1", role="peer")
    assert err is not None and err.code == ErrorCode.BAD_VERSION
    assert err.details == {"supported": [2, 3]}
    assert f"peer protocol version {version} is not supported" in err.message


def test_a_peer_hello_is_accepted_by_old_and_new_nodes() -> None:
    """The version a peer says itself is one a version-2 node takes (it knew only 2)."""
    assert m.PEER_PROTOCOL_VERSION in (2,)
    assert m.PEER_PROTOCOL_VERSION in m.PEER_VERSIONS


def test_client_hello_frame_says_3() -> None:
    hello = m.from_wire(decode_body(hello_frame("c1")[4:]))
    assert isinstance(hello, m.Hello) and hello.protocol_version == 3
    assert m.check_hello(hello, cluster_id="c1", role="client") is None


def test_a_client_may_ask_for_the_cluster_id_a_peer_may_not() -> None:
    asking = m.Hello(m.PROTOCOL_VERSION, "", "client", 0)
    assert m.check_hello(asking, cluster_id="c1", role="client") is None
    peer = m.Hello(m.PROTOCOL_VERSION, "", "peer", 2, "ab" * 16)
    refused = m.check_hello(peer, cluster_id="c1", role="peer")
    assert refused is not None and refused.code == ErrorCode.WRONG_CLUSTER


def test_error_for_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.from_wire([11, 5, "k", b"v", 1, 1])
    err = m.error_for(info.value)
    assert (err.request_id, err.code) == (5, ErrorCode.BAD_REQUEST)
    assert "Put.key" in err.message
    assert m.error_for(info.value, request_id=0).request_id == 0
    m.to_wire(err, check=True)
