"""Every message on a PrkDB connection, and the table that maps type ids to them.

Theory of operation
-------------------
A frame holds one CBOR array ``[type_id, field1, field2, ...]``. `SCHEMAS`
maps each message dataclass to its `Schema` (type id and typed fields, in
dataclass order); `to_wire` / `from_wire` go through it, and
scripts/gen_protocol_doc.py renders it into docs/protocol.md, so this file
is the protocol's single source of truth.

Connection life cycle (the server and client own it; this module only
defines the messages):

1. The connecting side sends `Hello` as its first frame. The accepting side
   answers `HelloOk`, or `Error` with request_id 0 (WRONG_CLUSTER,
   BAD_VERSION, BAD_REQUEST) and closes. The connecting side may pipeline
   requests right after Hello; if the hello fails they are not executed.
   Versions (`check_hello`): a client must say `PROTOCOL_VERSION` (3), since
   version 3 changed client messages (StatusOk.key_rule, and hash-tag key
   routing that a version-2 client would get wrong); a peer may say any of
   `PEER_VERSIONS` (2 or 3), since the peer protocol (RaftBatch) is the same
   in both, and says `PEER_PROTOCOL_VERSION` (2) itself, so an upgraded node
   can dial nodes not yet upgraded during a rolling upgrade.
2. Clients send requests (`REQUEST_TYPES`), each with a request_id >= 1
   unique among its in-flight requests on the connection. Every request gets
   exactly one response (`RESPONSE_TYPES`, or `Error`) with the same
   request_id; responses may come in any order. Two exceptions:
   - a stream request (`STREAM_REQUEST_TYPES`: `Watch`) gets any number of
     stream frames (`STREAM_RESPONSE_TYPES`: `WatchEvents`) with its id,
     until the client cancels it or the server ends it with an `Error` of
     that id; its id stays in use until then;
   - `WatchCancel` (`ONE_WAY_REQUEST_TYPES`) reuses the id of the Watch it
     cancels and gets no response at all.
3. Peers send `RaftBatch` frames, one-way, in both directions.
4. An `Error` with request_id 0 is about the connection (bad frame, bad
   hello); the sender closes the connection after it.

Type ids are append-only; a message's field list never changes within a
protocol version. Validation happens on decode (`from_wire`); `to_wire`
trusts its input unless ``check=True``.
"""

from __future__ import annotations

import enum
import inspect
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast, final

import prkdb.wire.raft_codec as raft_codec
from prkdb.errors import ErrorCode, PrkdbError
from prkdb.raft.types import Entry, Message, Role

# A permission's level, as the AuthStore keeps it (one definition).
from prkdb.state.auth import Perm

# The log's own enums (one definition): a Compare's target and op mean the same
# on the wire and in a TxnCommand, so the server copies them across unchanged.
from prkdb.state.commands import CompareOp, CompareTarget

# The state machine's events, sent as they are: a WatchEvents frame carries the
# `Event` objects of the partition's history (`EventLog.since`, `on_events`).
from prkdb.state.events import Event, EventKind, events_from_records
from prkdb.state.kv import ScanItem  # a KeyValue's fields, in order (`key_values`)
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import (
    CBOR_ARRAY,
    CBOR_UINT,
    DEFAULT_MAX_FRAME,
    NEED_DATA,
    FrameDecoder,
    PreEncoded,
    cbor_head,
    decode_body,
    encode_body,
    encode_frame,
    encode_frames,
    frame_of,
)
from prkdb.wire.schema import (
    U32_MAX,
    U64_MAX,
    Bool,
    Bytes,
    Custom,
    Details,
    Enum,
    Field,
    FieldError,
    ListOf,
    Optional,
    Record,
    Schema,
    Text,
    UInt,
    WireType,
    expected,
)

__all__ = [
    "AUTH_ADMIN_TYPES",
    "BACKUP_CHUNK_MAX",
    "CLIENT_VERSIONS",
    "EVENT_KINDS_WITH_VALUE",
    "HOT_MESSAGES",
    "KEEPALIVE_IDS_MAX",
    "KEY_RULE_CRC32",
    "KEY_RULE_HASHTAG",
    "LEASE_PARTITION_BITS",
    "LEASE_PARTITION_MAX",
    "ONE_WAY_REQUEST_TYPES",
    "PEER_PROTOCOL_VERSION",
    "PEER_VERSIONS",
    "PROTOCOL_VERSION",
    "RECORDS",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "ROLE_CLIENT",
    "ROLE_PEER",
    "SCAN_LIMIT_MAX",
    "SCHEMAS",
    "SCHEMAS_BY_ID",
    "STREAM_REQUEST_TYPES",
    "STREAM_RESPONSE_TYPES",
    "SUPPORTED_VERSIONS",
    "AdminOk",
    "AuthOk",
    "Authenticate",
    "BackupBegin",
    "BackupBeginOk",
    "BackupChunk",
    "BackupRead",
    "Batch",
    "BatchOp",
    "Cas",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "Error",
    "Event",
    "EventKind",
    "Get",
    "GetOk",
    "Hello",
    "HelloOk",
    "KeyRule",
    "KeyValue",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseKeepAlive",
    "LeaseKeepAliveOk",
    "LeaseList",
    "LeaseListOk",
    "LeaseOk",
    "LeaseRevoke",
    "LeaseTimeToLive",
    "Login",
    "NodeInfo",
    "OpKind",
    "OpResult",
    "PartitionStatus",
    "Perm",
    "PermInfo",
    "Put",
    "RaftBatch",
    "RaftBatchEncoder",
    "ReadConsistency",
    "RebuildFence",
    "ReplicaProgress",
    "RoleAdd",
    "RoleDelete",
    "RoleGrant",
    "RoleInfo",
    "RoleList",
    "RoleListOk",
    "RoleRevoke",
    "Scan",
    "ScanOk",
    "Snapshot",
    "Status",
    "StatusOk",
    "TransferLeader",
    "Txn",
    "TxnOk",
    "TxnOp",
    "TxnOpKind",
    "TxnOpResult",
    "UserAdd",
    "UserDelete",
    "UserGrant",
    "UserInfo",
    "UserList",
    "UserListOk",
    "UserPasswd",
    "UserRevoke",
    "Watch",
    "WatchCancel",
    "WatchEvents",
    "WireMessage",
    "WriteOk",
    "check_hello",
    "encode_delete_request",
    "encode_get_ok",
    "encode_get_request",
    "encode_message",
    "encode_messages",
    "encode_put_request",
    "encode_raft_batch",
    "encode_write_ok",
    "error_for",
    "from_wire",
    "key_values",
    "lease_partition",
    "next_message",
    "to_wire",
]

PROTOCOL_VERSION: Final = 3
"""The version this code speaks (a client's Hello.protocol_version, HelloOk's).

2: Hello has data_dir_id. 3: Scan, Txn, the lease and watch messages; StatusOk.key_rule.
"""

CLIENT_VERSIONS: Final = (3,)
"""Versions an acceptor takes from a client; BAD_VERSION details name them as "supported".

Only 3: a version-2 client would decode StatusOk (one field longer now) as
garbage and route hash-tagged keys to the wrong partition.
"""

PEER_PROTOCOL_VERSION: Final = 2
"""What a peer's own Hello says: the oldest version whose peer protocol is ours.

The peer protocol (RaftBatch and the Raft codec) has not changed since 2, so
an upgraded node that says 2 is accepted by the nodes not yet upgraded (which
take only 2) as well as by upgraded ones. Raise it when RaftBatch changes.
"""

PEER_VERSIONS: Final = (2, 3)
"""Versions an acceptor takes from a peer: every version with today's peer protocol."""

SUPPORTED_VERSIONS: Final = (2, 3)
"""Every version some role may say (`CLIENT_VERSIONS` and `PEER_VERSIONS` together)."""
assert set(SUPPORTED_VERSIONS) == {*CLIENT_VERSIONS, *PEER_VERSIONS}
assert PROTOCOL_VERSION in CLIENT_VERSIONS and PEER_PROTOCOL_VERSION in PEER_VERSIONS

ROLE_PEER: Final = "peer"
ROLE_CLIENT: Final = "client"

# TODO(#16): take KeyRule and KEY_RULES from prkdb.partitioning once it has them
# (the rules are its; the wire only carries their names).
KeyRule: TypeAlias = Literal["hashtag", "crc32"]
"""StatusOk.key_rule: "hashtag" hashes the key's ``{tag}`` if it has one, else the
whole key; "crc32" hashes the whole key (data dirs from before version 3)."""
KEY_RULE_HASHTAG: Final = "hashtag"
"""StatusOk.key_rule: hash the key's ``{tag}`` if it has one, else the whole key."""
KEY_RULE_CRC32: Final = "crc32"
"""StatusOk.key_rule: hash the whole key (the rule of data dirs from before version 3)."""
_KEY_RULES: Final[tuple[KeyRule, ...]] = (KEY_RULE_HASHTAG, KEY_RULE_CRC32)

LEASE_PARTITION_BITS: Final = 16
"""A lease id is ``grant_index << 16 | partition``: its low 16 bits name its partition."""
LEASE_PARTITION_MAX: Final = (1 << LEASE_PARTITION_BITS) - 1
SCAN_LIMIT_MAX: Final = U32_MAX
"""Largest `Scan.limit` on the wire (the server cuts any limit to its page cap)."""
KEEPALIVE_IDS_MAX: Final = 10_000
"""Most lease ids one `LeaseKeepAlive` may carry."""


def lease_partition(lease_id: int) -> int:
    """The partition a lease lives in (the low `LEASE_PARTITION_BITS` bits of its id)."""
    return lease_id & LEASE_PARTITION_MAX


class ReadConsistency(enum.IntEnum):
    """How fresh a Get must be (DESIGN: reads)."""

    LINEARIZABLE = 0  # leader, after a ReadIndex round: sees every acknowledged write
    FOLLOWER = 1  # any replica, after a ReadIndex from the leader: also linearizable
    STALE = 2  # any replica, local state now; GetOk.applied_index says how old


class OpKind(enum.IntEnum):
    """Operation kinds inside a `Batch`."""

    PUT = 0
    DELETE = 1


