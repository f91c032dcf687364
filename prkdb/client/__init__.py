"""The PrkDB client SDK: `PrkDbClient` for trio programs, `SyncClient` for scripts.

```python
from prkdb.client import PrkDbClient, ReadConsistency

async with PrkDbClient.connect(["127.0.0.1:8080"]) as client:
    await client.put(b"k", b"v")
    value = await client.get(b"k")                       # linearizable
    nearby = await client.get_with_consistency(b"k", ReadConsistency.FOLLOWER)
```

See docs/client.md for routing, retries, and how exactly-once writes work.
"""

from prkdb.client.client import (
    BACKUP_CHUNK,
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_TIMEOUT,
    UNSET,
    BackupFailed,
    GetResult,
    PrkDbClient,
    WriteResult,
)
from prkdb.client.sync import SyncClient
from prkdb.errors import (
    ErrorCode,
    InternalError,
    InvalidRequest,
    NotLeader,
    OutcomeUnknown,
    PrkdbError,
    ProtocolError,
    Timeout,
    TooLarge,
    Unavailable,
    WrongCluster,
)
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BatchOp,
    OpKind,
    OpResult,
    ReadConsistency,
    StatusOk,
)

__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "UNSET",
    "AdminOk",
    "BackupBeginOk",
    "BackupFailed",
    "BatchOp",
    "ErrorCode",
    "GetResult",
    "InternalError",
    "InvalidRequest",
    "NotLeader",
    "OpKind",
    "OpResult",
    "OutcomeUnknown",
    "PrkDbClient",
    "PrkdbError",
    "ProtocolError",
    "ReadConsistency",
    "StatusOk",
    "SyncClient",
    "Timeout",
    "TooLarge",
    "Unavailable",
    "WriteResult",
    "WrongCluster",
]
