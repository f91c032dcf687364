"""Durable storage of a node: the shared WAL and per-partition snapshot files.

Stdlib only (plus `prkdb.raft.types` and `prkdb.raft.logger`, whose `Logger`
protocol is re-exported here for callers that pass one); synchronous APIs
that the daemon calls from its event loop (appends) and worker threads (sync,
snapshot saves).
See docs/storage.md.
"""

from prkdb.raft.logger import Logger
from prkdb.storage.errors import (
    InvalidAppendError,
    SnapshotCorruptionError,
    StorageError,
    WalClosedError,
    WalCorruptionError,
)
from prkdb.storage.recovery import DumpedRecord, PartitionLog, Problem, VerifyReport, dump, verify
from prkdb.storage.snapshots import SnapshotStore
from prkdb.storage.wal import WriteAheadLog

__all__ = [
    "DumpedRecord",
    "InvalidAppendError",
    "Logger",
    "PartitionLog",
    "Problem",
    "SnapshotCorruptionError",
    "SnapshotStore",
    "StorageError",
    "VerifyReport",
    "WalClosedError",
    "WalCorruptionError",
    "WriteAheadLog",
    "dump",
    "verify",
]
