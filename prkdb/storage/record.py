"""Byte layout of WAL segments and records (see docs/storage.md).

Theory of operation
-------------------
A segment file is a 32-byte header followed by records packed back to back
(no alignment padding) and then zeros up to the preallocated size. All
integers are little-endian.

Segment header (32 bytes)::

    0  8s  magic  b"PRKDBWAL"
    8  u32 version (1)
    12 u32 reserved (0)
    16 u64 sequence number (also the file name, hex)
    24 u32 reserved (0)
    28 u32 crc32 of bytes 0..28

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
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence

from prkdb.raft.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

MAGIC = b"PRKDBWAL"
VERSION = 1

SEGMENT_HEADER = struct.Struct("<8sIIQII")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 32

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


class RecordKind(enum.IntEnum):
    """What a record holds. 0 is reserved: a zeroed header means end of data."""

    ENTRY = 1
    HARD_STATE = 2
    SNAPSHOT_MARKER = 3
    SEAL = 4


ENTRY_KINDS: tuple[EntryKind, ...] = tuple(EntryKind)
"""EntryKind by value, a tuple lookup is cheaper than the enum call at replay."""


def encode_segment_header(seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, VERSION, 0, seq, 0, 0)[:28]
    return head + struct.pack("<I", zlib.crc32(head))


def decode_segment_header(buf: bytes | memoryview) -> int | None:
    """Return the sequence number, or None if the header is not valid."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        return None
    magic, version, _, seq, _, crc = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION or zlib.crc32(bytes(buf[:28])) != crc:
        return None
    return int(seq)


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


def encode_seal() -> bytes:
    return frame(0, RecordKind.SEAL, b"")


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
