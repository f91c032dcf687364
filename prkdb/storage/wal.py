"""The node's write-ahead log: one log shared by all Raft partitions.

Theory of operation
-------------------
Records (record.py) are appended to the newest ("active") segment file
through its shared mmap; `sync()` fdatasyncs every segment holding bytes not
yet known durable. One fdatasync thus covers a whole batch of appends from
all partitions (group commit).

Threading contract
~~~~~~~~~~~~~~~~~~
- `append_*`, `release` and `close` may be called from any thread; each takes
  `_lock` for a short critical section (checks, a memcpy into the mapping,
  bookkeeping). Encoding happens before the lock is taken. The daemon calls
  them from the event-loop thread.
- `sync()` is meant for a worker thread (`trio.to_thread.run_sync`). It takes
  `_lock` only to note the current end of every dirty segment, then
  fdatasyncs WITHOUT `_lock`, so appends continue into the next batch while a
  flush is in flight. Syncs are serialized among themselves by `_sync_lock`
  (a second caller waits, then flushes what was appended in the meantime).
  Guarantee: when `sync()` returns, everything appended before it was called
  is durable. A segment being synced is pinned so it cannot be closed or
  deleted meanwhile.
- The one slow step under `_lock` is segment rollover (once per
  `segment_size` bytes): the new segment is created (preallocated, fsynced,
  renamed, dir fsynced), then the old one sealed and fdatasynced, then the
  new one's preamble fdatasynced. Rollover ordering is what lets recovery
  treat damage in any segment but the newest as corruption rather than a
  torn write, and a sealed newest segment as a lost successor.
- When an fdatasync returns, `sync()` writes a SYNC_MARK into the active
  segment saying how far it is durable (it becomes durable with the next
  sync; a node that goes idle syncs it on its own, `needs_sync()`). Damage
  below a mark's claim is corruption, never a torn tail (recovery.py).
- After an fdatasync error the WAL is *failed*: the page cache state is
  unknown (fsyncgate), so every later call raises `StorageError` and the node
  must restart and recover.

Invariants per partition (checked at append, `InvalidAppendError` if not):
entries of a batch are consecutive; a batch starts after the snapshot index
and at most one past the last index (no gaps); snapshot markers never go
backwards; `release(p, i)` needs i <= the partition's snapshot marker index.

Segment deletion
~~~~~~~~~~~~~~~~
On rollover the new segment starts with a *preamble*: every partition's
latest hard state and snapshot marker again, and its last index (LOG_END,
which lets replay notice a missing segment). So no segment but the newest
ever holds a partition's only copy of those. A non-active segment is
therefore deleted as soon as, for every partition with entries in it, its
highest entry index there is <= that partition's release index. Replaying
the remaining segments rebuilds the same state above each release index
(snapshot markers record the last index at their time, so entries a deleted
segment had truncated cannot come back; see docs/storage.md for the
argument). Release indexes are not persisted: after a restart, call
`release()` again.

Records bigger than `segment_size` get a segment of their own, sized to fit.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import prkdb.storage.record as rec
from prkdb.raft.logger import NULL_LOGGER, Logger
from prkdb.raft.types import Entry, HardState, SnapshotMeta
from prkdb.storage.errors import InvalidAppendError, StorageError, WalClosedError
from prkdb.storage.recovery import PartitionLog, recover
from prkdb.storage.segment import Segment

__all__ = ["PartitionLog", "WriteAheadLog"]

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
MIN_SEGMENT_SIZE = 4096
_SEAL = rec.encode_seal()


class _Track:
    """What the writer must know about one partition to validate appends.

    `starts`/`terms` are the term runs of the entries in [hist_from, last]:
    entry i has term terms[k] for the largest k with starts[k] <= i.
    """

    __slots__ = ("hist_from", "hs", "last", "released", "snap", "starts", "terms")

    def __init__(self) -> None:
        self.last = 0  # last entry index, or the snapshot index if no entries
        self.snap: SnapshotMeta | None = None
        self.hs: HardState | None = None
        self.starts: list[int] = []
        self.terms: list[int] = []
        self.hist_from = 1  # lowest index whose entry is still in the WAL as valid history
        self.released = 0  # highest index passed to release() since open

    @property
    def snap_index(self) -> int:
        return self.snap.index if self.snap is not None else 0

    def term_at(self, i: int) -> int | None:
        if self.snap is not None and i == self.snap.index:
            return self.snap.term
        if i > self.last or i < self.hist_from or not self.starts:
            return None
        k = bisect.bisect_right(self.starts, i) - 1
        return self.terms[k] if k >= 0 else None


class WriteAheadLog:
    """Durable, shared log of entries, hard states and snapshot markers.

    Build one with `WriteAheadLog.open(directory)`; see the module docstring
    for the threading contract.
    """

    def __init__(
        self,
        directory: Path,
        segment_size: int,
        logger: Logger,
        recovered: dict[int, PartitionLog],
        segments: list[Segment],
        dir_id: bytes = rec.NO_DIR_ID,
    ) -> None:
        self._dir = directory
        self._dir_id = dir_id
        self._segment_size = segment_size
        self._log = logger
        self._recovered = recovered
        self._segments = segments  # oldest first; the last one is active
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._closed = False
        self._failed: BaseException | None = None
        self._parts: dict[int, _Track] = {}
        for p, plog in recovered.items():
            self._parts[p] = _track_from(plog)

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        repair: bool = False,
        logger: Any = None,
        data_dir_id: bytes | None = None,
    ) -> WriteAheadLog:
        """Open (creating if needed) the WAL in `directory` and replay it.

        Args:
            segment_size: bytes per preallocated segment file.
            repair: on corruption outside the newest segment's tail, truncate
                there (backing files up, warning loudly) instead of raising.
            logger: object with .info/.warning(event, **kw); default no-op.
            data_dir_id: the 16-byte id of the data dir (identity.py): new
                segments carry it, and a segment carrying another is refused.

        Raises:
            WalCorruptionError: damaged record outside the tolerated torn tail.
            ValueError: segment_size below 4096.
        """
        if segment_size < MIN_SEGMENT_SIZE:
            raise ValueError(f"segment_size ({segment_size}) must be >= {MIN_SEGMENT_SIZE}")
        log: Logger = logger if logger is not None else NULL_LOGGER
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rv = recover(directory, repair=repair, logger=log, dir_id=data_dir_id)
        segments: list[Segment] = []
        for scan in rv.scans:
            seg = Segment(scan.path, scan.seq, scan.size, scan.end)
            seg.max_index = scan.max_index
            if scan.claim_at:
                seg.mark_end = scan.claim_at + rec.SYNC_MARK_SIZE
            segments.append(seg)
        tail = rv.tail
        if tail >= 0 and not rv.scans[tail].sealed:
            old = segments[tail]
            active = Segment.open_for_append(old.path, old.seq, old.write_off)
            active.max_index, active.mark_end = old.max_index, old.mark_end
            # What we replayed may have been only in the page cache (a
            # process crash): make it durable before acting on it.
            active.datasync()
            segments[tail] = active
        wal = cls(directory, segment_size, log, rv.partitions, segments,
                  data_dir_id or rec.NO_DIR_ID)
        with wal._lock:
            if 0 <= tail < len(segments) - 1:
                wal._finish_rollover(tail)
            elif tail < 0 or rv.scans[tail].sealed:
                wal._roll(0)
            else:
                wal._mark(segments[tail])
        log.info(
            "wal_opened",
            directory=str(directory),
            segments=len(wal._segments),
            partitions=len(rv.partitions),
        )
        return wal

    @property
    def directory(self) -> Path:
        """Where the segment files are."""
        return self._dir

    def recovered(self) -> dict[int, PartitionLog]:
        """State replayed at open, per partition id (the caller may keep it)."""
        return self._recovered

    # ---------------------------------------------------------------- append

    def append_entries(self, partition: int, entries: Sequence[Entry]) -> None:
        """Append consecutive entries; the first one's index truncates any suffix.

        Raises:
            InvalidAppendError: not consecutive, a gap after the last index, or
                at/below the snapshot index. Nothing is written then.
        """
        if not entries:
            return
        first = entries[0].index
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise InvalidAppendError(
                    f"partition {partition}: entries not consecutive "
                    f"({e.index} at position {k} after {first})"
                )
        data = rec.encode_entries(partition, entries)
        with self._lock:
            self._check_open()
            t = self._parts.get(partition)
            if t is None:
                t = self._parts[partition] = _Track()
            if first <= t.snap_index or first > t.last + 1:
                raise InvalidAppendError(
                    f"partition {partition}: first index {first} must be in "
                    f"({t.snap_index}, {t.last + 1}]"
                )
            seg = self._write(data)
            last = entries[-1].index
            if seg.max_index.get(partition, 0) < last:
                seg.max_index[partition] = last
            k = bisect.bisect_left(t.starts, first)
            del t.starts[k:], t.terms[k:]
            for e in entries:
                if not t.terms or t.terms[-1] != e.term:
                    t.starts.append(e.index)
                    t.terms.append(e.term)
            t.last = last
            t.hist_from = min(t.hist_from, first)

    def append_hard_state(self, partition: int, hs: HardState) -> None:
        """Append a hard state; replay keeps the last one per partition."""
        data = rec.encode_hard_state(partition, hs)
        with self._lock:
            self._check_open()
            t = self._parts.get(partition)
            if t is None:
                t = self._parts[partition] = _Track()
            self._write(data)
            t.hs = hs

    def append_snapshot_marker(self, partition: int, meta: SnapshotMeta) -> None:
        """Record that a snapshot up to meta.index is durable elsewhere.

        Write the snapshot file (SnapshotStore.save) BEFORE this. If our log
        holds meta.index with meta.term (local compaction) the entries after
        it stay; otherwise (a snapshot from the leader replacing a diverging
        log) every entry is dropped, as in etcd's restore.

        Raises:
            InvalidAppendError: meta.index < 1 or below the current snapshot.
        """
        with self._lock:
            self._check_open()
            t = self._parts.get(partition)
            if t is None:
                t = self._parts[partition] = _Track()
            if meta.index < 1 or meta.index < t.snap_index:
                raise InvalidAppendError(
                    f"partition {partition}: snapshot index {meta.index} must be >= "
                    f"max(1, current snapshot index {t.snap_index})"
                )
            restore = t.term_at(meta.index) != meta.term
            if restore:
                t.last = meta.index
                t.starts.clear()
                t.terms.clear()
                t.hist_from = meta.index + 1
            self._write(rec.encode_marker(partition, meta, t.last, restore))
            t.snap = meta

    def _write(self, data: bytes) -> Segment:
        """Copy a record into the active segment, rolling over first if needed."""
        seg = self._segments[-1]
        if seg.room() < len(data) + len(_SEAL):
            self._roll(len(data))
            seg = self._segments[-1]
        seg.write(data)
        return seg

    def _preamble(self) -> bytes:
        """Every partition's latest hard state and snapshot marker, as records."""
        preamble = []
        for p in sorted(self._parts):
            t = self._parts[p]
            if t.hs is not None:
                preamble.append(rec.encode_hard_state(p, t.hs))
            if t.snap is not None:
                restore = t.hist_from > t.snap.index
                preamble.append(rec.encode_marker(p, t.snap, t.last, restore))
            if t.last:
                preamble.append(rec.encode_log_end(p, t.last))
        return b"".join(preamble)

    def _roll(self, need: int) -> None:
        """Start a new segment with the preamble, then seal+sync the active one.

        Caller holds _lock. Slow (several fsyncs) but rare. The new file
        exists (durably named) before the old one's seal is written, so a
        sealed newest segment at recovery means its successor was lost.
        """
        pre = self._preamble()
        try:
            seq = self._segments[-1].seq + 1 if self._segments else 1
            size = max(
                self._segment_size,
                rec.SEGMENT_HEADER_SIZE + len(pre) + need + 2 * len(_SEAL) + rec.SYNC_MARK_SIZE,
            )
            new = Segment.create(self._dir, seq, size, self._dir_id)
            # Seal the active segment, unless it was sealed already: at open,
            # a newest segment sealed before a crash is kept metadata-only
            # (mm None).
            if self._segments and self._segments[-1].mm is not None:
                self._seal(self._segments[-1])
            self._segments.append(new)
            self._write_preamble(new, pre)
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"wal rollover failed: {exc}") from exc
        self._log.info("wal_segment_rolled", file=str(new.path), size=size, preamble=len(pre))

    @staticmethod
    def _write_preamble(seg: Segment, pre: bytes) -> None:
        """Write and fdatasync a new segment's preamble (caller holds _lock)."""
        if pre:
            seg.write(pre)
            seg.datasync()
            seg.synced_off = seg.write_off

    def _seal(self, old: Segment) -> None:
        old.write(_SEAL)
        old.datasync()
        old.synced_off = old.write_off
        if old.pins == 0:
            old.close()

    def _finish_rollover(self, tail: int) -> None:
        """At open, after a crash between creating a segment and sealing the one before.

        The newest segment holds no record: seal the tail segment (its torn
        end was cut by recovery), then give the newest its preamble.
        """
        try:
            self._seal(self._segments[tail])
            newest = self._segments[-1]
            active = Segment.open_for_append(newest.path, newest.seq, newest.write_off)
            self._segments[-1] = active
            self._write_preamble(active, self._preamble())
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"wal rollover (resumed at open) failed: {exc}") from exc
        self._log.info("wal_rollover_finished", sealed=str(self._segments[tail].path),
                       active=str(self._segments[-1].path))

    def _mark(self, seg: Segment) -> None:
        """Note in `seg` that it is durable up to synced_off (caller holds _lock).

        Only when bytes other than the previous mark were synced (so a sync
        of nothing but a mark writes none), and only while the segment has
        room for the mark and its seal.
        """
        end = seg.synced_off
        if seg.mm is None or end <= seg.mark_end:
            return
        if seg.room() < rec.SYNC_MARK_SIZE + len(_SEAL):
            return
        seg.write(rec.encode_sync_mark(seg.seq, end))
        seg.mark_end = seg.write_off

    # ------------------------------------------------------------------ sync

    def sync(self) -> None:
        """Make everything appended before this call durable (fdatasync).

        Run it in a worker thread; appends may continue meanwhile. The lock is
        held only to snapshot offsets, never during the flush.

        Raises:
            StorageError: the flush failed; the WAL is failed from now on.
        """
        with self._sync_lock:
            with self._lock:
                self._check_open()
                targets = [
                    (s, s.write_off)
                    for s in self._segments
                    if s.fd is not None and s.write_off > s.synced_off
                ]
                for s, _ in targets:
                    s.pins += 1
            ok = False
            try:
                for s, _ in targets:
                    s.datasync()
                ok = True
            except OSError as exc:
                with self._lock:
                    self._failed = exc
                raise StorageError(f"wal fdatasync failed: {exc}") from exc
            finally:
                with self._lock:
                    active = self._segments[-1] if self._segments else None
                    for s, off in targets:
                        s.pins -= 1
                        if ok and off > s.synced_off:
                            s.synced_off = off
                        if s is not active and s.pins == 0 and s.fd is not None:
                            s.close()
                    if ok and active is not None and not self._closed:
                        self._mark(active)

    def needs_sync(self) -> bool:
        """Bytes were appended (a sync mark, at least) that no sync covered yet.

        A node that goes idle after a burst calls `sync()` when this is true,
        so the mark of its last batch is durable too (recovery.py).
        """
        with self._lock:
            return any(s.fd is not None and s.write_off > s.synced_off for s in self._segments)

    # --------------------------------------------------------------- release

    def release(self, partition: int, snapshot_index: int) -> None:
        """Entries <= snapshot_index are no longer needed; delete what we can.

        Pass the index of the OLDER retained snapshot
        (`SnapshotStore.safe_release_index`) so a corrupt newest snapshot can
        still fall back on the older one plus the WAL.

        Raises:
            InvalidAppendError: snapshot_index above the partition's snapshot
                marker (the entries would be lost for good).
        """
        doomed: list[Segment] = []
        with self._lock:
            self._check_open()
            t = self._parts.get(partition)
            s_idx = t.snap_index if t is not None else 0
            if snapshot_index > s_idx:
                raise InvalidAppendError(
                    f"partition {partition}: release index {snapshot_index} is above "
                    f"its snapshot marker index {s_idx}"
                )
            assert t is not None or snapshot_index <= 0
            if t is None or snapshot_index <= t.released:
                return
            t.released = snapshot_index
            keep: list[Segment] = []
            for s in self._segments[:-1]:
                if s.pins == 0 and all(
                    mx <= (self._parts[p].released if p in self._parts else 0)
                    for p, mx in s.max_index.items()
                ):
                    doomed.append(s)
                else:
                    keep.append(s)
            keep.append(self._segments[-1])
            self._segments = keep
            for s in doomed:
                s.close()
        for s in doomed:
            with contextlib.suppress(FileNotFoundError):
                s.path.unlink()
            self._log.info("wal_segment_deleted", file=str(s.path))

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Sync (unless failed) and release all files. Idempotent."""
        if self._closed:
            return
        if self._failed is None:
            self.sync()
            self.sync()  # the mark the first one wrote
        with self._sync_lock, self._lock:
            for s in self._segments:
                s.close()
            self._closed = True

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise WalClosedError("wal is closed")
        if self._failed is not None:
            raise StorageError(f"wal failed earlier and must be reopened: {self._failed}")

    # ------------------------------------------------------------ inspection

    def segment_files(self) -> list[Path]:
        """Current segment paths, oldest first (for tests and `prkctl`)."""
        with self._lock:
            return [s.path for s in self._segments]


def _track_from(plog: PartitionLog) -> _Track:
    t = _Track()
    t.snap = plog.snapshot
    t.hs = plog.hard_state if not plog.hard_state.is_empty() else None
    ents = plog.before_snapshot + plog.entries
    t.last = plog.last_index()
    t.hist_from = ents[0].index if ents else t.snap_index + 1
    prev = None
    for e in ents:
        if e.term != prev:
            t.starts.append(e.index)
            t.terms.append(e.term)
            prev = e.term
    return t
