"""Per-partition snapshot files: atomic, checksummed, the newest N retained.

Theory of operation
-------------------
``<dir>/p<partition>/<index:020d>-<term:020d>.snap`` holds one snapshot::

    0  8s  magic b"PRKSNAP1"
    8  u32 version (2; version 1 files, without the data dir id, are read)
    12 u32 partition
    16 u64 index
    24 u64 term
    32 u64 data length
    40 u32 number of voters n
    44 16s data dir id (version 2 only; zeros: none given)
    60 n * u64 voters
    .. data
    .. u32 crc32 of everything before it

A store that knows its data dir's id (identity.py) refuses, as corrupt, a
file stamped with another one: a snapshot copied from another node or data
dir would otherwise be loaded and silently replace this node's state.

`save` writes a temp file, fsyncs it, renames it into place and fsyncs the
directory, so a crash leaves either the old set of files or the new one
(stale ``.tmp`` files are removed on the next save). `load_latest` tries the
newest first and falls back to older ones when a file fails its checks.

Retention keeps the newest `retain` (default 2) files. Falling back to an
older snapshot needs the WAL entries after it, so the caller must release the
WAL only up to the OLDEST retained snapshot: `safe_release_index(p)`. Use it
like this::

    path = store.save(p, snap)            # 1. snapshot durable
    wal.append_snapshot_marker(p, snap.meta); wal.sync()   # 2. marker durable
    wal.release(p, store.safe_release_index(p))            # 3. WAL may shrink

At recovery, if `load_latest` returns a snapshot older than the WAL's marker,
take the entries from `PartitionLog.entries_after(snapshot.meta.index)`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prkdb.raft.logger import NULL_LOGGER, Logger
from prkdb.raft.types import ConfState, Snapshot, SnapshotMeta
from prkdb.storage.errors import SnapshotCorruptionError
from prkdb.storage.segment import fsync_dir

MAGIC = b"PRKSNAP1"
VERSION = 2
_HEAD = struct.Struct("<8sIIQQQI16s")
_HEAD_V1 = struct.Struct("<8sIIQQQI")
NO_DIR_ID = bytes(16)


@dataclass(frozen=True)
class SnapshotHead:
    """A snapshot file's decoded header; `size` = header bytes before the voters."""

    version: int
    partition: int
    index: int
    term: int
    data_length: int
    n_voters: int
    dir_id: bytes
    size: int


def parse_head(buf: bytes) -> SnapshotHead | None:
    """The header at the start of `buf` (versions 1 and 2), or None if it is not one."""
    if len(buf) < _HEAD_V1.size or buf[:8] != MAGIC:
        return None
    (version,) = struct.unpack_from("<I", buf, 8)
    if version == 1:
        _, _, part, index, term, dlen, n = _HEAD_V1.unpack_from(buf, 0)
        return SnapshotHead(1, part, index, term, dlen, n, NO_DIR_ID, _HEAD_V1.size)
    if version != VERSION or len(buf) < _HEAD.size:
        return None
    _, _, part, index, term, dlen, n, dir_id = _HEAD.unpack_from(buf, 0)
    return SnapshotHead(VERSION, part, index, term, dlen, n, bytes(dir_id), _HEAD.size)
_CRC = struct.Struct("<I")
_SUFFIX = ".snap"


