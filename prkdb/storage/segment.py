"""One preallocated WAL segment file, written through `mmap`.

Theory of operation
-------------------
A segment is created under a temporary name, preallocated to its full size
(`posix_fallocate`, or zeros written where it is unsupported; never a sparse
file, so later writes never hit ENOSPC or SIGBUS), given its
header, fsynced, renamed to ``<seq as 16 hex digits>.wal`` and the directory
fsynced. So a file with a final name always has a valid header; a crash
during creation leaves only a ``.tmp`` file, which `open` deletes.

Appends copy bytes into the shared mapping at `write_off`; durability comes
from `os.fdatasync(fd)` on the same file (the kernel writes back dirty mapped
pages; unlike `mmap.flush` it releases the GIL). `synced_off` is the offset up
to which an fdatasync is known to have completed.

After an fdatasync the WAL writes a SYNC_MARK record saying how far the
segment is durable (record.py); `mark_end` is the offset just after the
newest one, so a sync that covered nothing but that mark writes no other.

Invariants: header length <= synced_off <= write_off <= size; bytes in
[write_off, size) are zero.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from pathlib import Path

from prkdb.storage.record import NO_DIR_ID, SEGMENT_HEADER_SIZE, encode_segment_header

SUFFIX = ".wal"
TMP_SUFFIX = ".wal.tmp"
PAGE = mmap.PAGESIZE


def segment_name(seq: int) -> str:
    return f"{seq:016x}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """Sequence number of a segment file name, None for other files."""
    if not name.endswith(SUFFIX) or len(name) != 16 + len(SUFFIX):
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None


def fsync_dir(directory: Path) -> None:
    """Make a rename/create/unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_ZEROS = bytes(1 << 20)


def _preallocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of real blocks, or raise (ENOSPC) now.

    A sparse file would do until the disk fills: then a write to the mapping
    (or even a read, on tmpfs) gets SIGBUS and the process dies with no word
    of why. Where fallocate is not supported we write zeros instead; any
    other error, ENOSPC above all, is the caller's (fail-stop, named).
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno not in _NO_FALLOCATE:
            raise
    off = 0
    while off < size:
        n = os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - off)], off)
        off += n


class Segment:
    """A segment file plus, while it may still be written or synced, its mapping.

    Old segments found at open are kept with `mm is None` (metadata only):
    the WAL reads them once at recovery and afterwards only deletes them.
    """

    __slots__ = ("fd", "mark_end", "max_index", "mm", "path", "pins", "seq", "size",
                 "synced_off", "write_off")

    def __init__(self, path: Path, seq: int, size: int, write_off: int) -> None:
        self.path = path
        self.seq = seq
        self.size = size  # bytes, whole file
        self.write_off = write_off  # next byte to write
        self.synced_off = write_off  # everything before it is durable
        self.mark_end = 0  # offset just after the newest SYNC_MARK (0: none yet)
        self.fd: int | None = None
        self.mm: mmap.mmap | None = None
        # partition -> highest entry index stored in this segment. A segment
        # can go once every value is <= that partition's release index.
        self.max_index: dict[int, int] = {}
        # Number of sync() calls currently fdatasync-ing this segment; a
        # pinned segment is never closed or deleted under their feet.
        self.pins = 0

    @classmethod
    def create(cls, directory: Path, seq: int, size: int,
               dir_id: bytes = NO_DIR_ID) -> Segment:
        """Create, preallocate and durably name a new, empty segment.

        The header records the size and the data dir id (record.py).
        """
        size = max(size, PAGE)
        size = -(-size // PAGE) * PAGE
        tmp = directory / (segment_name(seq) + ".tmp")
        final = directory / segment_name(seq)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _preallocate(fd, size)
            os.pwrite(fd, encode_segment_header(seq, size, dir_id), 0)
            os.fsync(fd)
            os.rename(tmp, final)
            fsync_dir(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        seg = cls(final, seq, size, SEGMENT_HEADER_SIZE)
        seg._map(fd)
        return seg

    @classmethod
    def open_for_append(cls, path: Path, seq: int, write_off: int) -> Segment:
        """Reopen the newest segment found at recovery to continue appending."""
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        seg = cls(path, seq, size, write_off)
        seg._map(fd)
        return seg

    def _map(self, fd: int) -> None:
        self.fd = fd
        self.mm = mmap.mmap(fd, self.size, access=mmap.ACCESS_WRITE)

    def room(self) -> int:
        return self.size - self.write_off

    def write(self, data: bytes) -> None:
        """Copy `data` at write_off. Caller holds the WAL lock and checked room()."""
        assert self.mm is not None
        off = self.write_off
        self.mm[off : off + len(data)] = data
        self.write_off = off + len(data)

    def datasync(self) -> None:
        """fdatasync the file; runs without any lock (the segment is pinned)."""
        assert self.fd is not None
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Drop the mapping and descriptor (data stays in the page cache/disk)."""
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
