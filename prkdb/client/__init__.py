"""The PrkDB client SDK: one core, three front ends.

- `PrkDbClient` for trio programs,
- `AsyncClient` (also `prkdb.client.aio`) for asyncio programs,
- `SyncClient` for threads and scripts (blocking sockets, no event loop).

```python
from prkdb.client import PrkDbClient, ReadConsistency

async with PrkDbClient.connect(["127.0.0.1:8080"]) as client:
    await client.put(b"k", b"v")
    value = await client.get(b"k")                       # linearizable
    nearby = await client.get_with_consistency(b"k", ReadConsistency.FOLLOWER)
    items = await client.scan(b"app/")                    # every partition, in key order
```

Watches (``client.watch(b"app/")``, prkdb.client.watch), transactions
(prkdb.client.txn), leases (``client.lease(ttl)``, kept
alive in the background) and the `Lock` / `Election` recipes
(prkdb.client.recipes) are in docs/client.md.

The three share routing, retries, deadlines and exactly-once sessions
(prkdb.client.core) and have the same methods and errors. Each front end is
imported on first use, so a program using `SyncClient` or `AsyncClient`
never imports trio. See docs/client.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prkdb.client.core import BACKUP_CHUNK, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_TIMEOUT
from prkdb.client.results import (
    UNSET,
    BackupFailed,
    GetResult,
    KeyValue,
    Lease,
    LeaseStatus,
    ScanPage,
    TxnOpResult,
    TxnResult,
    WatchEvent,
    WriteResult,
)
from prkdb.client.security import Credentials
from prkdb.client.txn import Compare, absent, exists
from prkdb.client.watch import WatchCursor
from prkdb.errors import (
    AuthFailed,
    Compacted,
    ErrorCode,
    InternalError,
    InvalidRequest,
    LeaseNotFound,
    NotLeader,
    OutcomeUnknown,
    PermissionDenied,
    PrkdbError,
    ProtocolError,
    Timeout,
    TooLarge,
    TooManyLeases,
    Unauthenticated,
    Unavailable,
    WatchOverflow,
    WrongCluster,
)
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BatchOp,
    EventKind,
    OpKind,
    OpResult,
    ReadConsistency,
    StatusOk,
)

if TYPE_CHECKING:
    from prkdb.client.aio import AsyncClient
    from prkdb.client.client import PrkDbClient
    from prkdb.client.recipes import Election, Lock
    from prkdb.client.sync import SyncClient

_FRONT_ENDS = {
    "PrkDbClient": "prkdb.client.client",
    "AsyncClient": "prkdb.client.aio",
    "SyncClient": "prkdb.client.sync",
    "Lock": "prkdb.client.recipes",
    "Election": "prkdb.client.recipes",
}


def __getattr__(name: str) -> Any:
    module = _FRONT_ENDS.get(name)
    if module is None:
        raise AttributeError(f"module 'prkdb.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "UNSET",
    "AdminOk",
    "AsyncClient",
    "AuthFailed",
    "BackupBeginOk",
    "BackupFailed",
    "BatchOp",
    "Compacted",
    "Compare",
    "Credentials",
    "Election",
    "ErrorCode",
    "EventKind",
    "GetResult",
    "InternalError",
    "InvalidRequest",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "LeaseStatus",
    "Lock",
    "NotLeader",
    "OpKind",
    "OpResult",
    "OutcomeUnknown",
    "PermissionDenied",
    "PrkDbClient",
    "PrkdbError",
    "ProtocolError",
    "ReadConsistency",
    "ScanPage",
    "StatusOk",
    "SyncClient",
    "Timeout",
    "TooLarge",
    "TooManyLeases",
    "TxnOpResult",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
    "WatchCursor",
    "WatchEvent",
    "WatchOverflow",
    "WriteResult",
    "WrongCluster",
    "absent",
    "exists",
]