@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot file as named on disk (not yet verified)."""

    path: Path
    index: int
    term: int


class SnapshotStore:
    """Snapshot files of all partitions under one directory.

    Thread-safety: calls for different partitions may run concurrently; calls
    for one partition must not (the partition driver owns them).
    """

    def __init__(self, directory: str | Path, *, retain: int = 2, logger: Any = None,
                 data_dir_id: bytes | None = None) -> None:
        if retain < 1:
            raise ValueError(f"retain ({retain}) must be >= 1")
        self.directory = Path(directory)
        self.data_dir_id = data_dir_id  # stamped into saved files, checked at load
        self.retain = retain
        self._log: Logger = logger if logger is not None else NULL_LOGGER
        self.directory.mkdir(parents=True, exist_ok=True)

    def _pdir(self, partition: int) -> Path:
        return self.directory / f"p{partition}"

    def save(self, partition: int, snapshot: Snapshot) -> Path:
        """Durably write `snapshot`, then apply retention. Returns its path."""
        meta = snapshot.meta
        pdir = self._pdir(partition)
        created = not pdir.exists()
        pdir.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self.directory)
        for stale in pdir.glob("*.tmp"):
            stale.unlink()
        voters = meta.conf_state.voters
        body = b"".join(
            (
                _HEAD.pack(
                    MAGIC,
                    VERSION,
                    partition,
                    meta.index,
                    meta.term,
                    len(snapshot.data),
                    len(voters),
                    self.data_dir_id or NO_DIR_ID,
                ),
                struct.pack(f"<{len(voters)}Q", *voters),
                snapshot.data,
            )
        )
        body += _CRC.pack(zlib.crc32(body))
        final = pdir / f"{meta.index:020d}-{meta.term:020d}{_SUFFIX}"
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        fsync_dir(pdir)
        self._log.info(
            "snapshot_saved", partition=partition, index=meta.index, term=meta.term, file=str(final)
        )
        self._apply_retention(partition)
        return final

    def list(self, partition: int) -> builtins.list[SnapshotFile]:
        """The partition's snapshot files, newest (highest index) first."""
        pdir = self._pdir(partition)
        if not pdir.is_dir():
            return []
        out = []
        for path in pdir.iterdir():
            name = path.name
            if not name.endswith(_SUFFIX):
                continue
            try:
                index_s, term_s = name[: -len(_SUFFIX)].split("-")
                out.append(SnapshotFile(path, int(index_s), int(term_s)))
            except ValueError:
                continue
        out.sort(key=lambda f: (f.index, f.term), reverse=True)
        return out

    def load(self, path: str | Path, partition: int | None = None) -> Snapshot:
        """Read and verify one snapshot file.

        Raises:
            SnapshotCorruptionError: bad magic, length, checksum or partition.
        """
        path = Path(path)
        raw = path.read_bytes()
        head = parse_head(raw)
        if head is None:
            raise SnapshotCorruptionError(path, f"bad magic or version (file of {len(raw)} bytes)")
        expected = head.size + 8 * head.n_voters + head.data_length + _CRC.size
        if expected != len(raw):
            raise SnapshotCorruptionError(path, f"length {len(raw)} != expected {expected}")
        (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
        if zlib.crc32(memoryview(raw)[: len(raw) - _CRC.size]) != crc:
            raise SnapshotCorruptionError(path, "crc mismatch")
        if partition is not None and head.partition != partition:
            raise SnapshotCorruptionError(path, f"holds partition {head.partition}, not "
                                                f"{partition}")
        mine = self.data_dir_id
        if mine is not None and head.dir_id not in (NO_DIR_ID, mine):
            raise SnapshotCorruptionError(
                path, f"belongs to data dir {head.dir_id.hex()}, this data dir is {mine.hex()}: "
                      "copied from another node or data dir")
        voters = struct.unpack_from(f"<{head.n_voters}Q", raw, head.size)
        start = head.size + 8 * head.n_voters
        data = raw[start : start + head.data_length]
        index, term = head.index, head.term
        return Snapshot(SnapshotMeta(index, term, ConfState(tuple(voters))), data)

    def load_latest(self, partition: int) -> Snapshot | None:
        """The newest snapshot that passes its checks; corrupt ones are logged and skipped."""
        for f in self.list(partition):
            try:
                return self.load(f.path, partition)
            except SnapshotCorruptionError as exc:
                self._log.warning(
                    "snapshot_corrupt_skipped",
                    partition=partition,
                    file=str(f.path),
                    reason=exc.reason,
                )
        return None

    def safe_release_index(self, partition: int) -> int:
        """Highest index the WAL may release while keeping the fallback possible.

        That is the oldest retained snapshot's index once `retain` snapshots
        exist, else 0 (nothing may be released yet).
        """
        files = self.list(partition)
        if len(files) < self.retain:
            return 0
        return files[self.retain - 1].index

    def _apply_retention(self, partition: int) -> None:
        pdir = self._pdir(partition)
        doomed = self.list(partition)[self.retain :]
        for f in doomed:
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()
            self._log.info("snapshot_deleted", partition=partition, file=str(f.path))
        if doomed:
            fsync_dir(pdir)
