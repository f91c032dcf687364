"""Hypothesis strategies for valid wire values (Raft messages and client messages)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import strategies as st

from prkdb.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Role,
    Snapshot,
    SnapshotMeta,
)
from prkdb.wire import messages as m
from prkdb.wire.raft_codec import WIRE_MSG_TYPES

U64 = 2**64 - 1
uint = st.one_of(st.integers(0, 300), st.integers(0, U64))
node = st.integers(1, 9) | st.integers(1, U64)
small_bytes = st.binary(max_size=40)


@st.composite
def raft_messages(draw: Any, mtype: MsgType | None = None) -> Message:
    t = mtype if mtype is not None else draw(st.sampled_from(sorted(WIRE_MSG_TYPES)))
    term = draw(uint)
    log_term = draw(st.integers(0, term))
    index = draw(st.integers(0, U64 - 100))
    entries: tuple[Entry, ...] = ()
    if t is MsgType.APP and term >= 1:
        n = draw(st.integers(0, 5))
        terms = sorted(draw(st.lists(st.integers(max(log_term, 1), term), min_size=n, max_size=n)))
        entries = tuple(
            Entry(tt, index + 1 + i, draw(st.sampled_from(EntryKind)), draw(small_bytes))
            for i, tt in enumerate(terms)
        )
    elif t is MsgType.PROP:
        entries = tuple(
            draw(
                st.lists(
                    st.builds(Entry, uint, uint, st.sampled_from(EntryKind), small_bytes),
                    max_size=3,
                )
            )
        )
    snapshot = None
    if t is MsgType.SNAP:
        voters = tuple(sorted(draw(st.sets(node, min_size=1, max_size=5))))
        snapshot = Snapshot(
            SnapshotMeta(draw(st.integers(1, U64)), draw(st.integers(1, U64)), ConfState(voters)),
            draw(small_bytes),
        )
    return Message(
        t,
        to=draw(node),
        from_=draw(node),
        term=term,
        log_term=log_term,
        index=index,
        entries=entries,
        commit=draw(uint),
        reject=draw(st.booleans()),
        reject_hint=draw(uint),
        context=draw(small_bytes),
        snapshot=snapshot,
    )


@st.composite
def raft_batches(draw: Any) -> m.RaftBatch:
    sender = draw(node)
    msgs = draw(st.lists(raft_messages(), max_size=4))
    items = tuple((draw(st.integers(0, 2**32 - 1)), replace(x, from_=sender)) for x in msgs)
    return m.RaftBatch(sender, items)


rid = st.integers(1, U64)
key = st.binary(min_size=1, max_size=20)
session = {"client_id": st.integers(1, U64), "seq": st.integers(1, U64)}
text = st.text(max_size=20)
name = st.text(max_size=20)  # user and role names: any text the wire takes (the server checks more)
# [start, end) with end null or > start (RoleGrant, RoleRevoke).
key_range = st.tuples(small_bytes, st.none() | small_bytes).map(
    lambda r: r if r[1] is None or r[1] > r[0] else (r[0], None))
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), U64) | text | small_bytes,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
details = st.dictionaries(text, plain, max_size=4)


@st.composite
def cas(draw: Any) -> m.Cas:
    ev = draw(st.none() | small_bytes)
    ever = draw(st.none() | uint) if ev is not None else draw(uint)
    return m.Cas(
        draw(rid),
        draw(key),
        ev,
        ever,
        draw(st.none() | small_bytes),
        **{k: draw(v) for k, v in session.items()},
    )


batch_op = st.one_of(
    st.builds(m.BatchOp, st.just(m.OpKind.PUT), key, small_bytes),
    st.builds(m.BatchOp, st.just(m.OpKind.DELETE), key, st.none()),
)

lease_partition = st.integers(0, m.LEASE_PARTITION_MAX)


def lease_ids(partition: int) -> st.SearchStrategy[int]:
    """Valid lease ids of `partition` (grant index >= 1)."""
    return st.integers(1, (U64 >> m.LEASE_PARTITION_BITS)).map(
        lambda index: index << m.LEASE_PARTITION_BITS | partition
    )


any_lease_id = lease_partition.flatmap(lease_ids)

compare = st.one_of(
    st.builds(m.Compare, key, st.just(m.CompareTarget.VALUE), st.sampled_from(m.CompareOp),
              small_bytes, st.none()),
    st.builds(m.Compare, key, st.sampled_from([t for t in m.CompareTarget if t.name != "VALUE"]),
              st.sampled_from(m.CompareOp), st.none(), uint),
)


def txn_ops(partition: int) -> st.SearchStrategy[m.TxnOp]:
    return st.one_of(
        st.builds(m.TxnOp, st.just(m.TxnOpKind.PUT), key, small_bytes,
                  st.just(0) | lease_ids(partition) if partition <= m.LEASE_PARTITION_MAX
                  else st.just(0)),
        st.builds(m.TxnOp, st.sampled_from([m.TxnOpKind.DELETE, m.TxnOpKind.GET]), key,
                  st.none(), st.just(0)),
    )


@st.composite
def txns(draw: Any) -> m.Txn:
    partition = draw(st.integers(0, 2**32 - 1) | lease_partition)
    ops = st.lists(txn_ops(partition), max_size=4).map(tuple)
    return m.Txn(
        draw(rid),
        partition,
        tuple(draw(st.lists(compare, max_size=4))),
        draw(ops),
        draw(ops),
        **{k: draw(v) for k, v in session.items()},
    )


@st.composite
def keep_alives(draw: Any) -> m.LeaseKeepAlive:
    partition = draw(lease_partition)
    ids = draw(st.lists(lease_ids(partition), min_size=1, max_size=5))
    return m.LeaseKeepAlive(draw(rid), partition, tuple(ids))


@st.composite
def watches(draw: Any) -> m.Watch:
    start = draw(small_bytes)
    end = draw(st.none() | small_bytes.map(lambda tail: start + b"\x00" + tail))
    return m.Watch(
        draw(rid), draw(st.integers(0, 2**32 - 1)), start, end, draw(uint), draw(st.booleans())
    )


def events(revision: int) -> st.SearchStrategy[m.Event]:
    """A valid Event at `revision`: PUT has a value, DELETE and EXPIRE none."""
    return st.one_of(
        st.builds(m.Event, st.just(m.EventKind.PUT), key, st.just(revision), small_bytes,
                  st.none() | small_bytes),
        st.builds(m.Event, st.sampled_from([m.EventKind.DELETE, m.EventKind.EXPIRE]), key,
                  st.just(revision), st.none(), st.none() | small_bytes),
    )


@st.composite
def watch_events(draw: Any) -> m.WatchEvents:
    revisions = sorted(draw(st.lists(st.integers(1, U64) | st.integers(1, 50), max_size=5)))
    floor = revisions[-1] if revisions else 0
    return m.WatchEvents(
        draw(rid),
        draw(st.integers(0, 2**32 - 1)),
        tuple(draw(events(r)) for r in revisions),
        draw(st.integers(floor, U64)),
    )


key_value = st.builds(m.KeyValue, key, small_bytes, uint, uint, uint, uint)
txn_op_result = st.builds(m.TxnOpResult, uint, uint, st.none() | small_bytes, uint, uint, uint)

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    m.Hello: st.one_of(
        st.builds(m.Hello, st.integers(0, 2**32 - 1), text, st.just("peer"), node),
        st.builds(m.Hello, st.integers(0, 2**32 - 1), text, st.just("client"), st.just(0)),
    ),
    m.HelloOk: st.builds(m.HelloOk, node, text, st.integers(0, 2**32 - 1)),
    m.Error: st.builds(
        m.Error,
        st.integers(0, U64),
        st.sampled_from(list(m.ErrorCode)) | st.integers(100, 2**32 - 1),
        text,
        details,
    ),
    m.Get: st.builds(
        m.Get, rid, key, st.sampled_from(m.ReadConsistency), st.integers(0, 2**32 - 1)
    ),
    m.Put: st.builds(m.Put, rid, key, small_bytes, **session),
    m.Delete: st.builds(m.Delete, rid, key, **session),
    m.Cas: cas(),
    m.Batch: st.builds(
        m.Batch,
        rid,
        st.integers(0, 2**32 - 1),
        st.lists(batch_op, max_size=4).map(tuple),
        **session,
    ),
    m.Status: st.builds(m.Status, rid),
    m.RebuildFence: st.builds(m.RebuildFence, rid, uint),
    m.TransferLeader: st.builds(m.TransferLeader, rid, st.integers(0, 2**32 - 1), uint),
    m.Snapshot: st.builds(m.Snapshot, rid, st.none() | st.integers(0, 2**32 - 1)),
    m.BackupBegin: st.builds(m.BackupBegin, rid, st.integers(0, 2**32 - 1)),
    m.BackupRead: st.builds(
        m.BackupRead, rid, st.integers(0, 2**32 - 1), uint, uint, uint,
        st.integers(1, m.BACKUP_CHUNK_MAX),
    ),
    m.BackupBeginOk: st.builds(
        m.BackupBeginOk, rid, st.integers(0, 2**32 - 1), node, uint, uint, uint,
        st.binary(min_size=32, max_size=32),
    ),
    m.BackupChunk: st.builds(m.BackupChunk, rid, uint, small_bytes, uint),
    m.GetOk: st.builds(m.GetOk, rid, st.none() | small_bytes, uint, uint, uint),
    m.WriteOk: st.builds(
        m.WriteOk,
        rid,
        st.booleans(),
        uint,
        uint,
        uint,
        st.lists(st.builds(m.OpResult, uint, uint), max_size=3).map(tuple),
    ),
    m.StatusOk: st.builds(
        m.StatusOk,
        rid,
        node,
        text,
        st.lists(st.builds(m.NodeInfo, node, text, text), max_size=3).map(tuple),
        st.lists(
            st.builds(
                m.PartitionStatus,
                st.integers(0, 2**32 - 1),
                uint,
                uint,
                uint,
                uint,
                st.sampled_from(Role),
                st.lists(st.builds(m.ReplicaProgress, node, uint), max_size=3).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
        st.text(max_size=10),
        st.sampled_from(["hashtag", "crc32"]),
    ),
    m.AdminOk: st.builds(m.AdminOk, rid, details),
    m.Scan: st.builds(
        m.Scan, rid, st.integers(0, 2**32 - 1), small_bytes, st.none() | small_bytes,
        st.integers(0, 2**32 - 1), st.booleans(), st.booleans(),
        st.sampled_from(m.ReadConsistency),
    ),
    m.Txn: txns(),
    m.LeaseGrant: st.builds(m.LeaseGrant, rid, lease_partition, st.integers(1, U64), **session),
    m.LeaseRevoke: st.builds(m.LeaseRevoke, rid, any_lease_id, **session),
    m.LeaseKeepAlive: keep_alives(),
    m.LeaseTimeToLive: st.builds(m.LeaseTimeToLive, rid, any_lease_id, st.booleans()),
    m.LeaseList: st.builds(m.LeaseList, rid, lease_partition),
    m.Watch: watches(),
    m.WatchCancel: st.builds(m.WatchCancel, rid),
    m.WatchEvents: watch_events(),
    m.ScanOk: st.builds(
        m.ScanOk, rid, st.lists(key_value, max_size=4).map(tuple), uint, st.booleans(), uint
    ),
    m.TxnOk: st.builds(
        m.TxnOk, rid, st.booleans(), uint, st.lists(txn_op_result, max_size=4).map(tuple)
    ),
    m.LeaseOk: st.builds(
        m.LeaseOk, rid, any_lease_id, uint, uint, st.lists(key, max_size=3).map(tuple)
    ),
    m.LeaseKeepAliveOk: st.builds(
        m.LeaseKeepAliveOk, rid, st.lists(uint, max_size=5).map(tuple)
    ),
    m.LeaseListOk: st.builds(
        m.LeaseListOk, rid,
        st.lists(st.builds(m.LeaseInfo, any_lease_id, uint, uint), max_size=3).map(tuple),
    ),
    m.RaftBatch: raft_batches(),
    m.Login: st.builds(m.Login, rid, name, text),
    m.Authenticate: st.builds(m.Authenticate, rid, text),
    m.AuthOk: st.builds(m.AuthOk, rid, name, text, uint),
    m.UserAdd: st.builds(m.UserAdd, rid, name, st.none() | text,
                         st.lists(name, max_size=3).map(tuple), **session),
    m.UserDelete: st.builds(m.UserDelete, rid, name, **session),
    m.UserPasswd: st.builds(m.UserPasswd, rid, name, text, **session),
    m.UserGrant: st.builds(m.UserGrant, rid, name, name, **session),
    m.UserRevoke: st.builds(m.UserRevoke, rid, name, name, **session),
    m.UserList: st.builds(m.UserList, rid),
    m.RoleAdd: st.builds(m.RoleAdd, rid, name, **session),
    m.RoleDelete: st.builds(m.RoleDelete, rid, name, **session),
    m.RoleGrant: key_range.flatmap(lambda r: st.builds(
        m.RoleGrant, rid, name, st.just(r[0]), st.just(r[1]), st.sampled_from(m.Perm),
        **session)),
    m.RoleRevoke: key_range.flatmap(lambda r: st.builds(
        m.RoleRevoke, rid, name, st.just(r[0]), st.just(r[1]), **session)),
    m.RoleList: st.builds(m.RoleList, rid),
    m.UserListOk: st.builds(m.UserListOk, rid, st.lists(st.builds(
        m.UserInfo, name, st.lists(name, max_size=2).map(tuple), st.booleans()),
        max_size=3).map(tuple)),
    m.RoleListOk: st.builds(m.RoleListOk, rid, st.lists(st.builds(
        m.RoleInfo, name, st.lists(st.builds(
            m.PermInfo, small_bytes, st.none() | small_bytes, st.sampled_from(m.Perm)),
            max_size=2).map(tuple)), max_size=3).map(tuple)),
}

any_message = st.one_of(*STRATEGIES.values())
