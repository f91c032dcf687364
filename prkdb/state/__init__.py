"""prkdb.state — the replicated state machine of one partition.

Pure and deterministic: no clock, no I/O, no trio. The partition driver
applies committed Raft entries to a :class:`KVStateMachine`, one per
partition, and the server encodes client writes with :func:`encode_command`
after checking them with :func:`validate_command`. Besides puts, deletes,
CAS and batches the machine applies transactions (compares + two branches of
put/delete/get ops) and leases (grant, revoke/expire; keys attached to a
lease are deleted with it); see kv.py for the state and its invariants.
Every change also yields an :class:`Event` into the machine's bounded
:class:`EventLog` (``machine.events``), which serves watches (events.py).

Partition 0's machine also holds the cluster's users, roles and token secret
(``auth``: an :class:`~prkdb.state.auth.AuthStore`, changed by its own commands).

Modules: ``commands`` (command types, log encoding), ``results`` (results,
version/revision rules), ``limits`` (size limits, validation), ``sessions``
(exactly-once table), ``events`` (change events, history), ``auth`` (users,
roles, their commands), ``kv`` (the machine), ``errors``.
"""

from prkdb.state.commands import (
    UNCHECKED,
    BatchCommand,
    BatchOp,
    ClientId,
    Command,
    Compare,
    CompareAndSetCommand,
    CompareOp,
    CompareTarget,
    DeleteCommand,
    GetOp,
    LeaseGrantCommand,
    LeaseRevokeCommand,
    OpTag,
    PutCommand,
    TxnCommand,
    TxnOp,
    Unchecked,
    decode_command,
    encode_command,
)
from prkdb.state.errors import (
    CommandDecodeError,
    InvalidCommand,
    SnapshotDecodeError,
    StateError,
    StateInvariantError,
)
from prkdb.state.events import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_EVENTS,
    EVENT_OVERHEAD,
    Compacted,
    Event,
    EventKind,
    EventLog,
    EventRecord,
)
from prkdb.state.kv import (
    LEASE_PARTITION_BITS,
    SNAPSHOT_FORMAT,
    DecodedSnapshot,
    KeyRecord,
    KVStateMachine,
    ScanItem,
    lease_partition,
    prefix_end,
)
from prkdb.state.limits import DEFAULT_LIMITS, Limits, Violation, check_command, validate_command
from prkdb.state.results import OpResult, ResultCode, WriteResult
from prkdb.state.sessions import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_ENTRIES,
    SessionTable,
)

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_EVENTS",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_SESSION_TTL_ENTRIES",
    "EVENT_OVERHEAD",
    "LEASE_PARTITION_BITS",
    "SNAPSHOT_FORMAT",
    "UNCHECKED",
    "BatchCommand",
    "BatchOp",
    "ClientId",
    "Command",
    "CommandDecodeError",
    "Compacted",
    "Compare",
    "CompareAndSetCommand",
    "CompareOp",
    "CompareTarget",
    "DecodedSnapshot",
    "DeleteCommand",
    "Event",
    "EventKind",
    "EventLog",
    "EventRecord",
    "GetOp",
    "InvalidCommand",
    "KVStateMachine",
    "KeyRecord",
    "LeaseGrantCommand",
    "LeaseRevokeCommand",
    "Limits",
    "OpResult",
    "OpTag",
    "PutCommand",
    "ResultCode",
    "ScanItem",
    "SessionTable",
    "SnapshotDecodeError",
    "StateError",
    "StateInvariantError",
    "TxnCommand",
    "TxnOp",
    "Unchecked",
    "Violation",
    "WriteResult",
    "check_command",
    "decode_command",
    "encode_command",
    "lease_partition",
    "prefix_end",
    "validate_command",
]
