"""Snapshot files: round trip, corruption fallback, retention, and WAL interplay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prkdb.raft.types import ConfState, Entry, Snapshot, SnapshotMeta
from prkdb.storage import SnapshotCorruptionError, SnapshotStore, WriteAheadLog
from tests.storage.helpers import RecordingLogger, flip_bit


def snap(index: int, term: int = 1, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState((3, 1, 2))), data)


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    s = snap(10, 2, b"x" * 1000)
    path = store.save(4, s)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert store.load_latest(4) == s
    assert store.load_latest(5) is None
    assert [f.index for f in store.list(4)] == [10]


def test_corrupt_newest_falls_back_and_is_logged(tmp_path: Path) -> None:
    log = RecordingLogger()
    store = SnapshotStore(tmp_path, logger=log)
    store.save(1, snap(10))
    newest = store.save(1, snap(20))
    flip_bit(newest, newest.stat().st_size - 6)  # in the data
    with pytest.raises(SnapshotCorruptionError, match="crc"):
        store.load(newest)
    assert store.load_latest(1) == snap(10)
    (warn,) = log.named("snapshot_corrupt_skipped")
    assert warn["file"] == str(newest)


def test_truncated_snapshot_is_rejected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.save(1, snap(5))
    path.write_bytes(path.read_bytes()[:-3])
    assert store.load_latest(1) is None


def test_retention_keeps_newest_two_and_safe_release(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(1, snap(10))
    assert store.safe_release_index(1) == 0  # no fallback yet: release nothing
    for i in (20, 30, 40):
        store.save(1, snap(i))
    assert [f.index for f in store.list(1)] == [40, 30]
    assert store.safe_release_index(1) == 30


def apply(state: dict[str, str], entries: list[Entry]) -> dict[str, str]:
    for e in entries:
        k, v = e.data.decode().split("=")
        state[k] = v
    return state


def test_snapshot_plus_wal_equals_full_replay(tmp_path: Path) -> None:
    """Recovering from snapshot + WAL gives what replaying all entries gives,
    also when the newest snapshot is corrupt and we fall back on the older."""
    all_entries = [Entry(1, i, data=f"k{i % 7}={i}".encode()) for i in range(1, 501)]
    store = SnapshotStore(tmp_path / "snap")
    with WriteAheadLog.open(tmp_path / "wal", segment_size=4096) as wal:
        for i in range(0, 500, 10):
            wal.append_entries(0, all_entries[i : i + 10])
            applied = i + 10
            if applied in (200, 400):
                state = apply({}, all_entries[:applied])
                s = Snapshot(SnapshotMeta(applied, 1), json.dumps(state).encode())
                store.save(0, s)
                wal.append_snapshot_marker(0, s.meta)
                wal.sync()
                wal.release(0, store.safe_release_index(0))
        assert store.safe_release_index(0) == 200
    expected = apply({}, all_entries)

    def recover() -> dict[str, str]:
        with WriteAheadLog.open(tmp_path / "wal", segment_size=4096) as wal:
            plog = wal.recovered()[0]
            s = store.load_latest(0)
            assert s is not None
            entries = plog.entries_after(s.meta.index)
            assert entries is not None
            return apply(json.loads(s.data), entries)

    assert recover() == expected
    newest = store.list(0)[0].path
    flip_bit(newest, 30)
    assert recover() == expected  # from the snapshot at 200 plus WAL 201..500
