"""Reading WAL segments back: replay at open, and offline verify/dump.

Theory of operation
-------------------
Segments are read in sequence order and every record is checked (header
sanity, length within the file, CRC over header and payload, exact payload
parse). Replay folds the records of each partition into a `PartitionLog`:

- ENTRY with first index i: the partition's entries from i on are discarded,
  then the batch is appended (a conflicting suffix is truncated this way). If
  i is beyond the last entry + 1, the list restarts at i (this happens only
  when older segments were deleted, see wal.py).
- HARD_STATE: replaces the previous one.
- SNAPSHOT_MARKER (index S, term T, last L, flags): entries above L are
  dropped (they were already stale when the marker was written). Without the
  RESTORE flag entries <= S stay as *history*; with it they are dropped too.
- SEAL: ends a segment.

What may go wrong, and what we do:

- A bad record in the NEWEST segment, followed only by unsynced bytes, is the
  normal result of a crash (a torn or partial write, preallocated zeros): it
  is cut off and logged with the byte count. Every segment but the newest was
  fdatasynced and sealed before the next one was created, so
- a bad record, bad header or missing seal in any OTHER segment is
  corruption: `WalCorruptionError` naming file and offset. With repair=True
  the WAL is truncated at that point instead, loudly, after backing the
  segment up to ``<name>.bak`` and renaming the later segments to
  ``<name>.discarded`` (nothing is deleted).

`verify` and `dump` share the reader and never modify anything.
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prkdb.storage.record as rec
from prkdb.raft.logger import NULL_LOGGER, Logger
from prkdb.raft.types import EMPTY_HARD_STATE, Entry, HardState, SnapshotMeta
from prkdb.storage.errors import WalCorruptionError
from prkdb.storage.record import RecordKind
from prkdb.storage.segment import TMP_SUFFIX, parse_segment_name

_ZERO_HEADER = bytes(rec.RECORD_HEADER_SIZE)
_KINDS = {k.value: k for k in RecordKind}
_SEGMENT_KINDS = (RecordKind.SEAL, RecordKind.SYNC_MARK)  # not of one partition


@dataclass
class PartitionLog:
    """What replay rebuilt for one partition.

    Attributes:
        hard_state: the last hard state written (empty if none).
        snapshot: the newest snapshot marker's meta, or None.
        entries: contiguous entries after `snapshot.index` (from 1 if None).
        before_snapshot: entries <= snapshot.index still in the WAL (not yet
            released), contiguous and ending at snapshot.index, or empty. They
            let the caller fall back to an OLDER snapshot file when the newest
            is corrupt. Only entries above the index last passed to
            `release()` are trustworthy: older ones may sit in segments whose
            later rewrites were deleted.
    """

    hard_state: HardState = EMPTY_HARD_STATE
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    before_snapshot: list[Entry] = field(default_factory=list)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index

    def entries_after(self, index: int) -> list[Entry] | None:
        """Entries index+1..last if the WAL still covers them, else None.

        Use this when the snapshot you could load is older than `snapshot`.
        """
        if index >= self.snapshot_index:
            return [e for e in self.entries if e.index > index]
        hist = self.before_snapshot
        if not hist or hist[0].index > index + 1:
            return None
        return hist[index + 1 - hist[0].index :] + self.entries


@dataclass(frozen=True)
class Problem:
    """The first bad spot found. tail=True: in the newest segment (cut at open)."""

    file: str
    offset: int
    reason: str
    tail: bool


class _Part:
    """Replay state of one partition (mutable, turned into a PartitionLog)."""

    __slots__ = ("entries", "hard_state", "origin", "snapshot")

    def __init__(self) -> None:
        self.hard_state = EMPTY_HARD_STATE
        self.snapshot: SnapshotMeta | None = None
        self.entries: list[Entry] = []
        self.origin: tuple[str, int] = ("", 0)  # where entries[0] came from


class Replayer:
    """Folds decoded records into per-partition state (the rules above)."""

    def __init__(self) -> None:
        self.parts: dict[int, _Part] = {}
        # partition -> (replayed up to, LOG_END said, where): see log_end().
        self.gaps: dict[int, tuple[int, int, tuple[str, int]]] = {}

    def _part(self, p: int) -> _Part:
        st = self.parts.get(p)
        if st is None:
            st = self.parts[p] = _Part()
        return st

    def entries(self, p: int, batch: list[Entry], where: tuple[str, int]) -> None:
        """Raises ValueError for a record Raft could not have written (see below)."""
        st = self._part(p)
        ents = st.entries
        first = batch[0].index
        # Raft never rewrites a committed entry (RaftLog.append refuses), and
        # a persisted commit index never exceeds the in-memory one: a record
        # starting at or below it is stale or copied bytes, not ours.
        if first <= st.hard_state.commit or (st.snapshot is not None
                                             and first <= st.snapshot.index):
            raise ValueError(
                f"partition {p}: rewrites the log from index {first}, but entries up to "
                f"{st.hard_state.commit} were already committed and up to "
                f"{st.snapshot.index if st.snapshot else 0} snapshotted (stale or copied "
                f"bytes)")
        self.gaps.pop(p, None)
        if ents:
            head = ents[0].index
            if head <= first <= ents[-1].index + 1:
                del ents[first - head :]
                ents.extend(batch)
                return
        st.entries = batch
        st.origin = where

    def hard_state(self, p: int, hs: HardState) -> None:
        """Raises ValueError for a hard state Raft could not have written after the last.

        Terms never go back; within a term a cast vote stays and the commit
        index only grows (a rebuild's term floor raises the term, so its
        commit 0 passes). Stale or copied records fail this.
        """
        st = self._part(p)
        prev = st.hard_state
        if hs.term < prev.term or (hs.term == prev.term and (
                hs.commit < prev.commit or (prev.vote and hs.vote != prev.vote))):
            raise ValueError(
                f"partition {p}: hard state (term {hs.term}, vote {hs.vote}, commit "
                f"{hs.commit}) goes back from (term {prev.term}, vote {prev.vote}, commit "
                f"{prev.commit}) (stale or copied bytes)")
        st.hard_state = hs

    def marker(self, p: int, meta: SnapshotMeta, last: int, restore: bool) -> None:
        """Raises ValueError for a marker going back (the writer refuses those)."""
        st = self._part(p)
        if st.snapshot is not None and meta.index < st.snapshot.index:
            raise ValueError(f"partition {p}: snapshot marker {meta.index} goes back from "
                             f"{st.snapshot.index} (stale or copied bytes)")
        st.snapshot = meta
        ents = st.entries
        if ents and ents[-1].index > last:
            del ents[max(0, last + 1 - ents[0].index) :]
        if restore and ents and ents[0].index <= meta.index:
            del ents[: meta.index + 1 - ents[0].index]

    def log_end(self, p: int, last: int, where: tuple[str, int]) -> None:
        """A preamble says partition p's log ended at `last` when its segment began.

        If the segments replayed so far end lower, entries are missing up to
        `last`. That is fine for those at or below the snapshot index that
        replay ends with (released segments are deleted), and a later ENTRY
        record of p hands the question to `finish`'s continuity check; what
        is left is a gap above the snapshot that nothing else would notice
        (the partition's last entries were in a missing segment).
        """
        st = self.parts.get(p)
        have = 0
        if st is not None:
            have = max(st.entries[-1].index if st.entries else 0,
                       st.snapshot.index if st.snapshot is not None else 0)
        if have < last:
            self.gaps[p] = (have, last, where)
        else:
            self.gaps.pop(p, None)

    def finish(self) -> tuple[dict[int, PartitionLog], Problem | None]:
        """Split history from live entries and check the live ones are complete."""
        out: dict[int, PartitionLog] = {}
        problem = None
        for p, (have, last, where) in sorted(self.gaps.items()):
            st = self.parts.get(p)
            snap = st.snapshot.index if st is not None and st.snapshot is not None else 0
            if last > snap:
                problem = Problem(
                    where[0], where[1],
                    f"partition {p}: its log ended at index {last} when this segment was "
                    f"started, but the segments before it end at {have} and the snapshot "
                    f"covers only up to {snap} (a segment is missing or was replaced)",
                    tail=False)
                break
        for p in sorted(self.parts):
            st = self.parts[p]
            s = st.snapshot.index if st.snapshot is not None else 0
            ents = st.entries
            k = 0
            if ents:
                k = min(len(ents), max(0, s + 1 - ents[0].index))
            before, after = ents[:k], ents[k:]
            if before and before[-1].index != s:
                before = []
            if after and after[0].index != s + 1 and problem is None:
                problem = Problem(
                    st.origin[0],
                    st.origin[1],
                    f"partition {p}: entries resume at {after[0].index} but the snapshot "
                    f"covers only up to {s} (a segment is missing)",
                    tail=False,
                )
            out[p] = PartitionLog(st.hard_state, st.snapshot, after, before)
        return out, problem


@dataclass
class SegmentScan:
    """Result of reading one segment file."""

    path: Path
    seq: int
    size: int
    records: int = 0
    end: int = 0  # offset just after the last good record
    sealed: bool = False
    problem: tuple[int, str] | None = None  # (offset, reason)
    max_index: dict[int, int] = field(default_factory=dict)
    header: rec.SegmentHeader | None = None
    # Highest synced end claimed by a SYNC_MARK of this segment: read in
    # order before the stop, or found by scanning past a bad record. Bytes
    # below it were durable, so damage there is never a torn write.
    claim: int = 0
    claim_at: int = 0  # offset of the mark that made the claim


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(seq, path) of the segment files in order; other files are ignored."""
    out = []
    for name in os.listdir(directory):
        seq = parse_segment_name(name)
        if seq is not None:
            out.append((seq, directory / name))
    out.sort()
    return out


def read_segment(path: Path, seq: int, replayer: Replayer | None, visit: Any = None,
                 dir_id: bytes | None = None) -> SegmentScan:
    """Read one segment, feeding good records to `replayer` (and `visit`).

    `visit(offset, kind, partition, value)` receives decoded values; it is how
    `dump` sees records. Reading stops at the first bad record, recorded in
    `scan.problem`. `dir_id`: the data dir's id; a version-2 segment carrying
    another one is refused (copied from another data dir or node).
    """
    scan = SegmentScan(path, seq, 0)
    # read(), not mmap: a page fault on a hole of a sparse file on a full
    # tmpfs is SIGBUS (the process dies unexplained); read() just gets zeros.
    with open(path, "rb") as f:
        data = f.read()
    scan.size = size = len(data)
    reason = header_problem(data, size, seq, dir_id)
    header = rec.decode_segment_header(data)
    if reason is not None or header is None:
        scan.problem = (0, reason or "bad segment header")
        return scan
    scan.header = header
    _read_records(data, header.length, scan, replayer, visit)
    if scan.problem is None and not scan.sealed:
        # Stopped at a zero header: the end of the data, unless nonzero bytes
        # follow (a zeroed page, or the unwritten part of an unsynced batch).
        rest = size - scan.end
        if rest and data.count(0, scan.end) != rest:
            nz = len(data) - len(data[scan.end:].lstrip(b"\0"))
            scan.problem = (scan.end, f"zeroed record header, but nonzero bytes follow at {nz}")
    if scan.problem is not None:
        for at, claim in rec.find_sync_marks(data, scan.problem[0], seq):
            if claim > scan.claim:
                scan.claim, scan.claim_at = claim, at
    return scan


def _read_records(
    buf: bytes, off: int, scan: SegmentScan, replayer: Replayer | None, visit: Any
) -> None:
    size = scan.size
    unpack_header = rec.RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    hsize = rec.RECORD_HEADER_SIZE
    path_s = str(scan.path)
    max_index = scan.max_index
    nrec = 0
    while True:
        if off + hsize > size:
            if off < size and any(buf[off:size]):
                scan.problem = (off, "truncated record header at end of segment")
            break
        length, crc, part, kind, flags, reserved = unpack_header(buf, off)
        if length == 0 and kind == 0 and buf[off : off + hsize] == _ZERO_HEADER:
            break  # zeros: end of data (read_segment checks that only zeros follow)
        pstart = off + hsize
        pend = pstart + length
        if kind not in _KINDS:
            scan.problem = (off, f"unknown record kind {kind}")
            break
        if pend > size:
            scan.problem = (off, f"record length {length} runs past the end of the segment")
            break
        if crc32(buf[pstart:pend], crc32(buf[off + 8 : pstart])) != crc or reserved != 0:
            scan.problem = (off, "crc mismatch")
            break
        try:
            if kind == RecordKind.ENTRY:
                batch = rec.decode_entries(buf, pstart, pend)
                if not batch:
                    raise ValueError("empty entry batch")
                last = batch[-1].index
                if max_index.get(part, 0) < last:
                    max_index[part] = last
                if replayer is not None:
                    replayer.entries(part, batch, (path_s, off))
                value: Any = batch
            elif kind == RecordKind.HARD_STATE:
                value = rec.decode_hard_state(buf, pstart)
                if replayer is not None:
                    replayer.hard_state(part, value)
            elif kind == RecordKind.SNAPSHOT_MARKER:
                meta, last = rec.decode_marker(buf, pstart)
                restore = bool(flags & rec.FLAG_RESTORE)
                value = (meta, last, restore)
                if replayer is not None:
                    replayer.marker(part, meta, last, restore)
            elif kind == RecordKind.LOG_END:
                (value,) = rec.LOG_END.unpack_from(buf, pstart)
                if length != rec.LOG_END.size:
                    raise ValueError(f"LOG_END payload of {length} bytes")
                if replayer is not None:
                    replayer.log_end(part, value, (path_s, off))
            elif kind == RecordKind.SYNC_MARK:
                mseq, claim = rec.decode_sync_mark(buf, pstart)
                if length != rec.SYNC_MARK.size or mseq != scan.seq or claim > off:
                    raise ValueError(f"sync mark of segment {mseq} claims {claim}")
                if claim > scan.claim:
                    scan.claim, scan.claim_at = claim, off
                value = claim
            else:
                value = None
        except (ValueError, IndexError, OverflowError) as exc:  # struct.error is a ValueError
            scan.problem = (off, f"malformed {RecordKind(kind).name} payload: {exc}")
            break
        if visit is not None:
            visit(off, RecordKind(kind), part, value)
        nrec += 1
        off = pend
        if kind == RecordKind.SEAL:
            scan.sealed = True
            break
    scan.records = nrec
    scan.end = off


def header_problem(head: bytes, size: int, seq: int, dir_id: bytes | None) -> str | None:
    """Why `head` (a segment file's first bytes; the file has `size` bytes) is not ours."""
    header = rec.decode_segment_header(head)
    if header is None:
        return f"bad segment header (magic, version or crc; file of {size} bytes)"
    if header.seq != seq:
        return (f"segment header says sequence {header.seq}, file name says {seq}: "
                "a renamed or copied segment")
    if header.size is not None and header.size != size:
        return (f"file is {size} bytes but was preallocated to {header.size}: "
                "truncated or extended after it was written")
    if (dir_id is not None and header.dir_id is not None and header.dir_id != rec.NO_DIR_ID
            and header.dir_id != dir_id):
        return (f"segment belongs to data dir {header.dir_id.hex()}, this data dir is "
                f"{dir_id.hex()}: copied from another node or data dir")
    return None


def first_bad_header(segs: list[tuple[int, Path]], dir_id: bytes | None) -> Problem | None:
    """The first segment whose header is not ours, checked before any record is read.

    Without this pass a foreign or renamed segment would be blamed on its
    predecessor ("ends without a seal"), not named itself.
    """
    for seq, path in segs:
        with open(path, "rb") as f:
            head = f.read(rec.SEGMENT_HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        reason = header_problem(head, size, seq, dir_id)
        if reason is not None:
            return Problem(str(path), 0, reason, tail=False)
    return None


def holds_no_record(path: Path) -> bool:
    """A valid segment header followed only by zeros (a crash right after rollover)."""
    with open(path, "rb") as f:
        head = f.read(rec.SEGMENT_HEADER_SIZE + rec.RECORD_HEADER_SIZE)
    header = rec.decode_segment_header(head)
    if header is None:
        return False
    first = head[header.length : header.length + rec.RECORD_HEADER_SIZE]
    return len(first) == rec.RECORD_HEADER_SIZE and first == _ZERO_HEADER


def classify(scan: SegmentScan, *, tail: bool, newest: bool) -> Problem | None:
    """What is wrong with a segment, as a Problem (tail=True: a torn write), or None.

    `tail`: this is the segment a crash may have torn: the newest, or the
    one before it when the newest holds no record yet and this one is not
    sealed (a crash during rollover, after the new file was created but
    before the old one was sealed). The rules of docs/storage.md,
    "Recovery rules": damage is a torn tail only in the tail segment, past
    its header, and past every byte a sync mark says was durable. Anything
    else is corruption.
    """
    path = str(scan.path)
    v1 = scan.header is not None and scan.header.version == rec.VERSION_1
    if scan.problem is not None:
        off, reason = scan.problem
        if tail and off != 0 and off >= scan.claim:
            return Problem(path, off, reason, tail=True)
        if off != 0 and off < scan.claim:
            reason += (f"; bytes up to offset {scan.claim} were durable (sync mark at "
                       f"{scan.claim_at}), so this is damage, not a torn write")
        return Problem(path, off, reason, tail=False)
    if not tail and not newest and not scan.sealed:
        return Problem(path, scan.end, "segment ends without a seal record (its tail was lost)",
                       tail=False)
    if newest and scan.sealed and not v1:
        return Problem(path, scan.end,
                       f"the newest segment is sealed, but segment {scan.seq + 1}, which a "
                       f"seal promises, is missing (deleted?)", tail=False)
    return None


def scan_segments(segs: list[tuple[int, Path]], replayer: Replayer, dir_id: bytes | None
                  ) -> Iterator[tuple[int, SegmentScan, Problem | None]]:
    """Read the segments in order: (position, scan, `classify`'s verdict) for each.

    Decides which segment is the tail (`classify`). The caller may stop
    early, or cut a torn tail before asking for the next one.
    """
    n = len(segs)
    newest_empty = n >= 2 and holds_no_record(segs[-1][1])
    for i, (seq, path) in enumerate(segs):
        scan = read_segment(path, seq, replayer, dir_id=dir_id)
        # The one before an empty newest segment is the tail after a crash
        # during rollover: its end may be torn.
        tail = i == n - 1 or (i == n - 2 and newest_empty and not scan.sealed)
        yield i, scan, classify(scan, tail=tail, newest=i == n - 1)


@dataclass
class Recovered:
    """Everything `WriteAheadLog.open` needs from recovery."""

    partitions: dict[int, PartitionLog]
    scans: list[SegmentScan]  # surviving segments, oldest first
    tail: int  # index in scans of the segment that continues (-1: none)


def recover(directory: Path, *, repair: bool, logger: Logger = NULL_LOGGER,
            dir_id: bytes | None = None) -> Recovered:
    """Replay the WAL in `directory`, cutting a torn tail (this MODIFIES files).

    Raises:
        WalCorruptionError: damage that is not a provable torn tail (unless
            repair=True, which truncates there loudly instead).
    """
    for name in os.listdir(directory):
        if name.endswith(TMP_SUFFIX):
            logger.info("wal_removed_temp_segment", file=str(directory / name))
            os.unlink(directory / name)
    segs = list_segments(directory)
    if not repair:
        bad = first_bad_header(segs, dir_id)
        if bad is not None:
            raise WalCorruptionError(bad.file, bad.offset, bad.reason)
    replayer = Replayer()
    scans: list[SegmentScan] = []
    tail = len(segs) - 1
    for i, scan, problem in scan_segments(segs, replayer, dir_id):
        scans.append(scan)
        if problem is None:
            continue
        if problem.tail:
            _cut_tail(scan.path, problem.offset, problem.reason, logger)
            scan.end = problem.offset
            scan.problem = None
            continue
        _fail_or_repair(directory, scans, segs[i + 1 :], problem, repair, logger)
        tail = len(scans) - 1
        break
    else:
        if len(scans) >= 2 and scans[-1].records == 0 and not scans[-2].sealed:
            tail = len(scans) - 2  # rollover to finish at open (wal.py)
    partitions, problem = replayer.finish()
    if problem is not None:
        raise WalCorruptionError(problem.file or directory, problem.offset, problem.reason)
    return Recovered(partitions, scans, min(tail, len(scans) - 1))


def _fail_or_repair(
    directory: Path,
    scans: list[SegmentScan],
    later: list[tuple[int, Path]],
    problem: Problem,
    repair: bool,
    logger: Logger,
) -> None:
    scan = scans[-1]
    off, reason = problem.offset, problem.reason
    if not repair:
        raise WalCorruptionError(scan.path, off, reason)
    backup = scan.path.with_name(scan.path.name + ".bak")
    shutil.copyfile(scan.path, backup)
    discarded = []
    for _, p in later:
        p.rename(p.with_name(p.name + ".discarded"))
        discarded.append(str(p))
    logger.warning(
        "wal_repaired_by_truncation",
        file=str(scan.path),
        offset=off,
        reason=reason,
        backup=str(backup),
        discarded_segments=discarded,
    )
    if off == 0:  # unusable header: set the whole file aside
        scan.path.rename(scan.path.with_name(scan.path.name + ".discarded"))
        scans.pop()
        return
    if scan.sealed and off >= scan.end:  # a lost successor: nothing here to cut
        return
    _zero_from(scan.path, off)
    scan.end = off
    scan.problem = None
    scan.sealed = False


def _cut_tail(path: Path, off: int, reason: str, logger: Logger) -> None:
    """Zero a torn tail so stale bytes behind it can never be parsed later."""
    with open(path, "rb") as f:
        f.seek(off)
        tail = f.read()
    nonzero = len(tail) - tail.count(0)
    logger.warning(
        "wal_torn_tail_truncated",
        file=str(path),
        offset=off,
        reason=reason,
        cut_bytes=len(tail.rstrip(b"\0")),
        nonzero_bytes=nonzero,
    )
    _zero_from(path, off, len(tail.rstrip(b"\0")))


def _zero_from(path: Path, off: int, length: int | None = None) -> None:
    if length is None:
        length = os.path.getsize(path) - off
    if length <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(length), off)
        os.fdatasync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Offline tools (read-only)


@dataclass
class SegmentReport:
    file: str
    seq: int
    size: int
    records: int
    valid_bytes: int
    sealed: bool


@dataclass
class PartitionReport:
    partition: int
    first_index: int  # first live entry (0 if none)
    last_index: int  # last live entry, or the snapshot index if none
    snapshot_index: int
    hard_state: HardState
    history_entries: int  # entries kept below the snapshot


@dataclass
class VerifyReport:
    """What `verify` found. ok is False only for damage that open() would refuse."""

    directory: str
    segments: list[SegmentReport]
    records: int
    partitions: dict[int, PartitionReport]
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None or self.problem.tail


def verify(directory: str | Path, dir_id: bytes | None = None) -> VerifyReport:
    """Check every segment like `open` would, without modifying anything.

    `dir_id`: the data dir's id (IDENTITY); segments of another dir are then
    reported as corruption, as `open` does.
    """
    directory = Path(directory)
    segs = list_segments(directory)
    replayer = Replayer()
    reports: list[SegmentReport] = []
    problem: Problem | None = first_bad_header(segs, dir_id)
    torn: Problem | None = None
    if problem is not None:
        segs = []  # reported as is: the header pre-pass names the file
    for _, scan, found in scan_segments(segs, replayer, dir_id):
        reports.append(
            SegmentReport(str(scan.path), scan.seq, scan.size, scan.records, scan.end,
                          scan.sealed)
        )
        if found is not None and found.tail:
            torn = found
        elif found is not None:
            problem = found
            break
    parts, replay_problem = replayer.finish()
    problem = problem or replay_problem or torn
    preports = {}
    for p, plog in parts.items():
        preports[p] = PartitionReport(
            p,
            plog.entries[0].index if plog.entries else 0,
            plog.last_index(),
            plog.snapshot_index,
            plog.hard_state,
            len(plog.before_snapshot),
        )
    return VerifyReport(str(directory), reports, sum(r.records for r in reports), preports, problem)


@dataclass(frozen=True)
class DumpedRecord:
    """One WAL record in readable form (`str()` gives a one-line description)."""

    file: str
    offset: int
    kind: RecordKind
    partition: int
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    last_index: int = 0
    restore: bool = False
    synced_end: int = 0

    def __str__(self) -> str:
        where = f"{Path(self.file).name}@{self.offset}"
        if self.kind == RecordKind.ENTRY:
            es = " ".join(f"{e.term}/{e.index}:{len(e.data)}B" for e in self.entries)
            return f"{where} p{self.partition} ENTRY [{es}]"
        if self.kind == RecordKind.HARD_STATE:
            hs = self.hard_state
            assert hs is not None
            return (
                f"{where} p{self.partition} HARD_STATE "
                f"term={hs.term} vote={hs.vote} commit={hs.commit}"
            )
        if self.kind == RecordKind.SNAPSHOT_MARKER:
            m = self.snapshot
            assert m is not None
            return (
                f"{where} p{self.partition} SNAPSHOT_MARKER index={m.index} term={m.term} "
                f"last={self.last_index} voters={list(m.conf_state.voters)}"
                + (" restore" if self.restore else "")
            )
        if self.kind == RecordKind.SYNC_MARK:
            return f"{where} SYNC_MARK durable_to={self.synced_end}"
        if self.kind == RecordKind.LOG_END:
            return f"{where} p{self.partition} LOG_END last={self.last_index}"
        return f"{where} SEAL"


def dump(
    directory: str | Path, partition: int | None = None, from_index: int = 0
) -> Iterator[DumpedRecord]:
    """Yield the WAL's good records in order (read-only), filtered.

    Args:
        partition: only this partition's records (SEALs are always shown).
        from_index: hide entries below this index (ENTRY records with none left
            are skipped).

    Reading stops at the first bad record; run `verify` to see why.
    """
    for seq, path in list_segments(Path(directory)):
        out: list[DumpedRecord] = []

        def visit(
            off: int,
            kind: RecordKind,
            part: int,
            value: Any,
            path: Path = path,
            out: list[DumpedRecord] = out,
        ) -> None:
            if partition is not None and part != partition and kind not in _SEGMENT_KINDS:
                return
            f = str(path)
            if kind == RecordKind.ENTRY:
                es = tuple(e for e in value if e.index >= from_index)
                if es:
                    out.append(DumpedRecord(f, off, kind, part, entries=es))
            elif kind == RecordKind.HARD_STATE:
                out.append(DumpedRecord(f, off, kind, part, hard_state=value))
            elif kind == RecordKind.SNAPSHOT_MARKER:
                meta, last, restore = value
                out.append(
                    DumpedRecord(
                        f, off, kind, part, snapshot=meta, last_index=last, restore=restore
                    )
                )
            elif kind == RecordKind.SYNC_MARK:
                out.append(DumpedRecord(f, off, kind, part, synced_end=value))
            elif kind == RecordKind.LOG_END:
                out.append(DumpedRecord(f, off, kind, part, last_index=value))
            else:
                out.append(DumpedRecord(f, off, kind, part))

        scan = read_segment(path, seq, None, visit)
        yield from out
        if scan.problem is not None:
            return
