"""Serving online backups: `BackupBegin` picks a snapshot file, `BackupRead` streams it.

Theory of operation
-------------------
`BackupBegin(partition)` goes to the partition's leader. The leader runs one
ReadIndex round (the path of a linearizable read: leadership confirmed by a
heartbeat round, then wait until applied >= the commit index as of the
request), so every write acknowledged before the request is applied here.
Then it asks the partition for a snapshot (`PartitionDriver.snapshot_now`:
a new one at the applied index, or the last one if nothing was applied since
it, which is then >= that index too) and answers the file's index, term,
size and SHA-256.

The file is immutable, but retention (snapshots.py keeps the newest 2) may
delete it while the client reads. So `BackupFiles` keeps every handed-out
file open (an open descriptor keeps an unlinked file's bytes) until nobody
read it for `HOLD_S` seconds; `BackupRead` reads from that descriptor with
``pread``. A read for a file no longer held (the node restarted, or the
hold expired) opens it from disk if it still exists, else answers
BAD_REQUEST with ``backup_gone: true``: the client starts that partition
over with a new BackupBegin.

Invariant: a held file's bytes never change (snapshot files are written to a
temp name and renamed into place, never rewritten), so chunks read at
different times belong to one file and its SHA-256 stays valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from prkdb.backupfile import BackupFileError, verify_snapshot_stream
from prkdb.errors import InternalError, InvalidRequest
from prkdb.storage import SnapshotStore

HOLD_S = 300.0  # seconds a handed-out snapshot file stays open after its last read


@dataclass
class HeldSnapshot:
    partition: int
    index: int
    term: int
    fd: int
    size: int
    sha256: bytes
    last_used: float
    readers: int = 0


class BackupFiles:
    """Snapshot files handed out to backups, held open (module docstring).

    Owned by the node's client service; every method runs in the trio
    thread, file I/O in worker threads.
    """

    def __init__(self, store: SnapshotStore, *, hold_s: float = HOLD_S) -> None:
        self.store = store
        self.hold_s = hold_s
        self._held: dict[tuple[int, int, int], HeldSnapshot] = {}

    async def hold(self, partition: int, index: int) -> HeldSnapshot | None:
        """Open (or reuse) the partition's snapshot file at `index`; None if it is gone.

        Verifies the file's own CRC while computing its SHA-256, so a node
        never hands out a snapshot file its disk damaged.

        Raises:
            InternalError: the file exists but fails its checks.
        """
        self.expire()
        for f in self.store.list(partition):
            if f.index != index:
                continue
            key = (partition, f.index, f.term)
            held = self._held.get(key)
            if held is not None:
                held.last_used = trio.current_time()
                return held
            try:
                fd = await trio.to_thread.run_sync(os.open, f.path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # retention took it just now
            try:
                size, sha = await trio.to_thread.run_sync(_checksum, fd, str(f.path))
            except BaseException:
                os.close(fd)
                raise
            held = self._held.get(key)  # another task may have opened it meanwhile
            if held is not None:
                os.close(fd)
            else:
                held = self._held[key] = HeldSnapshot(partition, f.index, f.term, fd, size,
                                                      sha, trio.current_time())
            return held
        return None

    async def read(self, partition: int, index: int, term: int, offset: int,
                   length: int) -> tuple[bytes, int]:
        """Bytes [offset, offset+length) of a handed-out file (fewer at its end), and its size.

        Raises:
            InvalidRequest: the file is no longer on this node (details
                ``backup_gone``: start the partition over with BackupBegin).
        """
        self.expire()
        key = (partition, index, term)
        held = self._held.get(key)
        if held is None:
            held = await self._reopen(partition, index, term)
        held.readers += 1
        held.last_used = trio.current_time()
        try:
            if offset >= held.size:
                return b"", held.size
            n = min(length, held.size - offset)
            data = await trio.to_thread.run_sync(os.pread, held.fd, n, offset)
        finally:
            held.readers -= 1
            held.last_used = trio.current_time()
        return data, held.size

    async def _reopen(self, partition: int, index: int, term: int) -> HeldSnapshot:
        for f in self.store.list(partition):
            if (f.index, f.term) == (index, term):
                held = await self.hold(partition, index)
                if held is not None and held.term == term:
                    return held
        raise InvalidRequest(
            f"partition {partition}: snapshot {index}-{term} is no longer on this node "
            f"(restarted, or replaced by newer snapshots); start this partition's backup over",
            details={"backup_gone": True, "partition": partition},
        )

    def expire(self) -> None:
        """Close the files nobody read for `hold_s` seconds."""
        now = trio.current_time()
        for key, held in list(self._held.items()):
            if held.readers == 0 and now - held.last_used > self.hold_s:
                del self._held[key]
                os.close(held.fd)

    def close(self) -> None:
        for held in self._held.values():
            os.close(held.fd)
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)


class _FdReader:
    """A sequential reader over an fd with pread (leaves the fd's offset alone)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def read(self, n: int) -> bytes:
        out = []
        while n > 0:
            chunk = os.pread(self.fd, n, self.pos)
            if not chunk:
                break
            out.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        return b"".join(out)


def _checksum(fd: int, name: str) -> tuple[int, bytes]:
    size = os.fstat(fd).st_size
    try:
        # _FdReader has the one method the check calls (read), not all of IO[bytes].
        info = verify_snapshot_stream(_FdReader(fd), size, name)  # type: ignore[arg-type]
    except BackupFileError as e:
        raise InternalError(f"this node's snapshot file fails its checks: {e}") from None
    return size, bytes.fromhex(info.sha256)


def describe(held: HeldSnapshot) -> dict[str, object]:
    """For logs."""
    return {"partition": held.partition, "index": held.index, "term": held.term,
            "bytes": held.size}