class TxnOpKind(enum.IntEnum):
    """Operation kinds inside a `Txn` branch."""

    PUT = 0  # store value (attached to lease, if not 0)
    DELETE = 1  # delete the key (absent: a no-op with version 0)
    GET = 2  # read the key as the earlier ops of the branch left it


# --- handshake -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection, from the connecting side."""

    protocol_version: int
    cluster_id: str
    role: Literal["peer", "client"]
    node_id: int  # the sender's node id for peers; 0 for clients
    # Peers: the id of the sender's data dir (32 hex digits, IDENTITY); a
    # member whose id changes had its disk swapped. Clients: "".
    data_dir_id: str = ""


@final
@dataclass(frozen=True, slots=True)
class HelloOk:
    """The acceptor's answer to a good Hello."""

    node_id: int
    cluster_id: str
    protocol_version: int = PROTOCOL_VERSION


@final
@dataclass(frozen=True, slots=True)
class Error:
    """A failed request (request_id >= 1) or a connection-level failure (0)."""

    request_id: int
    code: int  # an ErrorCode; unknown codes decode as plain ints
    message: str
    details: dict[str, Any] = field(default_factory=dict)


# --- client requests -----------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Get:
    request_id: int
    key: bytes
    consistency: ReadConsistency
    partition: int


@final
@dataclass(frozen=True, slots=True)
class Put:
    request_id: int
    key: bytes
    value: bytes
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class Delete:
    request_id: int
    key: bytes
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set: if every given condition holds, store new_value (null deletes).

    expected_value null = value not compared; expected_version null = version
    not compared, 0 = the key must be absent. At least one must be non-null.
    """

    request_id: int
    key: bytes
    expected_value: bytes | None
    expected_version: int | None
    new_value: bytes | None
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class BatchOp:
    """One op of an atomic Batch: PUT needs a value, DELETE must have null."""

    kind: OpKind
    key: bytes
    value: bytes | None = None


@final
@dataclass(frozen=True, slots=True)
class Batch:
    """Ops applied atomically, in order, in one partition (every key must map to it)."""

    request_id: int
    partition: int
    ops: tuple[BatchOp, ...]
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class Status:
    """Ask any node for the topology and per-partition Raft state."""

    request_id: int


@final
@dataclass(frozen=True, slots=True)
class RebuildFence:
    """Sent by a node rebuilding on an empty disk, to every other node; answered with StatusOk.

    The answering node first forgets everything `node_id`'s previous process
    acknowledged: it drops that node's incoming peer connections (unread
    acks with them) and, as leader, its replication progress. The commit
    indexes in the answer are then final for that process: no ack of it can
    raise them later (docs/operations.md, "Rebuild one node").
    """

    request_id: int
    node_id: int


@final
@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Ask the partition's leader to hand leadership to `to_node` (0 = pick one)."""

    request_id: int
    partition: int
    to_node: int


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """Ask the node to snapshot one partition now (null = every partition)."""

    request_id: int
    partition: int | None


@final
@dataclass(frozen=True, slots=True)
class BackupBegin:
    """Ask the partition's leader for a backup snapshot (answered with `BackupBeginOk`).

    The leader confirms its leadership and waits until it has applied its
    commit index as of the request (a ReadIndex round, as for a linearizable
    read), so the snapshot covers every write acknowledged before the request;
    then it snapshots the partition (or reuses a snapshot at or past that
    index) and keeps the file open for `BackupRead` (prkdb/server/backup.py).
    """

    request_id: int
    partition: int


@final
@dataclass(frozen=True, slots=True)
class BackupRead:
    """Read bytes of the snapshot file a `BackupBegin` named, from the node that answered it.

    Answered with `BackupChunk`; BAD_REQUEST with details ``backup_gone: true``
    when that node no longer has the file (restarted, or the file was
    retained away after the hand-out expired): start over with BackupBegin.
    """

    request_id: int
    partition: int
    index: int
    term: int
    offset: int
    length: int


@final
@dataclass(frozen=True, slots=True)
class Scan:
    """Read the keys in ``[start, end)`` of one partition, in key order, a page at a time.

    Answered with `ScanOk`. At most `limit` keys (0 = the server's page cap,
    `limits.max_scan_page`, default 1000; a larger limit is cut to the cap),
    and the server stops before `limits.max_scan_bytes` (default 4 MiB) of
    keys and values, but always returns at least one key if any is in range.
    `ScanOk.more` says whether keys remain: ask again from just after the
    last key returned. Consistency is as for `Get` (ReadIndex on the leader,
    or on a follower asked of the leader, or local for STALE); each page is
    read at one point of the partition's history.
    """

    request_id: int
    partition: int
    start: bytes  # first key of the range; b"" = from the first key
    end: bytes | None  # first key past the range; None = to the last key
    limit: int  # most keys to return; 0 = the server's page cap
    keys_only: bool  # values come back empty (b"")
    count_only: bool  # no keys at all, only ScanOk.count
    consistency: ReadConsistency


@final
@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a `Txn`: ``key's target <op> operand``.

    The operand is `value` for a VALUE compare and `number` for the others;
    the other one is None. An absent key has version, revisions and lease 0
    and no value: every VALUE compare on it is false. "The key exists" is
    ``VERSION GREATER 0``; "the key is absent" is ``VERSION EQUAL 0``.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: bytes | None = None
    number: int | None = None


@final
@dataclass(frozen=True, slots=True)
class TxnOp:
    """One op of a `Txn` branch. PUT needs a value; DELETE and GET have None and lease 0."""

    kind: TxnOpKind
    key: bytes
    value: bytes | None = None
    lease: int = 0  # PUT: attach the key to this lease (0 = none, detach)


