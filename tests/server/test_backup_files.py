"""`BackupFiles`: a handed-out snapshot file stays readable until its hold expires."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from prkdb.errors import InternalError, InvalidRequest
from prkdb.raft.types import ConfState, Snapshot, SnapshotMeta
from prkdb.server.backup import BackupFiles
from prkdb.storage import SnapshotStore


def save(store: SnapshotStore, index: int, data: bytes = b"x" * 5000) -> Path:
    return store.save(0, Snapshot(SnapshotMeta(index, 2, ConfState((1, 2, 3))), data))


async def read_all(files: BackupFiles, index: int, chunk: int = 777) -> bytes:
    out, offset = b"", 0
    while True:
        data, size = await files.read(0, index, 2, offset, chunk)
        out += data
        offset += len(data)
        if offset >= size:
            assert data or offset == size
            return out


async def test_held_file_survives_retention(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=1)
    raw = save(store, 5).read_bytes()
    files = BackupFiles(store)
    held = await files.hold(0, 5)
    assert held is not None
    assert (held.index, held.term, held.size) == (5, 2, len(raw))
    assert held.sha256 == hashlib.sha256(raw).digest()
    save(store, 9, b"newer")  # retain=1: the file at 5 is deleted
    assert [f.index for f in store.list(0)] == [9]
    assert await read_all(files, 5) == raw
    # Past the end: nothing, and the size.
    assert await files.read(0, 5, 2, len(raw) + 10, 100) == (b"", len(raw))


async def test_a_file_gone_from_disk_and_not_held_is_backup_gone(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=1)
    save(store, 5)
    save(store, 9)
    files = BackupFiles(store)  # e.g. the node restarted since BackupBegin
    assert await files.hold(0, 5) is None
    with pytest.raises(InvalidRequest) as info:
        await files.read(0, 5, 2, 0, 100)
    assert info.value.details["backup_gone"] is True
    assert "start this partition's backup over" in info.value.message
    # A file still on disk is reopened for a reader that lost its hold.
    raw = (tmp_path / "p0" / f"{9:020d}-{2:020d}.snap").read_bytes()
    assert await read_all(files, 9) == raw


async def test_hold_expires_after_idle_time(tmp_path: Path, autojump_clock: trio.abc.Clock
                                            ) -> None:
    store = SnapshotStore(tmp_path, retain=1)
    save(store, 5)
    files = BackupFiles(store, hold_s=60)
    assert await files.hold(0, 5) is not None
    await trio.sleep(30)
    await files.read(0, 5, 2, 0, 10)  # a read renews the hold
    await trio.sleep(50)
    files.expire()
    assert len(files) == 1
    await trio.sleep(20)
    files.expire()
    assert len(files) == 0


async def test_a_damaged_snapshot_file_is_not_handed_out(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = save(store, 5)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(InternalError, match="CRC mismatch"):
        await BackupFiles(store).hold(0, 5)
