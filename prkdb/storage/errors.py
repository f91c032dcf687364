"""Errors raised by the storage layer.

Two kinds, never mixed (STYLE §8.5):

- `InvalidAppendError` (also a `ValueError`): the caller asked for something
  that would break a log invariant (a gap, a batch that is not consecutive, an
  older snapshot marker). Nothing was written.
- `WalCorruptionError` / `SnapshotCorruptionError`: the bytes on disk are not
  what we wrote. The message names the file and byte offset so an operator can
  look at it (`prkctl wal verify`); the node must not start on guesses.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Root of every error raised by `prkdb.storage`."""


class WalClosedError(StorageError):
    """The WAL was used after `close()`."""


class InvalidAppendError(StorageError, ValueError):
    """An append or release that would break the log's invariants (caller mistake)."""


class WalCorruptionError(StorageError):
    """A record outside the tolerated torn tail is damaged.

    Attributes:
        path: the segment file holding the bad record.
        offset: byte offset of the bad record's header in that file.
        reason: short lowercase description (``"crc mismatch"`` ...).
    """

    def __init__(self, path: str | Path, offset: int, reason: str) -> None:
        self.path = Path(path)
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"wal corruption in {self.path} at byte offset {offset}: {reason}. Nothing was "
            "changed. What to do (docs/operations.md, 'A corrupt WAL'): with the other nodes "
            "up, `prkctl wal repair DATA_DIR` cuts the WAL there and the node catches up from "
            "its peers before it votes again; or move the data dir away and start with "
            "--rebuild"
        )


class SnapshotCorruptionError(StorageError):
    """A snapshot file failed its length or checksum test."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"corrupt snapshot {self.path}: {reason}")
