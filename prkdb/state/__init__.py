"""prkdb.state — the replicated state machine of one partition.

Pure and deterministic: no clock, no I/O, no trio. The partition driver
applies committed Raft entries to a :class:`KVStateMachine`, one per
partition, and the server encodes client writes with :func:`encode_command`
after checking them with :func:`validate_command`.

Modules: ``commands`` (command types, log encoding), ``results`` (results,
version/revision rules), ``limits`` (size limits, validation), ``sessions``
(exactly-once table), ``kv`` (the machine), ``errors``.
"""

from prkdb.state.commands import (
    UNCHECKED,
    BatchCommand,
    BatchOp,
    ClientId,
    Command,
    CompareAndSetCommand,
    DeleteCommand,
    OpTag,
    PutCommand,
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
from prkdb.state.kv import (
    SNAPSHOT_FORMAT,
    DecodedSnapshot,
    KeyRecord,
    KVStateMachine,
    ScanItem,
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
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_SESSION_TTL_ENTRIES",
    "SNAPSHOT_FORMAT",
    "UNCHECKED",
    "BatchCommand",
    "BatchOp",
    "ClientId",
    "Command",
    "CommandDecodeError",
    "CompareAndSetCommand",
    "DecodedSnapshot",
    "DeleteCommand",
    "InvalidCommand",
    "KVStateMachine",
    "KeyRecord",
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
    "Unchecked",
    "Violation",
    "WriteResult",
    "check_command",
    "decode_command",
    "encode_command",
    "prefix_end",
    "validate_command",
]
