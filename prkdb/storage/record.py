"""Byte layout of WAL segments and records (see docs/storage.md).

Theory of operation
-------------------
A segment file is a 32-byte header followed by records packed back to back
(no alignment padding) and then zeros up to the preallocated size. All
integers are little-endian.

Segment header, version 2 (64 bytes; version 1, 32 bytes, is still read)::

    0  8s  magic  b"PRKDBWAL"
    8  u32 version (2)
    12 u32 reserved (0)
    16 u64 sequence number (also the file name, hex)
    24 u64 size of the file in bytes, as preallocated (a shorter or longer
           file was truncated or extended behind our back)
    32 16s data dir id (identity.py): a segment copied from another data dir
           or node is recognised
    48 12x reserved (0)
    60 u32 crc32 of bytes 0..60

Version 1 headers (data dirs from before identities) have no size and no
data dir id: magic, version, u32 0, u64 seq, u32 0, u32 crc32 of 0..28.

Record (16-byte header + payload)::

    0  u32 length     payload bytes (not counting the header)
    4  u32 crc        zlib.crc32 of header bytes 8..16 followed by the payload
    8  u32 partition  Raft partition id
    12 u8  kind       RecordKind (never 0, so a zeroed header is "end of data")
    13 u8  flags      kind-specific (SNAPSHOT_MARKER: bit 0 = RESTORE)
    14 u16 reserved   0

The CRC covers partition, kind and flags as well as the payload, so a flipped
bit anywhere in a record (length included: it moves the checked range) is
detected. Payloads by kind:

- ENTRY: ``u64 first_index, u32 count`` then per entry ``u64 term, u8 kind,
  u32 data_len, data``. Entries of one record are consecutive; replaying the
  record first discards the partition's entries from ``first_index`` on.
- HARD_STATE: ``u64 term, u64 vote, u64 commit``.
- SNAPSHOT_MARKER: ``u64 index, u64 term, u64 last_index, u32 n_voters,
  n_voters * u64``. ``last_index`` is the partition's last log index when the
  marker was written: replay drops entries above it (they were stale then).
  With the RESTORE flag (a snapshot received from a leader that did not match
  our log) replay drops every entry; without it (local compaction) entries
  <= index are kept only as history for an older-snapshot fallback.
- SEAL: empty; the last record of every segment but the newest. A non-last
  segment without a seal lost its tail, which is corruption, not a torn write.
  A seal is written only once the next segment exists on disk, so a newest
  segment that is sealed lost its successor.
- LOG_END: ``u64 last_index``: in every preamble, per partition, its last
  log index when the segment was started. Replay checks that the segments
  before it reached exactly that index, so a missing (or replaced) middle
  segment is found even when no later entry of the partition would show
  the gap.
- SYNC_MARK (partition field 0xFFFFFFFF): ``u64 seq, u64 synced_end``:
  written right after an fdatasync of this segment returned, it says that
  bytes [0, synced_end) of segment ``seq`` are durable. A bad record below
  the highest such claim (read before it, or found by scanning past it) was
  acknowledged, so it is corruption and never a torn tail.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prkdb.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

MAGIC = b"PRKDBWAL"
VERSION = 2
VERSION_1 = 1

SEGMENT_HEADER_V1 = struct.Struct("<8sIIQII")
SEGMENT_HEADER_V1_SIZE = SEGMENT_HEADER_V1.size  # 32
SEGMENT_HEADER = struct.Struct("<8sIIQQ16s12xI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 64
NO_DIR_ID = bytes(16)

RECORD_HEADER = struct.Struct("<IIIBBH")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 16
# The part of the header the CRC covers (partition, kind, flags, reserved).
_CRC_HEAD = struct.Struct("<IBBH")

ENTRIES_HEAD = struct.Struct("<QI")
ENTRY_HEAD = struct.Struct("<QBI")
HARD_STATE = struct.Struct("<QQQ")
MARKER_HEAD = struct.Struct("<QQQI")

FLAG_RESTORE = 0x01

MAX_RECORD_PAYLOAD = 0xFFFF_FFFF

MARK_PARTITION = 0xFFFF_FFFF
SYNC_MARK = struct.Struct("<QQ")


class RecordKind(enum.IntEnum):
    """What a record holds. 0 is reserved: a zeroed header means end of data."""

    ENTRY = 1
    HARD_STATE = 2
    SNAPSHOT_MARKER = 3
    SEAL = 4
    SYNC_MARK = 5
    LOG_END = 6


ENTRY_KINDS: tuple[EntryKind, ...] = tuple(EntryKind)
"""EntryKind by value, a tuple lookup is cheaper than the enum call at replay."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """A decoded segment header; `size` and `dir_id` are None for version 1."""

    version: int
    seq: int
    size: int | None
    dir_id: bytes | None

    @property
    def length(self) -> int:
        """Bytes the header occupies (records start here)."""
        return SEGMENT_HEADER_SIZE if self.version == VERSION else SEGMENT_HEADER_V1_SIZE


def encode_segment_header(seq: int, size: int, dir_id: bytes = NO_DIR_ID) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, VERSION, 0, seq, size, dir_id, 0)[:60]
    return head + struct.pack("<I", zlib.crc32(head))


def encode_segment_header_v1(seq: int) -> bytes:
    """A version 1 header (for tests of reading old data dirs)."""
    head = SEGMENT_HEADER_V1.pack(MAGIC, VERSION_1, 0, seq, 0, 0)[:28]
    return head + struct.pack("<I", zlib.crc32(head))


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader | None:
    """The header at the start of `buf`, or None if it is not a valid one."""
    if len(buf) < SEGMENT_HEADER_V1_SIZE or bytes(buf[:8]) != MAGIC:
        return None
    (version,) = struct.unpack_from("<I", buf, 8)
    if version == VERSION_1:
        _, _, _, seq, _, crc = SEGMENT_HEADER_V1.unpack_from(buf, 0)
        if zlib.crc32(bytes(buf[:28])) != crc:
            return None
        return SegmentHeader(VERSION_1, int(seq), None, None)
    if version != VERSION or len(buf) < SEGMENT_HEADER_SIZE:
        return None
    _, _, reserved, seq, size, dir_id, crc = SEGMENT_HEADER.unpack_from(buf, 0)
    if zlib.crc32(bytes(buf[:60])) != crc or reserved != 0 or any(buf[48:60]):
        return None
    return SegmentHeader(VERSION, int(seq), int(size), bytes(dir_id))


def frame(partition: int, kind: RecordKind, payload: bytes, flags: int = 0) -> bytes:
    """Wrap a payload in a record header with its CRC."""
    if len(payload) > MAX_RECORD_PAYLOAD:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds 4 GiB")
    head = _CRC_HEAD.pack(partition, kind, flags, 0)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return struct.pack("<II", len(payload), crc) + head + payload


def encode_entries(partition: int, entries: Sequence[Entry]) -> bytes:
    """One ENTRY record for a batch of consecutive entries (caller checked)."""
    parts = [ENTRIES_HEAD.pack(entries[0].index, len(entries))]
    pack = ENTRY_HEAD.pack
    for e in entries:
        parts.append(pack(e.term, e.kind, len(e.data)))
        parts.append(e.data)
    return frame(partition, RecordKind.ENTRY, b"".join(parts))


def encode_hard_state(partition: int, hs: HardState) -> bytes:
    return frame(partition, RecordKind.HARD_STATE, HARD_STATE.pack(hs.term, hs.vote, hs.commit))


def encode_marker(partition: int, meta: SnapshotMeta, last_index: int, restore: bool) -> bytes:
    voters = meta.conf_state.voters
    payload = MARKER_HEAD.pack(meta.index, meta.term, last_index, len(voters)) + struct.pack(
        f"<{len(voters)}Q", *voters
    )
    return frame(partition, RecordKind.SNAPSHOT_MARKER, payload, FLAG_RESTORE if restore else 0)


LOG_END = struct.Struct("<Q")


def encode_log_end(partition: int, last_index: int) -> bytes:
    return frame(partition, RecordKind.LOG_END, LOG_END.pack(last_index))


def encode_seal() -> bytes:
    return frame(0, RecordKind.SEAL, b"")


def encode_sync_mark(seq: int, synced_end: int) -> bytes:
    return frame(MARK_PARTITION, RecordKind.SYNC_MARK, SYNC_MARK.pack(seq, synced_end))


SYNC_MARK_SIZE = RECORD_HEADER_SIZE + SYNC_MARK.size
# Bytes 8..16 of every SYNC_MARK record (partition, kind, flags, reserved):
# what a scan past a bad record looks for.
SYNC_MARK_SIGNATURE = _CRC_HEAD.pack(MARK_PARTITION, RecordKind.SYNC_MARK, 0, 0)


def decode_sync_mark(buf: bytes | memoryview, start: int) -> tuple[int, int]:
    """(seq, synced_end) of a SYNC_MARK payload."""
    seq, end = SYNC_MARK.unpack_from(buf, start)
    return int(seq), int(end)


def find_sync_marks(buf: bytes, start: int, seq: int) -> Iterator[tuple[int, int]]:
    """(offset, synced_end) of every CRC-valid SYNC_MARK of segment `seq` at or after `start`.

    Used only after a bad record: the bytes there cannot be parsed in order,
    so this looks for the marks' fixed signature and checks each candidate's
    length and CRC (a false match needs a 32-bit CRC collision as well).
    """
    pos = buf.find(SYNC_MARK_SIGNATURE, start + 8)
    while pos != -1:
        off = pos - 8
        length, crc = struct.unpack_from("<II", buf, off)
        pend = pos + 8 + SYNC_MARK.size
        if length == SYNC_MARK.size and pend <= len(buf) and zlib.crc32(
                buf[pos + 8:pend], zlib.crc32(buf[pos:pos + 8])) == crc:
            mseq, end = SYNC_MARK.unpack_from(buf, pos + 8)
            if mseq == seq and end <= off:
                yield off, int(end)
        pos = buf.find(SYNC_MARK_SIGNATURE, pos + 1)


def decode_entries(buf: bytes | memoryview, start: int, end: int) -> list[Entry]:
    """Decode an ENTRY payload occupying buf[start:end].

    Raises:
        ValueError: the payload does not parse exactly (a CRC-valid record
            never does this, so the caller treats it as corruption).
    """
    first, count = ENTRIES_HEAD.unpack_from(buf, start)
    p = start + ENTRIES_HEAD.size
    out = []
    unpack = ENTRY_HEAD.unpack_from
    kinds = ENTRY_KINDS
    for i in range(count):
        term, kind, n = unpack(buf, p)
        p += 13
        out.append(Entry(term, first + i, kinds[kind], bytes(buf[p : p + n])))
        p += n
    if p != end:
        raise ValueError(f"entry payload length mismatch ({p - start} != {end - start})")
    return out


def decode_hard_state(buf: bytes | memoryview, start: int) -> HardState:
    term, vote, commit = HARD_STATE.unpack_from(buf, start)
    return HardState(term, vote, commit)


def decode_marker(buf: bytes | memoryview, start: int) -> tuple[SnapshotMeta, int]:
    """Return (meta, last_index) of a SNAPSHOT_MARKER payload."""
    index, term, last, n = MARKER_HEAD.unpack_from(buf, start)
    voters = struct.unpack_from(f"<{n}Q", buf, start + MARKER_HEAD.size)
    return SnapshotMeta(index, term, ConfState(tuple(voters))), last
