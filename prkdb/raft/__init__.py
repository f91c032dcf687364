"""The sans-IO Raft core: stdlib only, driven by `RawNode` (see rawnode.py)."""

from prkdb.raft.config import RaftConfig
from prkdb.raft.core import COMMIT_ONLY
from prkdb.raft.errors import (
    Compacted,
    ConfigError,
    EntriesUnavailable,
    NotLeaderError,
    ProposalDropped,
    RaftError,
    RaftInvariantError,
)
from prkdb.raft.rawnode import PeerStatus, RaftStatus, RawNode
from prkdb.raft.ready import Ready
from prkdb.raft.storage import MemoryStorage, Storage
from prkdb.raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "COMMIT_ONLY",
    "NONE",
    "Compacted",
    "ConfState",
    "ConfigError",
    "EntriesUnavailable",
    "Entry",
    "EntryKind",
    "HardState",
    "MemoryStorage",
    "Message",
    "MsgType",
    "NotLeaderError",
    "PeerStatus",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftInvariantError",
    "RaftStatus",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Storage",
]
