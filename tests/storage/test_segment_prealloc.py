"""A segment is never a sparse file: a full disk is an ENOSPC at creation, not a SIGBUS later.

Found by the disk-full fault test: on a full tmpfs, `posix_fallocate` failed
with ENOSPC, the old code took that for "fallocate unsupported" and made a
sparse file with `ftruncate`; the next write to its mapping (or a read of it
through mmap, by `prkctl wal verify`) killed the process with SIGBUS.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from prkdb.storage import segment as segmod
from prkdb.storage.recovery import read_segment
from prkdb.storage.segment import Segment, segment_name


def _fail_fallocate(code: int):
    def fallocate(fd: int, off: int, size: int) -> None:
        raise OSError(code, os.strerror(code))
    return fallocate


def test_enospc_at_preallocation_is_raised_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segmod.os, "posix_fallocate", _fail_fallocate(errno.ENOSPC))
    with pytest.raises(OSError) as info:
        Segment.create(tmp_path, 1, 1 << 20)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_without_fallocate_the_blocks_are_written_not_left_as_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segmod.os, "posix_fallocate", _fail_fallocate(errno.EOPNOTSUPP))
    size = 3 * (1 << 20) + 4096
    seg = Segment.create(tmp_path, 7, size)
    try:
        st = os.stat(tmp_path / segment_name(7))
        assert st.st_size == size
        assert st.st_blocks * 512 >= size  # allocated, not sparse
        seg.write(b"x" * 100)
    finally:
        seg.close()


def test_recovery_reads_a_sparse_segment_without_mapping_it(tmp_path: Path) -> None:
    # A sparse segment (left by an older version) reads as header + zeros.
    seg = Segment.create(tmp_path, 3, 1 << 20)
    seg.close()
    path = tmp_path / segment_name(3)
    header = path.read_bytes()[:64]
    path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 20)  # all holes
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    scan = read_segment(path, 3, None)
    assert scan.problem is None and scan.records == 0 and scan.size == 1 << 20
