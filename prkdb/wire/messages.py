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
2. Clients send requests (`REQUEST_TYPES`), each with a request_id >= 1
   unique among its in-flight requests on the connection. Every request gets
   exactly one response (`RESPONSE_TYPES`, or `Error`) with the same
   request_id; responses may come in any order.
3. Peers send `RaftBatch` frames, one-way, in both directions.
4. An `Error` with request_id 0 is about the connection (bad frame, bad
   hello); the sender closes the connection after it.

Type ids are append-only; a message's field list never changes within a
protocol version. Validation happens on decode (`from_wire`); `to_wire`
trusts its input unless ``check=True``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, final

from prkdb.errors import ErrorCode, PrkdbError
from prkdb.raft.types import Message, Role
from prkdb.wire import raft_codec
from prkdb.wire.errors import LocalProtocolError, RemoteProtocolError
from prkdb.wire.frames import DEFAULT_MAX_FRAME, encode_frame, encode_frames
from prkdb.wire.schema import (
    U32_MAX,
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
    "PROTOCOL_VERSION",
    "RECORDS",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "ROLE_CLIENT",
    "ROLE_PEER",
    "SCHEMAS",
    "SCHEMAS_BY_ID",
    "SUPPORTED_VERSIONS",
    "AdminOk",
    "Batch",
    "BatchOp",
    "Cas",
    "Delete",
    "Error",
    "Get",
    "GetOk",
    "Hello",
    "HelloOk",
    "NodeInfo",
    "OpKind",
    "OpResult",
    "PartitionStatus",
    "Put",
    "RaftBatch",
    "ReadConsistency",
    "ReplicaProgress",
    "Snapshot",
    "Status",
    "StatusOk",
    "TransferLeader",
    "WireMessage",
    "WriteOk",
    "check_hello",
    "encode_message",
    "encode_messages",
    "error_for",
    "from_wire",
    "to_wire",
]

PROTOCOL_VERSION: Final = 1
"""The version this code speaks (Hello.protocol_version)."""

SUPPORTED_VERSIONS: Final = (1,)
"""Versions an acceptor accepts; sent in BAD_VERSION details as "supported"."""

ROLE_PEER: Final = "peer"
ROLE_CLIENT: Final = "client"


class ReadConsistency(enum.IntEnum):
    """How fresh a Get must be (DESIGN: reads)."""

    LINEARIZABLE = 0  # leader, after a ReadIndex round: sees every acknowledged write
    FOLLOWER = 1  # any replica, after a ReadIndex from the leader: also linearizable
    STALE = 2  # any replica, local state now; GetOk.applied_index says how old


class OpKind(enum.IntEnum):
    """Operation kinds inside a `Batch`."""

    PUT = 0
    DELETE = 1


# --- handshake -----------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection, from the connecting side."""

    protocol_version: int
    cluster_id: str
    role: Literal["peer", "client"]
    node_id: int  # the sender's node id for peers; 0 for clients


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
    request_id: int
    node_id: int
    cluster_id: str
    nodes: tuple[NodeInfo, ...]
    partitions: tuple[PartitionStatus, ...]
    server_version: str = ""


@final
@dataclass(frozen=True, slots=True)
class AdminOk:
    """Success of TransferLeader / Snapshot; details are informational."""

    request_id: int
    details: dict[str, Any] = field(default_factory=dict)


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
    | TransferLeader
    | Snapshot
    | GetOk
    | WriteOk
    | StatusOk
    | AdminOk
    | RaftBatch
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

#: Nested records, for docs/protocol.md.
RECORDS: Final = (_BATCH_OP, _OP_RESULT, _NODE_INFO, _PARTITION_STATUS, _REPLICA_PROGRESS)

_ALL = (
    Schema(
        Hello,
        1,
        (
            Field("protocol_version", _U32, f"this document describes {PROTOCOL_VERSION}"),
            Field("cluster_id", Text(max_len=255), "must match the acceptor's cluster id"),
            Field("role", Text(choices=(ROLE_PEER, ROLE_CLIENT)), "who is connecting"),
            Field("node_id", _U64, "peers: own node id (>= 1); clients: 0"),
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
        ),
    ),
    Schema(AdminOk, 33, (_rid("the admin request's id"), Field("details", Details(), "extras"))),
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

REQUEST_TYPES: Final = frozenset({Get, Put, Delete, Cas, Batch, Status, TransferLeader, Snapshot})
"""Messages a client may send after Hello; each gets one response."""
RESPONSE_TYPES: Final = frozenset({GetOk, WriteOk, StatusOk, AdminOk, Error})
"""Messages a server sends to clients after HelloOk."""


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
    which versions exist), then cluster, then role.

    Args:
        hello: the validated first frame.
        cluster_id: this node's cluster id.
        role: the role this listener serves ("peer" or "client"), or None for any.

    Returns:
        None if accepted, else an `Error` with request_id 0.
    """
    if hello.protocol_version not in SUPPORTED_VERSIONS:
        return Error(
            0,
            ErrorCode.BAD_VERSION,
            f"protocol version {hello.protocol_version} is not supported",
            {"supported": list(SUPPORTED_VERSIONS)},
        )
    if hello.cluster_id != cluster_id:
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
    """`to_wire` + `encode_frame`: one complete frame for `msg`."""
    return encode_frame(to_wire(msg, check=check), max_frame=max_frame)


def encode_messages(
    msgs: list[WireMessage], *, max_frame: int = DEFAULT_MAX_FRAME, check: bool = False
) -> bytes:
    """Many messages as back-to-back frames in one buffer (one write)."""
    return encode_frames([to_wire(m, check=check) for m in msgs], max_frame=max_frame)