@final
@dataclass(frozen=True, slots=True)
class Txn:
    """If every compare holds, run the `success` ops, else the `failure` ops; atomically.

    Answered with `TxnOk`. Compares, ops and their keys are all in one
    partition (`partition`; the server refuses keys of another one with
    BAD_REQUEST: put related keys under one hash tag, ``{user:42}:name``).
    The whole txn is one Raft entry, so one revision; later ops see the
    effects of earlier ones (a GET after a PUT of the same key reads the new
    value). A leased PUT must name a lease of this partition (LEASE_NOT_FOUND
    otherwise). Taking the failure branch is an answer, not an error.
    """

    request_id: int
    partition: int
    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Create a lease in `partition` that expires `ttl_ms` after its last keep-alive.

    Answered with `LeaseOk` (remaining_ms = ttl_ms). The server raises a TTL
    below its minimum (`limits.min_lease_ttl_ms`, default 2000, above the
    election timeout) to that minimum and answers the TTL it granted. The
    lease id is ``raft_index << 16 | partition``: unique in the cluster, and
    ``lease_id & 0xFFFF`` names the partition (`lease_partition`).
    TOO_MANY_LEASES when the partition holds `limits.max_leases` already.
    """

    request_id: int
    partition: int
    ttl_ms: int
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    """Delete a lease and every key attached to it, in one entry (to its partition's leader).

    Answered with `WriteOk` (version = number of keys deleted, revision = the
    entry); LEASE_NOT_FOUND if no such lease (never granted, expired or revoked).
    """

    request_id: int
    lease_id: int
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """Restart the TTL of some leases of one partition; to its leader, who confirms first.

    Answered with `LeaseKeepAliveOk`. The leader confirms its leadership with
    a ReadIndex round before it renews (a deposed leader cannot), then sets
    each lease's deadline to now + ttl on its own clock. Every id must name a
    lease of `partition`; an unknown one is not an error (its remaining_ms is 0).
    """

    request_id: int
    partition: int
    lease_ids: tuple[int, ...]


@final
@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    """How long a lease has left (and its keys, if asked); to its partition's leader.

    Answered with `LeaseOk`, remaining_ms from the leader's clock after a
    ReadIndex round; LEASE_NOT_FOUND if no such lease.
    """

    request_id: int
    lease_id: int
    with_keys: bool


@final
@dataclass(frozen=True, slots=True)
class LeaseList:
    """Every lease of one partition, from its leader; answered with `LeaseListOk`."""

    request_id: int
    partition: int


@final
@dataclass(frozen=True, slots=True)
class Watch:
    """Subscribe to the changes of the keys in ``[start, end)`` of one partition, after `after`.

    A stream: answered by any number of `WatchEvents` with this request id
    (the first at once, with the held events after `after`, possibly none),
    until the client sends `WatchCancel` or the server ends the stream with an
    `Error` of this id: COMPACTED (details ``oldest``: `after` is older than
    the history the replica keeps; list again), WATCH_OVERFLOW (the client
    read too slowly; resume from the cursor) or any other code (resume
    elsewhere if retryable). Any replica serves a watch, from what it has
    applied; only committed, applied changes are sent.
    """

    request_id: int
    partition: int
    start: bytes  # first key of the range; b"" = from the first key
    end: bytes | None  # first key past the range; None = to the last key
    after: int  # the cursor: send the events with revision > after
    prev_values: bool  # also send each event's previous value


@final
@dataclass(frozen=True, slots=True)
class WatchCancel:
    """End the `Watch` with this request id; answered by nothing (the stream stops).

    WatchEvents (or an Error) of the stream already on the way may still
    arrive after it. An unknown id (already ended) is not an error.
    """

    request_id: int


# --- responses -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class GetOk:
    """value null (and version 0) means the key is absent."""

    request_id: int
    value: bytes | None
    version: int
    mod_revision: int
    applied_index: int


@final
@dataclass(frozen=True, slots=True)
class OpResult:
    """Per-op outcome of a successful Batch (mirrors prkdb.state.results.OpResult)."""

    version: int
    prev_version: int


@final
@dataclass(frozen=True, slots=True)
class WriteOk:
    """The outcome of Put/Delete/Cas/Batch (mirrors prkdb.state.results.WriteResult).

    succeeded is false only for a Cas whose condition failed: a normal
    outcome, not an error; version then is the key's current version.
    """

    request_id: int
    succeeded: bool
    revision: int
    version: int
    prev_version: int
    ops: tuple[OpResult, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: int
    client_addr: str
    peer_addr: str


@final
@dataclass(frozen=True, slots=True)
class ReplicaProgress:
    node_id: int
    match: int


@final
@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition as seen by the answering node; progress only on its leader."""

    partition: int
    leader: int
    term: int
    commit: int
    applied: int
    role: Role
    progress: tuple[ReplicaProgress, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class StatusOk:
    """The topology and, per partition, this node's view of its Raft state.

    `key_rule` says how keys map to partitions (`prkdb.partitioning`):
    "hashtag" hashes only the part between the first ``{`` and the next
    ``}`` when there is one, so ``{user:42}:name`` and ``{user:42}:mail``
    share a partition; "crc32" hashes the whole key (data dirs created
    before version 3). A client must route with the rule its server names.
    """

    request_id: int
    node_id: int
    cluster_id: str
    nodes: tuple[NodeInfo, ...]
    partitions: tuple[PartitionStatus, ...]
    server_version: str = ""
    key_rule: KeyRule = "hashtag"


@final
@dataclass(frozen=True, slots=True)
class AdminOk:
    """Success of TransferLeader / Snapshot; details are informational."""

    request_id: int
    details: dict[str, Any] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class BackupBeginOk:
    """The snapshot file a `BackupBegin` got: read it with `BackupRead` from `node_id`."""

    request_id: int
    partition: int
    node_id: int  # the node that holds the file open: send BackupRead there
    index: int  # snapshot index (>= the leader's commit index when the request came)
    term: int  # term of the entry at `index`
    size: int  # bytes of the snapshot file
    sha256: bytes  # SHA-256 of the whole file (32 bytes)


@final
@dataclass(frozen=True, slots=True)
class BackupChunk:
    """Bytes ``[offset, offset + len(data))`` of a snapshot file; `size` is its total length."""

    request_id: int
    offset: int
    data: bytes
    size: int


@final
@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key of a `ScanOk` page, with its record (value b"" if keys_only)."""

    key: bytes
    value: bytes
    version: int
    mod_revision: int
    create_revision: int
    lease: int


@final
@dataclass(frozen=True, slots=True)
class ScanOk:
    """One page of a `Scan`, in key order.

    `count` is the number of keys in the whole range (not only this page);
    with count_only, `kvs` is empty. `more` is true when the partition has
    keys in range after the last one returned (ask again from just past it).
    """

    request_id: int
    kvs: tuple[KeyValue, ...]
    count: int
    more: bool
    applied_index: int


@final
@dataclass(frozen=True, slots=True)
class TxnOpResult:
    """Per-op outcome of a `Txn` branch (mirrors prkdb.state.results.OpResult).

    PUT/DELETE: version after and before, the read fields zero. GET: the
    key's record as the branch's earlier ops left it (value None = absent,
    with every number 0).
    """

    version: int
    prev_version: int
    value: bytes | None = None
    mod_revision: int = 0
    create_revision: int = 0
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class TxnOk:
    """The outcome of a `Txn`: which branch ran, at which revision, and its ops' results."""

    request_id: int
    succeeded: bool  # true: the compares held and `success` ran; false: `failure` ran
    revision: int
    results: tuple[TxnOpResult, ...]


@final
@dataclass(frozen=True, slots=True)
class LeaseOk:
    """A lease: the answer to `LeaseGrant` and `LeaseTimeToLive`.

    Grant: the granted TTL, remaining_ms = ttl_ms, keys empty. TimeToLive:
    remaining_ms from the leader's clock, the attached keys (sorted) if asked.
    """

    request_id: int
    lease_id: int
    ttl_ms: int
    remaining_ms: int
    keys: tuple[bytes, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class LeaseKeepAliveOk:
    """One remaining TTL per id of the `LeaseKeepAlive`, in order; 0 = no such lease."""

    request_id: int
    remaining_ms: tuple[int, ...]


@final
@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One lease of a `LeaseListOk`."""

    lease_id: int
    ttl_ms: int
    remaining_ms: int


@final
@dataclass(frozen=True, slots=True)
class LeaseListOk:
    """Every lease of the partition asked, by id."""

    request_id: int
    leases: tuple[LeaseInfo, ...]


@final
@dataclass(frozen=True, slots=True)
class WatchEvents:
    """A frame of a `Watch` stream: the next events of its range, and how far it is delivered.

    Events come in revision order (those of one revision in the order the
    entry made them, never split across frames), all with revision greater
    than the previous frame's `progress` (the first frame: than the Watch's
    `after`). `progress` never decreases, is at least the Watch's `after`
    and every event's revision here: every change of the range up to it has
    been sent. A frame with no events is a progress notice (at least one
    a second while the watch is idle), so the client's cursor moves on.
    """

    request_id: int
    partition: int
    events: tuple[Event, ...]
    progress: int  # the revision up to which the range is fully delivered


# --- authentication and authorization (issue 18) ---------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Login:
    """Log in with a password, on any node: answered `AuthOk` (the token, and the user is
    bound to this connection) or AUTH_FAILED (wrong user or password, or rate limited).

    Served in the order it arrives, like `Authenticate`: requests sent after it on the
    connection run as its user (a client may pipeline a Login before a request).
    With auth off it is answered AuthOk with an empty token, unchecked.
    """

    request_id: int
    user: str
    password: str

    def __repr__(self) -> str:  # never log the password
        return f"Login(request_id={self.request_id}, user={self.user!r}, password=***)"


@final
@dataclass(frozen=True, slots=True)
class Authenticate:
    """Bind the user of a token (from `AuthOk`) to this connection: answered `AuthOk`.

    Served in the order it arrives: requests sent after it on the same
    connection run as its user (a client may pipeline it right after Hello).
    """

    request_id: int
    token: str

    def __repr__(self) -> str:
        return f"Authenticate(request_id={self.request_id}, token=***)"


@final
@dataclass(frozen=True, slots=True)
class AuthOk:
    """A user is bound to the connection; `token` lets other connections `Authenticate`."""

    request_id: int
    user: str
    token: str  # "" when the server has auth off (nothing to present)
    expires_ms: int  # when the token expires, Unix time in ms (0: auth off)

    def __repr__(self) -> str:
        return f"AuthOk(request_id={self.request_id}, user={self.user!r}, token=***)"


@final
@dataclass(frozen=True, slots=True)
class UserAdd:
    """Create a user (root only); password null = it logs in with a client certificate only."""

    request_id: int
    name: str
    password: str | None
    roles: tuple[str, ...]
    client_id: int
    seq: int

    def __repr__(self) -> str:
        return f"UserAdd(request_id={self.request_id}, name={self.name!r}, roles={self.roles})"


@final
@dataclass(frozen=True, slots=True)
class UserDelete:
    request_id: int
    name: str
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class UserPasswd:
    """Set a user's password; every token issued before is void."""

    request_id: int
    name: str
    password: str
    client_id: int
    seq: int

    def __repr__(self) -> str:
        return f"UserPasswd(request_id={self.request_id}, name={self.name!r}, password=***)"


@final
@dataclass(frozen=True, slots=True)
class UserGrant:
    request_id: int
    name: str
    role: str
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class UserRevoke:
    request_id: int
    name: str
    role: str
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class UserList:
    request_id: int


@final
@dataclass(frozen=True, slots=True)
class RoleAdd:
    request_id: int
    name: str
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class RoleDelete:
    request_id: int
    name: str
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class RoleGrant:
    """Give a role READ or READWRITE on the keys in ``[start, end)`` (replaces that range's)."""

    request_id: int
    role: str
    start: bytes
    end: bytes | None
    perm: Perm
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class RoleRevoke:
    """Take back the permission a RoleGrant gave on exactly ``[start, end)``."""

    request_id: int
    role: str
    start: bytes
    end: bytes | None
    client_id: int
    seq: int


@final
@dataclass(frozen=True, slots=True)
class RoleList:
    request_id: int


@final
@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    roles: tuple[str, ...]
    has_password: bool


@final
@dataclass(frozen=True, slots=True)
class UserListOk:
    request_id: int
    users: tuple[UserInfo, ...]


@final
@dataclass(frozen=True, slots=True)
class PermInfo:
    start: bytes
    end: bytes | None
    perm: Perm


@final
@dataclass(frozen=True, slots=True)
class RoleInfo:
    name: str
    perms: tuple[PermInfo, ...]


@final
@dataclass(frozen=True, slots=True)
class RoleListOk:
    request_id: int
    roles: tuple[RoleInfo, ...]


#: Requests that change users or roles (root only; proposed in partition 0).
AUTH_ADMIN_TYPES: Final = frozenset(
    {UserAdd, UserDelete, UserPasswd, UserGrant, UserRevoke, RoleAdd, RoleDelete, RoleGrant,
     RoleRevoke})


# --- peers ---------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class RaftBatch:
    """Many partitions' Raft messages in one frame (one write per event-loop pass)."""

    from_node: int
    items: tuple[tuple[int, Message], ...]


WireMessage: TypeAlias = (
    Hello
    | HelloOk
    | Error
    | Get
    | Put
    | Delete
    | Cas
    | Batch
    | Status
    | RebuildFence
    | TransferLeader
    | Snapshot
    | BackupBegin
    | BackupRead
    | Scan
    | Txn
    | LeaseGrant
    | LeaseRevoke
    | LeaseKeepAlive
    | LeaseTimeToLive
    | LeaseList
    | Watch
    | WatchCancel
    | GetOk
    | WriteOk
    | StatusOk
    | AdminOk
    | BackupBeginOk
    | BackupChunk
    | ScanOk
    | TxnOk
    | LeaseOk
    | LeaseKeepAliveOk
    | LeaseListOk
    | WatchEvents
    | RaftBatch
    | Login
    | Authenticate
    | AuthOk
    | UserAdd
    | UserDelete
    | UserPasswd
    | UserGrant
    | UserRevoke
    | UserList
    | UserListOk
    | RoleAdd
    | RoleDelete
    | RoleGrant
    | RoleRevoke
    | RoleList
    | RoleListOk
)

# --- the tables ------------------------------------------------------------------------

_U64 = UInt()
_U32 = UInt(hi=U32_MAX)
_REQUEST_ID = UInt(lo=1)
_NODE_ID = UInt(lo=1)
_KEY = Bytes(min_len=1)
_BYTES = Bytes()
_CLIENT_ID = UInt(lo=1)
_SEQ = UInt(lo=1)
_ADDR = Text(max_len=255)
BACKUP_CHUNK_MAX: Final = 4 * 1024 * 1024
"""Most bytes one `BackupRead` may ask for (a `BackupChunk` stays far below a frame)."""


def _rid(
    what: str = "client-chosen, >= 1, unique among in-flight requests",
    wtype: UInt = _REQUEST_ID,
) -> Field:
    return Field("request_id", wtype, what)


def _session() -> tuple[Field, Field]:
    return (
        Field("client_id", _CLIENT_ID, "session id, random per client (exactly-once)"),
        Field("seq", _SEQ, "per-client sequence number; a retry reuses it"),
    )


def _check_hello(m: Hello) -> str | None:
    if m.role == ROLE_PEER and m.node_id == 0:
        return "node_id: a peer must send its node id (>= 1)"
    if m.role == ROLE_CLIENT and m.node_id != 0:
        return f"node_id: a client must send 0, got {m.node_id}"
    return None


def _check_cas(m: Cas) -> str | None:
    if m.expected_value is None and m.expected_version is None:
        return "expected_value: a Cas needs expected_value or expected_version (else use Put)"
    return None


def _check_batch(m: Batch) -> str | None:
    for i, op in enumerate(m.ops):
        if op.kind == OpKind.PUT and op.value is None:
            return f"ops[{i}].value: a PUT needs a value"
        if op.kind == OpKind.DELETE and op.value is not None:
            return f"ops[{i}].value: a DELETE must have null"
    return None


def _check_lease_id(lease_id: int, partition: int, where: str) -> str | None:
    """The problem with a (non-zero) lease id used in `partition`, or None."""
    if lease_id >> LEASE_PARTITION_BITS == 0:
        return f"{where}: {lease_id} is not a lease id (ids are >= {1 << LEASE_PARTITION_BITS})"
    if lease_partition(lease_id) != partition:
        return (
            f"{where}: lease {lease_id} lives in partition {lease_partition(lease_id)}, "
            f"not {partition}"
        )
    return None


def _check_compare(c: Compare, where: str) -> str | None:
    name = c.target.name
    if c.target == CompareTarget.VALUE:
        if c.value is None:
            return f"{where}.value: a VALUE compare needs a value"
        if c.number is not None:
            return f"{where}.number: a VALUE compare must have null (its operand is value)"
    else:
        if c.number is None:
            return f"{where}.number: a {name} compare needs a number"
        if c.value is not None:
            return f"{where}.value: a {name} compare must have null (its operand is number)"
    return None


def _check_txn_op(op: TxnOp, where: str, partition: int) -> str | None:
    if op.kind == TxnOpKind.PUT:
        if op.value is None:
            return f"{where}.value: a PUT needs a value"
        if op.lease:
            return _check_lease_id(op.lease, partition, f"{where}.lease")
        return None
    if op.value is not None:
        return f"{where}.value: a {op.kind.name} must have null"
    if op.lease:
        return f"{where}.lease: a {op.kind.name} must have 0"
    return None


def _check_txn(m: Txn) -> str | None:
    for i, c in enumerate(m.compares):
        problem = _check_compare(c, f"compares[{i}]")
        if problem is not None:
            return problem
    for branch, ops in (("success", m.success), ("failure", m.failure)):
        for i, op in enumerate(ops):
            problem = _check_txn_op(op, f"{branch}[{i}]", m.partition)
            if problem is not None:
                return problem
    return None


def _check_keep_alive(m: LeaseKeepAlive) -> str | None:
    if not m.lease_ids:
        return "lease_ids: name at least one lease"
    if len(m.lease_ids) > KEEPALIVE_IDS_MAX:
        return f"lease_ids: {len(m.lease_ids)} ids, more than {KEEPALIVE_IDS_MAX}"
    for i, lease_id in enumerate(m.lease_ids):
        problem = _check_lease_id(lease_id, m.partition, f"lease_ids[{i}]")
        if problem is not None:
            return problem
    return None


EVENT_KINDS_WITH_VALUE: Final = frozenset({EventKind.PUT})
"""Event kinds that carry a value (the others have None)."""


def _check_watch(m: Watch) -> str | None:
    if m.end is not None and m.end <= m.start:
        return "end: must be greater than start (or null): the range is empty"
    return None


def _check_watch_events(m: WatchEvents) -> str | None:
    last = 0
    for i, ev in enumerate(m.events):
        if ev.revision < last:
            return f"events[{i}].revision: {ev.revision} after revision {last}"
        last = ev.revision
        if (ev.value is not None) != (ev.kind in EVENT_KINDS_WITH_VALUE):
            need = "a value" if ev.kind in EVENT_KINDS_WITH_VALUE else "null"
            return f"events[{i}].value: a {ev.kind.name} event needs {need}"
    if last > m.progress:
        return f"progress: {m.progress} is below the revision of an event ({last})"
    return None


def _check_role_range(m: RoleGrant | RoleRevoke) -> str | None:
    if m.end is not None and m.end <= m.start:
        return "end: must be greater than start (or null): the range is empty"
    return None


def _check_raft_batch(m: RaftBatch) -> str | None:
    for i, (_, msg) in enumerate(m.items):
        if msg.from_ != m.from_node:
            return f"items[{i}]: message from {msg.from_} in a batch from {m.from_node}"
    return None


class _Pair(WireType):
    """``[partition, raft message]`` decoded into a plain tuple."""

    doc = "[partition: uint32, RaftMessage]"

    def decode(self, value: Any) -> tuple[int, Message]:
        if type(value) is not list or len(value) != 2:
            raise expected("a [partition, message] array", value)
        try:
            partition = _U32.decode(value[0])
        except FieldError as exc:
            exc.path.append("[0]")
            raise
        try:
            return (partition, _RAFT_MESSAGE.decode(value[1]))
        except FieldError as exc:
            exc.path.append("[1]")
            raise

    def encode(self, value: Any) -> list[Any]:
        return [value[0], raft_codec.encode_message(value[1])]


_RAFT_MESSAGE = Custom("RaftMessage", raft_codec.decode_message, raft_codec.encode_message)

_OP_RESULT = Record(
    OpResult,
    (
        Field("version", _U64, "key version after the op (0 = absent)"),
        Field("prev_version", _U64, "key version before the op (0 = was absent)"),
    ),
)
_BATCH_OP = Record(
    BatchOp,
    (
        Field("kind", Enum(OpKind), "what to do"),
        Field("key", _KEY, "non-empty key"),
        Field("value", Optional(_BYTES), "PUT: the value; DELETE: null"),
    ),
)
_NODE_INFO = Record(
    NodeInfo,
    (
        Field("node_id", _NODE_ID, "node id"),
        Field("client_addr", _ADDR, "host:port for clients"),
        Field("peer_addr", _ADDR, "host:port for peers"),
    ),
)
_REPLICA_PROGRESS = Record(
    ReplicaProgress,
    (
        Field("node_id", _NODE_ID, "replica"),
        Field("match", _U64, "highest log index known replicated there"),
    ),
)
_PARTITION_STATUS = Record(
    PartitionStatus,
    (
        Field("partition", _U32, "partition id"),
        Field("leader", _U64, "leader node id as known here (0 = unknown)"),
        Field("term", _U64, "current term"),
        Field("commit", _U64, "commit index"),
        Field("applied", _U64, "applied index"),
        Field("role", Enum(Role), "this node's role"),
        Field("progress", ListOf(_REPLICA_PROGRESS), "leader only: per replica; else []"),
    ),
)

_LEASE_PARTITION = UInt(hi=LEASE_PARTITION_MAX)
_LEASE_ID = UInt(lo=1 << LEASE_PARTITION_BITS)
_TTL_MS = UInt(lo=1)

_KEY_VALUE = Record(
    KeyValue,
    (
        Field("key", _KEY, "the key"),
        Field("value", _BYTES, "its value; empty if the Scan was keys_only"),
        Field("version", _U64, "writes since the key was created (>= 1)"),
        Field("mod_revision", _U64, "revision (log index) of the key's last write"),
        Field("create_revision", _U64, "revision of the write that created the key"),
        Field("lease", _U64, "the lease the key is attached to; 0 = none"),
    ),
)
_COMPARE = Record(
    Compare,
    (
        Field("key", _KEY, "the key compared"),
        Field("target", Enum(CompareTarget), "what of the key is compared"),
        Field("op", Enum(CompareOp), "holds if `target <op> operand`"),
        Field("value", Optional(_BYTES),
              "the operand of a VALUE compare (bytes order); null for the other targets"),
        Field("number", Optional(_U64),
              "the operand of the other targets; null for VALUE"),
    ),
)
_TXN_OP = Record(
    TxnOp,
    (
        Field("kind", Enum(TxnOpKind), "what to do"),
        Field("key", _KEY, "non-empty key of the Txn's partition"),
        Field("value", Optional(_BYTES), "PUT: the value; DELETE, GET: null"),
        Field("lease", _U64,
              "PUT: attach the key to this lease of the partition (0 = none, detach); "
              "DELETE, GET: 0"),
    ),
)
_TXN_OP_RESULT = Record(
    TxnOpResult,
    (
        Field("version", _U64, "PUT/DELETE: key version after (0 = absent); GET: the version"),
        Field("prev_version", _U64, "PUT/DELETE: key version before (0 = was absent); GET: 0"),
        Field("value", Optional(_BYTES), "GET: the value (null = absent); PUT/DELETE: null"),
        Field("mod_revision", _U64, "GET: revision of the key's last write; else 0"),
        Field("create_revision", _U64, "GET: revision that created the key; else 0"),
        Field("lease", _U64, "GET: the key's lease (0 = none); else 0"),
    ),
)
_LEASE_INFO = Record(
    LeaseInfo,
    (
        Field("lease_id", _LEASE_ID, "the lease"),
        Field("ttl_ms", _U64, "its TTL as granted, in milliseconds"),
        Field("remaining_ms", _U64, "milliseconds until it expires, on the leader's clock"),
    ),
)

_REVISION = UInt(lo=1)
_EVENT = Record(
    Event,
    (
        Field("kind", Enum(EventKind), "what happened to the key"),
        Field("key", _KEY, "the key"),
        Field("revision", _REVISION, "log index of the entry that made the change"),
        Field("value", Optional(_BYTES), "PUT: the new value; DELETE, EXPIRE: null"),
        Field("prev_value", Optional(_BYTES),
              "the value before (null: the key was absent, or prev_values was not asked)"),
    ),
)

_NAME = Text(max_len=128)
_PASSWORD = Text(max_len=1024)
_TOKEN = Text(max_len=4096)
_USER_INFO = Record(
    UserInfo,
    (
        Field("name", _NAME, "the user"),
        Field("roles", ListOf(_NAME), "its roles, sorted"),
        Field("has_password", Bool(), "false: logs in with a client certificate only"),
    ),
)
_PERM_INFO = Record(
    PermInfo,
    (
        Field("start", _BYTES, "first key of the range (inclusive)"),
        Field("end", Optional(_BYTES), "end of the range (exclusive); null = no end"),
        Field("perm", Enum(Perm), "READ (1) or READWRITE (2)"),
    ),
)
_ROLE_INFO = Record(
    RoleInfo,
    (
        Field("name", _NAME, "the role"),
        Field("perms", ListOf(_PERM_INFO), "its permissions, by range"),
    ),
)

#: Nested records, for docs/protocol.md.
RECORDS: Final = (
    _BATCH_OP, _OP_RESULT, _NODE_INFO, _PARTITION_STATUS, _REPLICA_PROGRESS,
    _KEY_VALUE, _COMPARE, _TXN_OP, _TXN_OP_RESULT, _LEASE_INFO, _EVENT,
    _USER_INFO, _PERM_INFO, _ROLE_INFO,
)

_ALL = (
    Schema(
        Hello,
        1,
        (
            Field("protocol_version", _U32, f"this document describes {PROTOCOL_VERSION}"),
            Field("cluster_id", Text(max_len=255),
                  "must match the acceptor's cluster id; a client may send \"\" "
                  "to be told it in HelloOk"),
            Field("role", Text(choices=(ROLE_PEER, ROLE_CLIENT)), "who is connecting"),
            Field("node_id", _U64, "peers: own node id (>= 1); clients: 0"),
            Field("data_dir_id", Text(max_len=32),
                  "peers: the id of their data dir (32 hex digits); clients: empty"),
        ),
        _check_hello,
    ),
    Schema(
        HelloOk,
        2,
        (
            Field("node_id", _NODE_ID, "the acceptor's node id"),
            Field("cluster_id", Text(max_len=255), "the acceptor's cluster id"),
            Field("protocol_version", _U32, "the version the connection will use"),
        ),
    ),
    Schema(
        Error,
        3,
        (
            _rid("the failed request, or 0 for the connection", _U64),
            Field("code", Enum(ErrorCode, lenient=True), "unknown codes: treat as INTERNAL"),
            Field("message", Text(max_len=4096), "human-readable"),
            Field("details", Details(), "structured extras, see Error codes"),
        ),
    ),
    Schema(
        Get,
        10,
        (
            _rid(),
            Field("key", _KEY, "non-empty"),
            Field("consistency", Enum(ReadConsistency), "read level"),
            Field("partition", _U32, "the key's partition (prkdb.partitioning)"),
        ),
    ),
    Schema(
        Put,
        11,
        (
            _rid(),
            Field("key", _KEY, "non-empty"),
            Field("value", _BYTES, "may be empty"),
            *_session(),
        ),
    ),
    Schema(Delete, 12, (_rid(), Field("key", _KEY, "non-empty"), *_session())),
    Schema(
        Cas,
        13,
        (
            _rid(),
            Field("key", _KEY, "non-empty"),
            Field("expected_value", Optional(_BYTES), "null = value not compared"),
            Field(
                "expected_version",
                Optional(_U64),
                "null = not compared; 0 = key must be absent",
            ),
            Field("new_value", Optional(_BYTES), "stored if the conditions hold; null deletes"),
            *_session(),
        ),
        _check_cas,
    ),
    Schema(
        Batch,
        14,
        (
            _rid(),
            Field("partition", _U32, "every op's key must map to it"),
            Field("ops", ListOf(_BATCH_OP), "applied atomically in order; may be empty"),
            *_session(),
        ),
        _check_batch,
    ),
    Schema(Status, 15, (_rid(),)),
    Schema(
        TransferLeader,
        16,
        (
            _rid(),
            Field("partition", _U32, "partition id"),
            Field("to_node", _U64, "target node id; 0 = the most up-to-date follower"),
        ),
    ),
    Schema(Snapshot, 17, (_rid(), Field("partition", Optional(_U32), "null = every partition"))),
    Schema(RebuildFence, 18, (_rid(), Field("node_id", _U64, "the rebuilding node (>= 1)"))),
    Schema(BackupBegin, 19, (_rid(), Field("partition", _U32, "partition id"))),
    Schema(
        BackupRead,
        20,
        (
            _rid(),
            Field("partition", _U32, "partition id, as in BackupBeginOk"),
            Field("index", _U64, "snapshot index, as in BackupBeginOk"),
            Field("term", _U64, "snapshot term, as in BackupBeginOk"),
            Field("offset", _U64, "first byte to read"),
            Field("length", UInt(lo=1, hi=BACKUP_CHUNK_MAX), "most bytes to return"),
        ),
    ),
    Schema(
        Scan,
        21,
        (
            _rid(),
            Field("partition", _U32, "the partition scanned"),
            Field("start", _BYTES, "first key of the range (inclusive); empty = the first key"),
            Field("end", Optional(_BYTES),
                  "end of the range (exclusive); null = no end. The keys starting with p: "
                  "start p, end p without its trailing 0xff bytes and with its last byte "
                  "incremented (null if nothing is left)"),
            Field("limit", UInt(hi=SCAN_LIMIT_MAX),
                  "most keys to return; 0 (or more than the server's page cap, "
                  "default 1000) = the cap"),
            Field("keys_only", Bool(), "return keys with empty values"),
            Field("count_only", Bool(), "return no keys, only the count"),
            Field("consistency", Enum(ReadConsistency), "read level, as for Get"),
        ),
    ),
    Schema(
        Txn,
        22,
        (
            _rid(),
            Field("partition", _U32, "every key of the txn must map to it"),
            Field("compares", ListOf(_COMPARE), "all must hold for `success` to run; may be empty"),
            Field("success", ListOf(_TXN_OP), "ops run, in order, if every compare holds"),
            Field("failure", ListOf(_TXN_OP), "ops run, in order, otherwise"),
            *_session(),
        ),
        _check_txn,
    ),
    Schema(
        LeaseGrant,
        23,
        (
            _rid(),
            Field("partition", _LEASE_PARTITION, "the partition the lease lives in"),
            Field("ttl_ms", _TTL_MS,
                  "time to live in milliseconds; raised to the server's minimum"),
            *_session(),
        ),
    ),
    Schema(
        LeaseRevoke,
        24,
        (_rid(), Field("lease_id", _LEASE_ID, "the lease (its low 16 bits: the partition)"),
         *_session()),
    ),
    Schema(
        LeaseKeepAlive,
        25,
        (
            _rid(),
            Field("partition", _LEASE_PARTITION, "the partition of every lease named"),
            Field("lease_ids", ListOf(_LEASE_ID),
                  f"the leases to renew: 1..{KEEPALIVE_IDS_MAX}, all of `partition`"),
        ),
        _check_keep_alive,
    ),
    Schema(
        LeaseTimeToLive,
        26,
        (
            _rid(),
            Field("lease_id", _LEASE_ID, "the lease (its low 16 bits: the partition)"),
            Field("with_keys", Bool(), "also return the keys attached to it"),
        ),
    ),
    Schema(LeaseList, 27, (_rid(), Field("partition", _LEASE_PARTITION, "partition id"))),
    Schema(
        Watch,
        28,
        (
            _rid("client-chosen, >= 1, unique among in-flight requests and open watches; "
                 "every frame of the stream carries it"),
            Field("partition", _U32, "the partition watched"),
            Field("start", _BYTES, "first key of the range (inclusive); empty = the first key"),
            Field("end", Optional(_BYTES),
                  "end of the range (exclusive), > start; null = no end. One key k: start k, "
                  "end k + 0x00; a prefix: as for Scan"),
            Field("after", _U64,
                  "the cursor: send the changes with revision > after (a Scan's "
                  "applied_index, or the last revision received); COMPACTED if older than "
                  "the history held"),
            Field("prev_values", Bool(), "also send each event's previous value"),
        ),
        _check_watch,
    ),
    Schema(
        WatchCancel,
        29,
        (_rid("the request id of the Watch to end (not a new id); no response"),),
    ),
    Schema(
        GetOk,
        30,
        (
            _rid("the Get's request id"),
            Field("value", Optional(_BYTES), "null = key absent"),
            Field("version", _U64, "key version (0 = absent)"),
            Field("mod_revision", _U64, "log index of the last write of the key"),
            Field("applied_index", _U64, "partition's applied index when read"),
        ),
    ),
    Schema(
        WriteOk,
        31,
        (
            _rid("the write's request id"),
            Field("succeeded", Bool(), "false only for a Cas whose condition failed"),
            Field("revision", _U64, "log index of the entry that made the write"),
            Field("version", _U64, "key version after (Cas failure: current version)"),
            Field("prev_version", _U64, "key version before (0 = was absent)"),
            Field("ops", ListOf(_OP_RESULT), "Batch: one per op, in order; else []"),
        ),
    ),
    Schema(
        StatusOk,
        32,
        (
            _rid("the Status's request id"),
            Field("node_id", _NODE_ID, "the answering node"),
            Field("cluster_id", Text(max_len=255), "its cluster"),
            Field("nodes", ListOf(_NODE_INFO), "every member"),
            Field("partitions", ListOf(_PARTITION_STATUS), "every partition"),
            Field("server_version", Text(max_len=64), "the answering node's PrkDB version"),
            Field("key_rule", Text(choices=_KEY_RULES),
                  "how keys map to partitions: \"hashtag\" (hash the {tag} if any) "
                  "or \"crc32\" (whole key)"),
        ),
    ),
    Schema(AdminOk, 33, (_rid("the admin request's id"), Field("details", Details(), "extras"))),
    Schema(
        BackupBeginOk,
        34,
        (
            _rid("the BackupBegin's request id"),
            Field("partition", _U32, "partition id"),
            Field("node_id", _NODE_ID, "the node holding the file: send BackupRead there"),
            Field("index", _U64, "snapshot index (>= the commit index at the request)"),
            Field("term", _U64, "term of the entry at index"),
            Field("size", _U64, "bytes in the snapshot file"),
            Field("sha256", Bytes(min_len=32), "SHA-256 of the whole file"),
        ),
    ),
    Schema(
        BackupChunk,
        35,
        (
            _rid("the BackupRead's request id"),
            Field("offset", _U64, "offset of data in the file"),
            Field("data", _BYTES, "empty only at or past the end"),
            Field("size", _U64, "the file's total length"),
        ),
    ),
    Schema(
        ScanOk,
        36,
        (
            _rid("the Scan's request id"),
            Field("kvs", ListOf(_KEY_VALUE), "the page, in key order; empty with count_only"),
            Field("count", _U64, "keys in the whole range, not only this page"),
            Field("more", Bool(), "keys in range follow the last one returned"),
            Field("applied_index", _U64, "partition's applied index when read"),
        ),
    ),
    Schema(
        TxnOk,
        37,
        (
            _rid("the Txn's request id"),
            Field("succeeded", Bool(), "true: every compare held and `success` ran; "
                                       "false: `failure` ran"),
            Field("revision", _U64, "log index of the txn's entry"),
            Field("results", ListOf(_TXN_OP_RESULT), "one per op of the branch that ran"),
        ),
    ),
    Schema(
        LeaseOk,
        38,
        (
            _rid("the LeaseGrant's or LeaseTimeToLive's request id"),
            Field("lease_id", _LEASE_ID, "the lease"),
            Field("ttl_ms", _U64, "its TTL as granted, in milliseconds"),
            Field("remaining_ms", _U64, "grant: ttl_ms; time-to-live: left on the leader's clock"),
            Field("keys", ListOf(_KEY), "time-to-live with_keys: the attached keys, sorted; "
                                        "else []"),
        ),
    ),
    Schema(
        LeaseKeepAliveOk,
        39,
        (
            _rid("the LeaseKeepAlive's request id"),
            Field("remaining_ms", ListOf(_U64),
                  "per id asked, in order: its new time to live (= its TTL); 0 = no such lease"),
        ),
    ),
    Schema(
        LeaseListOk,
        40,
        (
            _rid("the LeaseList's request id"),
            Field("leases", ListOf(_LEASE_INFO), "every lease of the partition, by id"),
        ),
    ),
    Schema(
        WatchEvents,
        41,
        (
            _rid("the Watch's request id"),
            Field("partition", _U32, "the Watch's partition"),
            Field("events", ListOf(_EVENT),
                  "in revision order, all after the previous frame's progress (first frame: "
                  "after the Watch's after); empty = a progress notice"),
            Field("progress", _U64,
                  "every change of the range up to this revision has been sent; never "
                  "decreases, >= after and >= every event's revision"),
        ),
        _check_watch_events,
    ),
    Schema(
        Login,
        60,
        (_rid(), Field("user", _NAME, "the user"), Field("password", _PASSWORD, "its password")),
    ),
    Schema(Authenticate, 61, (_rid(), Field("token", _TOKEN, "a token from AuthOk"))),
    Schema(
        AuthOk,
        62,
        (
            _rid("the Login's or Authenticate's request id"),
            Field("user", _NAME, "the user now bound to the connection"),
            Field("token", _TOKEN,
                  "v1.<payload>.<signature>: present it with Authenticate on other connections "
                  "(any node of the cluster); \"\" when the server has auth off"),
            Field("expires_ms", _U64, "when the token expires, Unix time in ms; 0 = auth off"),
        ),
    ),
    Schema(
        UserAdd,
        63,
        (
            _rid(),
            Field("name", _NAME, "the new user (1..128 printable characters, no spaces)"),
            Field("password", Optional(_PASSWORD),
                  "null: the user logs in with a client certificate (CN = name) only"),
            Field("roles", ListOf(_NAME), "roles to give it; each must exist (root is built in)"),
            *_session(),
        ),
    ),
    Schema(UserDelete, 64, (_rid(), Field("name", _NAME, "the user (not root)"), *_session())),
    Schema(
        UserPasswd,
        65,
        (_rid(), Field("name", _NAME, "the user"), Field("password", _PASSWORD, "the new one"),
         *_session()),
    ),
    Schema(UserGrant, 66, (_rid(), Field("name", _NAME, "the user"),
                           Field("role", _NAME, "an existing role, or root"), *_session())),
    Schema(UserRevoke, 67, (_rid(), Field("name", _NAME, "the user"),
                            Field("role", _NAME, "one of its roles"), *_session())),
    Schema(UserList, 68, (_rid(),)),
    Schema(RoleAdd, 69, (_rid(), Field("name", _NAME, "the new role (not root)"), *_session())),
    Schema(RoleDelete, 70, (_rid(), Field("name", _NAME, "the role; users lose it"),
                            *_session())),
    Schema(
        RoleGrant,
        71,
        (
            _rid(),
            Field("role", _NAME, "the role (not root: it allows everything)"),
            Field("start", _BYTES, "first key of the range (inclusive)"),
            Field("end", Optional(_BYTES),
                  "end of the range (exclusive), > start; null = no end. A prefix p: as for "
                  "Scan"),
            Field("perm", Enum(Perm), "READ (1): Get, Scan, Watch, Txn compares and gets; "
                                      "READWRITE (2): also every write"),
            *_session(),
        ),
        _check_role_range,
    ),
    Schema(
        RoleRevoke,
        72,
        (
            _rid(),
            Field("role", _NAME, "the role"),
            Field("start", _BYTES, "start of a range granted"),
            Field("end", Optional(_BYTES), "its end, exactly as granted"),
            *_session(),
        ),
        _check_role_range,
    ),
    Schema(RoleList, 73, (_rid(),)),
    Schema(UserListOk, 74, (_rid("the UserList's request id"),
                            Field("users", ListOf(_USER_INFO), "every user, by name"))),
    Schema(RoleListOk, 75, (_rid("the RoleList's request id"),
                            Field("roles", ListOf(_ROLE_INFO), "every role, by name"))),
    Schema(
        RaftBatch,
        50,
        (
            Field("from_node", _NODE_ID, "sender; must match its Hello and every message"),
            Field("items", ListOf(_Pair()), "[partition, RaftMessage] pairs, in send order"),
        ),
        _check_raft_batch,
    ),
)

SCHEMAS: Final[dict[type, Schema]] = {s.cls: s for s in _ALL}
SCHEMAS_BY_ID: Final[dict[int, Schema]] = {s.type_id: s for s in _ALL}
assert len(SCHEMAS_BY_ID) == len(_ALL), "duplicate type id"

REQUEST_TYPES: Final = frozenset(
    {Get, Put, Delete, Cas, Batch, Status, RebuildFence, TransferLeader, Snapshot,
     BackupBegin, BackupRead, Scan, Txn, LeaseGrant, LeaseRevoke, LeaseKeepAlive,
     LeaseTimeToLive, LeaseList, Watch, WatchCancel, Login, Authenticate, UserAdd, UserDelete,
     UserPasswd, UserGrant, UserRevoke, UserList, RoleAdd, RoleDelete, RoleGrant, RoleRevoke,
     RoleList}
)
"""Messages a client may send after Hello; each gets one response, except the streams
(`STREAM_REQUEST_TYPES`: many) and `ONE_WAY_REQUEST_TYPES` (none)."""
STREAM_REQUEST_TYPES: Final = frozenset({Watch})
"""Requests answered by a stream: any number of `STREAM_RESPONSE_TYPES` frames with their
request id, until the client cancels the stream (`WatchCancel`) or the server ends it with
an `Error` of that id. The id stays in use until then."""
ONE_WAY_REQUEST_TYPES: Final = frozenset({WatchCancel})
"""Requests answered by nothing. WatchCancel carries the id of the Watch it ends."""
RESPONSE_TYPES: Final = frozenset(
    {GetOk, WriteOk, StatusOk, AdminOk, BackupBeginOk, BackupChunk, ScanOk, TxnOk, LeaseOk,
     LeaseKeepAliveOk, LeaseListOk, WatchEvents, Error, AuthOk, UserListOk, RoleListOk}
)
"""Messages a server sends to clients after HelloOk."""
STREAM_RESPONSE_TYPES: Final = frozenset({WatchEvents})
"""The frames of a stream: many per request id, none of them ending the stream (only an
`Error` of the id, or the client's cancel, does)."""
assert STREAM_REQUEST_TYPES | ONE_WAY_REQUEST_TYPES <= REQUEST_TYPES
assert STREAM_RESPONSE_TYPES <= RESPONSE_TYPES


def to_wire(msg: WireMessage, *, check: bool = False) -> list[Any]:
    """Message -> plain ``[type_id, *fields]`` ready for `encode_frame`.

    Args:
        msg: one of the message dataclasses.
        check: also validate the result as the receiver would, so a bad
            field is our error (`LocalProtocolError`) rather than a
            connection the peer closes. Cheap for client messages; leave it
            off on the RaftBatch hot path.

    Raises:
        LocalProtocolError: `msg` is not a message type, or (with check) a
            field is invalid; also for local-only Raft messages.
    """
    schema = SCHEMAS.get(type(msg))
    if schema is None:
        raise LocalProtocolError(f"{type(msg).__name__} is not a wire message")
    obj = schema.encode(msg)
    if check:
        try:
            schema.decode(obj)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"invalid outgoing {exc.message}", code=exc.code) from None
    return obj


def from_wire(obj: Any) -> WireMessage:
    """Validate a decoded frame item and build its message.

    Raises:
        RemoteProtocolError: BAD_REQUEST (or TOO_LARGE for an over-long text)
            naming the message and field, for an unknown type id or any
            wrong shape, type or value.
    """
    if type(obj) is not list or not obj:
        raise RemoteProtocolError(
            f"a frame must hold a non-empty array [type_id, ...], got {type(obj).__name__}"
        )
    type_id = obj[0]
    schema = SCHEMAS_BY_ID.get(type_id) if type(type_id) is int else None
    if schema is None:
        raise RemoteProtocolError(f"unknown message type id {type_id!r:.20}")
    msg: WireMessage = schema.decode(obj)
    return msg


def check_hello(hello: Hello, *, cluster_id: str, role: str | None = None) -> Error | None:
    """Decide whether an acceptor takes this Hello; the Error to send (then close) if not.

    Kept here so every acceptor (client listener, peer listener) applies the
    same rules in the same order: version first (a newer client must learn
    which versions exist), then cluster, then role. Clients must say one of
    `CLIENT_VERSIONS`, peers one of `PEER_VERSIONS` (module docstring).

    Args:
        hello: the validated first frame.
        cluster_id: this node's cluster id.
        role: the role this listener serves ("peer" or "client"), or None for any.

    Returns:
        None if accepted, else an `Error` with request_id 0.
    """
    version = hello.protocol_version
    if hello.role == ROLE_CLIENT and version not in CLIENT_VERSIONS:
        too_old = version < max(CLIENT_VERSIONS)
        advice = "upgrade the client" if too_old else "this server is older than the client"
        return Error(
            0,
            ErrorCode.BAD_VERSION,
            f"client protocol version {version} is not supported (this server speaks "
            f"{', '.join(map(str, CLIENT_VERSIONS))} to clients): {advice}",
            {"supported": list(CLIENT_VERSIONS)},
        )
    if hello.role == ROLE_PEER and version not in PEER_VERSIONS:
        return Error(
            0,
            ErrorCode.BAD_VERSION,
            f"peer protocol version {version} is not supported (this node speaks "
            f"{', '.join(map(str, PEER_VERSIONS))} to peers)",
            {"supported": list(PEER_VERSIONS)},
        )
    # A client that names no cluster asks to be told (HelloOk carries the id);
    # a peer must always name it.
    anonymous_client = hello.cluster_id == "" and hello.role == ROLE_CLIENT
    if hello.cluster_id != cluster_id and not anonymous_client:
        return Error(
            0,
            ErrorCode.WRONG_CLUSTER,
            f"this node belongs to cluster {cluster_id!r}, not {hello.cluster_id!r}",
            {"cluster_id": cluster_id},
        )
    if role is not None and hello.role != role:
        return Error(0, ErrorCode.BAD_REQUEST, f"this endpoint serves {role}s, not {hello.role}s")
    return None


def error_for(exc: PrkdbError, request_id: int | None = None) -> Error:
    """The Error frame reporting `exc` (e.g. a `RemoteProtocolError` from `from_wire`).

    Args:
        exc: any PrkdbError; its code, message and details are copied.
        request_id: the request answered; defaults to ``exc.request_id`` for
            RemoteProtocolError (the id read from the bad message), else 0.
    """
    if request_id is None:
        request_id = getattr(exc, "request_id", 0)
    return Error(request_id, exc.code, exc.message[:4096], dict(exc.details))


def encode_message(
    msg: WireMessage, *, max_frame: int = DEFAULT_MAX_FRAME, check: bool = False
) -> bytes:
    """`to_wire` + `encode_frame`: one complete frame for `msg`.

    The messages sent per operation (`HOT_MESSAGES`, and RaftBatch), scan
    pages (ScanOk) and watch streams (WatchEvents) take the fast encoders
    below unless `check` is set: same bytes, same errors, a fraction of the CPU.
    """
    if not check:
        fast = _FAST_ENCODERS.get(type(msg))
        if fast is not None:
            return fast(msg, max_frame)
    return encode_frame(to_wire(msg, check=check), max_frame=max_frame)


def encode_messages(
    msgs: list[WireMessage], *, max_frame: int = DEFAULT_MAX_FRAME, check: bool = False
) -> bytes:
    """Many messages as back-to-back frames in one buffer (one write)."""
    return encode_frames([to_wire(m, check=check) for m in msgs], max_frame=max_frame)


# --- hot-path encoders -----------------------------------------------------------------
#
# Every client operation sends one request and one reply, and every replication
# round one RaftBatch per peer, so these skip the dataclass -> to_wire list ->
# cbor2 path (which pays a cycle check per array and a schema walk per message).
# The request and reply encoders are generated from the schema table at import
# (`Schema.compile_encoder`): a field is declared once, in `_ALL`, and the
# encoders follow it. Each produces exactly the bytes of the generic path
# (`encode_frame(to_wire(msg))`, tests/wire/test_encoders.py), and takes the
# generic path itself for anything unusual (a value not of the declared type,
# an int past 64 bits), so odd input gets the generic bytes or error.

HOT_MESSAGES: Final = (Get, Put, Delete, GetOk, WriteOk)
"""The messages sent once per client operation, whose encoders and parsers are generated.

`encode_message` takes a generated ``(msg, max_frame)`` encoder for each, and
the function forms below (no message object built) are generated too;
`next_message` reads them with a generated parser.
"""

_Encoder = TypeVar("_Encoder", bound=Callable[..., bytes])


def _generated_from(cls: type) -> Callable[[_Encoder], _Encoder]:
    """Replace the decorated function with the encoder generated from ``SCHEMAS[cls]``.

    The decorated function is only the typed, documented signature: its
    positional parameters must be the message's fields in order (trailing
    fields with a default may be left out and are then that default), then
    the keyword-only ``max_frame``. `Schema.compile_encoder` checks that at
    import and generates the body; the signature's docstring and
    annotations are kept for help() and the docs.
    """

    def generate(signature: _Encoder) -> _Encoder:
        params = inspect.signature(signature).parameters.values()
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        keyword_only = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        if set(keyword_only) != {"max_frame"} or len(positional) + 1 != len(params):
            raise TypeError(f"{signature.__name__}: want (*fields, *, max_frame=...)")
        encoder = SCHEMAS[cls].compile_encoder(
            positional, name=signature.__name__, max_frame=keyword_only["max_frame"]
        )
        for attr in ("__module__", "__qualname__", "__doc__", "__annotations__"):
            setattr(encoder, attr, getattr(signature, attr))
        return cast(_Encoder, encoder)

    return generate


# The bodies below never run: `_generated_from` replaces each function.
_GENERATED = "replaced by the encoder generated from the schema"


@_generated_from(Get)
def encode_get_request(
    request_id: int,
    key: bytes,
    consistency: ReadConsistency | int,
    partition: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``Get(request_id, key, consistency, partition)``.

    Raises:
        LocalProtocolError: as `encode_message` (TOO_LARGE, INTERNAL).
    """
    raise AssertionError(_GENERATED)


@_generated_from(Put)
def encode_put_request(
    request_id: int,
    key: bytes,
    value: bytes,
    client_id: int,
    seq: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``Put(request_id, key, value, client_id, seq)``.

    Raises:
        LocalProtocolError: as `encode_message` (TOO_LARGE, INTERNAL).
    """
    raise AssertionError(_GENERATED)


@_generated_from(Delete)
def encode_delete_request(
    request_id: int,
    key: bytes,
    client_id: int,
    seq: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``Delete(request_id, key, client_id, seq)``.

    Raises:
        LocalProtocolError: as `encode_message` (TOO_LARGE, INTERNAL).
    """
    raise AssertionError(_GENERATED)


@_generated_from(GetOk)
def encode_get_ok(
    request_id: int,
    value: bytes | None,
    version: int,
    mod_revision: int,
    applied_index: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``GetOk(request_id, value, version, mod_revision, applied_index)``.

    Raises:
        LocalProtocolError: as `encode_message` (TOO_LARGE, INTERNAL).
    """
    raise AssertionError(_GENERATED)


@_generated_from(WriteOk)
def encode_write_ok(
    request_id: int,
    succeeded: bool,
    revision: int,
    version: int,
    prev_version: int,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``WriteOk(request_id, succeeded, revision, version, prev_version)``.

    For Put/Delete/Cas replies (``ops`` empty); a Batch reply, which has
    per-op results, goes through `encode_message`.

    Raises:
        LocalProtocolError: as `encode_message` (TOO_LARGE, INTERNAL).
    """
    raise AssertionError(_GENERATED)


_RAFT_BATCH_ID: Final = SCHEMAS[RaftBatch].type_id


def encode_raft_batch(
    from_node: int,
    items: Sequence[tuple[int, Message]],
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> bytes:
    """The frame of ``RaftBatch(from_node, items)``, entries encoded by hand.

    To send the same entries to several peers, use one `RaftBatchEncoder`
    for all of them instead: it encodes each run of entries once.

    Raises:
        LocalProtocolError: a local-only Raft message; TOO_LARGE.
    """
    return _encode_raft_batch(from_node, items, max_frame, _entries_uncached)


def _encode_raft_batch(
    from_node: int,
    items: Sequence[tuple[int, Message]],
    max_frame: int,
    entries_cbor: Callable[[int, tuple[Entry, ...]], bytes],
) -> bytes:
    """`encode_raft_batch` with the entries' bytes from ``entries_cbor(partition, entries)``."""
    encode = raft_codec.encode_message
    pairs = []
    for partition, m in items:
        if m.entries:
            wire = encode(m, entries=PreEncoded(entries_cbor(partition, m.entries)))
        else:
            wire = encode(m)
        pairs.append([partition, wire])
    return encode_frame([_RAFT_BATCH_ID, from_node, pairs], max_frame=max_frame)


@final
class RaftBatchEncoder:
    """Encodes a round of RaftBatch frames, encoding each run of entries once for all peers.

    A leader sends the same new entries to every follower; encoding them is
    most of a RaftBatch's cost, so the second follower's frame reuses the
    first one's entry bytes (2 followers: -35% CPU with 8 entries, -50% with
    64; scripts/bench_hotpath.py). Same bytes as `encode_message` per frame.

    Use one per flush (per event-loop pass), not longer: it keeps the entries
    it encoded alive. A cached run is reused only for an equal run of
    entries (the same objects in practice, so the check is a pointer walk).
    """

    __slots__ = ("_cache", "from_node", "max_frame")

    def __init__(self, from_node: int, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.from_node = from_node
        self.max_frame = max_frame
        # (partition, first index, count) -> (entries, their CBOR array)
        self._cache: dict[tuple[int, int, int], tuple[tuple[Entry, ...], bytes]] = {}

    def encode(self, items: Sequence[tuple[int, Message]]) -> bytes:
        """The frame of ``RaftBatch(from_node, items)``.

        Raises:
            LocalProtocolError: a local-only Raft message; TOO_LARGE.
        """
        return _encode_raft_batch(self.from_node, items, self.max_frame, self._entries_cbor)

    def _entries_cbor(self, partition: int, entries: tuple[Entry, ...]) -> bytes:
        key = (partition, entries[0].index, len(entries))
        hit = self._cache.get(key)
        if hit is not None and (hit[0] is entries or hit[0] == entries):
            return hit[1]
        cbor = raft_codec.encode_entries_cbor(entries)
        self._cache[key] = (entries, cbor)
        return cbor


def _entries_uncached(partition: int, entries: tuple[Entry, ...]) -> bytes:
    return raft_codec.encode_entries_cbor(entries)


def key_values(items: Iterable[ScanItem]) -> tuple[KeyValue, ...]:
    """``tuple(KeyValue(*item) for item in items)`` at 60% of the cost (no validation).

    For a server building a `ScanOk` page from its state machine's scan
    items (1,000 keys: 10.2M -> 6.3M instructions): the frozen dataclass's
    ``__init__`` pays an ``object.__setattr__`` per field, the record's
    builder (`prkdb.wire.schema.frozen_builder`) does not.
    """
    build = _KEY_VALUE.build
    return tuple([build(*item) for item in items])


_SCAN_OK_ID: Final = SCHEMAS[ScanOk].type_id
_KEY_VALUE_FIELDS: Final = operator.attrgetter(*(f.name for f in _KEY_VALUE.fields))
assert [f.name for f in SCHEMAS[ScanOk].fields] == [
    "request_id", "kvs", "count", "more", "applied_index"
], "_encode_scan_ok writes these fields in this order"


def _encode_scan_ok(msg: ScanOk, max_frame: int) -> bytes:
    """The frame of a ScanOk, each KeyValue written from a tuple of its fields.

    cbor2 writes a tuple as the array it writes for a list, so these are the
    generic path's bytes (tests/wire/test_encoders.py), without its list per
    record (a 1,000-key page: 9.2M -> 7.1M instructions, cbor2's 5.5M included).
    """
    kvs = [_KEY_VALUE_FIELDS(kv) for kv in msg.kvs]
    return encode_frame(
        [_SCAN_OK_ID, msg.request_id, kvs, msg.count, msg.more, msg.applied_index],
        max_frame=max_frame,
    )


_WATCH_EVENTS_ID: Final = SCHEMAS[WatchEvents].type_id
_EVENT_FIELDS: Final = operator.attrgetter(*(f.name for f in _EVENT.fields))
assert [f.name for f in SCHEMAS[WatchEvents].fields] == [
    "request_id", "partition", "events", "progress"
], "_encode_watch_events writes these fields in this order"


def _encode_watch_events(msg: WatchEvents, max_frame: int) -> bytes:
    """The frame of a WatchEvents, each Event written from a tuple of its fields.

    The hot stream (every write in a watched range makes one event per
    watcher). As `_encode_scan_ok`: cbor2 writes a tuple as the array of a
    list and an `EventKind` as its int, so these are the generic path's bytes
    (tests/wire/test_encoders.py) without a list and an enum call per event
    (64 events of 100 bytes: 104 -> 76 us). A kind that is not an EventKind
    (a bool would be written as true) takes the generic path.
    """
    events = [_EVENT_FIELDS(ev) for ev in msg.events]
    for fields in events:
        if fields[0].__class__ is not EventKind:  # an int or a bool: the generic int(kind)
            return encode_frame(to_wire(msg), max_frame=max_frame)
    return encode_frame(
        [_WATCH_EVENTS_ID, msg.request_id, msg.partition, events, msg.progress],
        max_frame=max_frame,
    )


_WATCH_EVENTS_HEAD: Final = cbor_head(CBOR_ARRAY, 5) + cbor_head(CBOR_UINT, _WATCH_EVENTS_ID)


def encode_event_list(events: Sequence[Event]) -> bytes | None:
    """The CBOR array of `events` as a WatchEvents frame carries it; None for an odd kind.

    For frames that many watches share (`watch_events_frame`): the server
    encodes a pass's events once per range, not once per watcher.
    """
    fields = [_EVENT_FIELDS(ev) for ev in events]
    for f in fields:
        if f[0].__class__ is not EventKind:
            return None
    return encode_body(fields)


def watch_events_frame(request_id: int, partition: int, event_list: bytes, progress: int,
                       max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The frame of ``WatchEvents(request_id, partition, events, progress)``.

    `event_list` is ``encode_event_list(events)``: the bytes `encode_message`
    writes for the same message (tests/wire/test_encoders.py).

    Raises:
        LocalProtocolError: TOO_LARGE beyond `max_frame`; struct.error for
            a number outside 0..2**64-1 (never from the server's own values).
    """
    return frame_of(_WATCH_EVENTS_HEAD + cbor_head(CBOR_UINT, request_id)
                    + cbor_head(CBOR_UINT, partition) + event_list
                    + cbor_head(CBOR_UINT, progress), max_frame)


_FAST_ENCODERS: Final[dict[type, Callable[[Any, int], bytes]]] = {
    **{
        cls: SCHEMAS[cls].compile_encoder(
            name=f"encode_{cls.__name__}", max_frame=DEFAULT_MAX_FRAME
        )
        for cls in HOT_MESSAGES
    },
    RaftBatch: lambda m, mf: _encode_raft_batch(m.from_node, m.items, mf, _entries_uncached),
    ScanOk: _encode_scan_ok,
    WatchEvents: _encode_watch_events,
}
"""Message type -> encoder ``(msg, max_frame) -> frame``, for `encode_message`."""


# --- reading: generated parsers for the hot messages ------------------------------------
#
# Decoding a small reply the generic way (cbor2 into a list, then the schema
# walk of `from_wire`) costs more than the rest of a client call's Python. The
# hot messages get a parser generated from their schema (`Schema.compile_decoder`)
# that reads the frame body's bytes straight into the message, and answers
# None for anything it does not read, which then takes the generic path: the
# same message or the same error either way (tests/wire/test_decoders.py).


def _hot_head(schema: Schema) -> bytes:
    """The bytes every body of `schema`'s message starts with: array head and type id."""
    return cbor_head(CBOR_ARRAY, len(schema.fields) + 1) + cbor_head(CBOR_UINT, schema.type_id)


_HOT_PARSERS: Final[dict[bytes, Callable[[bytes], Any]]] = {
    _hot_head(SCHEMAS[cls]): SCHEMAS[cls].compile_decoder(name=f"parse_{cls.__name__}")
    for cls in HOT_MESSAGES
}
"""Body head (`_hot_head`) -> that message's generated parser."""
# A type id below 24 is in the byte after the array head; 24..255 in the one
# after a 0x18 byte (what `_parse_hot` looks at).
assert all(len(head) in (2, 3) for head in _HOT_PARSERS), "hot type ids must be below 256"


_EVENT_KIND_OF: Final = {int(k): k for k in EventKind}


def _parse_watch_events(body: bytes) -> WatchEvents | None:
    """A WatchEvents frame body read by hand (a watcher reads one per event or so).

    cbor2 decodes the body; the checks are `from_wire`'s for this schema
    (types, ranges, `_check_watch_events`), and anything they would not pass
    as is (a bool for an int, a tag, a bad field) answers None: the generic
    path then gives the same message or the same error (tests/wire/test_decoders.py).
    1 event: 9 -> 4 us.
    """
    try:
        obj = decode_body(body)  # the untrusted-input rules of the generic path
    except RemoteProtocolError:  # the generic path raises it again, naming the problem
        return None
    if obj.__class__ is not list or len(obj) != 5:
        return None
    type_id, rid, partition, raw, progress = obj
    if (type_id.__class__ is not int or type_id != _WATCH_EVENTS_ID
            or rid.__class__ is not int or partition.__class__ is not int
            or progress.__class__ is not int or raw.__class__ is not list
            or not 1 <= rid <= U64_MAX or not 0 <= partition <= U32_MAX
            or not 0 <= progress <= U64_MAX):
        return None
    kinds = _EVENT_KIND_OF
    rows = []
    last = 0
    for row in raw:
        if row.__class__ is not list or len(row) != 5:
            return None
        kind, key, rev, value, prev = row
        k = kinds.get(kind) if kind.__class__ is int else None
        if (k is None or key.__class__ is not bytes or not key or rev.__class__ is not int
                or not last <= rev <= U64_MAX or rev < 1
                or (value is not None and value.__class__ is not bytes)
                or (prev is not None and prev.__class__ is not bytes)
                or (value is not None) != (k is EventKind.PUT)):
            return None
        last = rev
        rows.append((k, key, rev, value, prev, 0))  # an EventRecord (size unused)
    if last > progress:
        return None
    return WatchEvents(rid, partition, tuple(events_from_records(rows)), progress)


_HOT_PARSERS[_hot_head(SCHEMAS[WatchEvents])] = _parse_watch_events


def _parse_hot(body: bytes) -> WireMessage | None:
    """A hot message read by its generated parser, or None (not one, or not read)."""
    parse = _HOT_PARSERS.get(body[:3] if body[1] == 0x18 else body[:2]) if len(body) > 1 else None
    return None if parse is None else parse(body)


# What `next_message` hands back without `from_wire`: parsed messages and the sentinels.
_PASSED: Final = frozenset({*HOT_MESSAGES, WatchEvents, type(NEED_DATA)})


def next_message(decoder: FrameDecoder) -> Any:
    """``from_wire(decoder.next_frame())``, faster for the hot messages; sentinels as they are.

    Returns:
        The next validated message, `NEED_DATA` or `CLOSED`.

    Raises:
        RemoteProtocolError: what `FrameDecoder.next_frame` raises (and the
            decoder is then in ERROR), or what `from_wire` raises (the
            decoder stays OPEN: the owner closes the connection).
    """
    item = decoder.next_frame(_parse_hot)
    if item.__class__ in _PASSED:
        return item
    return from_wire(item)
