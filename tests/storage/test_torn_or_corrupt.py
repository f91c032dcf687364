"""Torn tail or corruption? Only provably unfinished writes may be cut (issue 13).

A crash is played by a child process that appends and exits with os._exit
(no close, no sync of the last batch), as kill -9 would; the file then
holds exactly what the page cache had.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prkdb.raft.types import Entry
from prkdb.storage import WalCorruptionError, WriteAheadLog, dump, verify
from prkdb.storage import record as rec
from prkdb.storage.record import RecordKind
from tests.storage.helpers import RecordingLogger, flip_bit, segment_paths

SEG = 4096
ROOT = Path(__file__).resolve().parents[2]


def ents(first: int, n: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 251]) * size) for i in range(first, first + n)]


def crash_after(path: Path, synced: int, unsynced: int) -> None:
    """A child appends `synced` entries and syncs, appends `unsynced` more, dies."""
    code = textwrap.dedent(f"""
        import os
        from prkdb.raft.types import Entry
        from prkdb.storage import WriteAheadLog
        wal = WriteAheadLog.open({str(path)!r}, segment_size={SEG})
        for i in range(1, {synced} + 1):
            wal.append_entries(1, [Entry(1, i, data=bytes([i % 251]) * 20)])
        wal.sync()
        for i in range({synced} + 1, {synced} + {unsynced} + 1):
            wal.append_entries(1, [Entry(1, i, data=bytes([i % 251]) * 20)])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def entry_records(path: Path) -> list[tuple[str, int, int]]:
    """(file, offset, last index) of every ENTRY record."""
    return [(r.file, r.offset, r.entries[-1].index) for r in dump(path)
            if r.kind == RecordKind.ENTRY]


def test_damage_after_the_last_sync_is_a_torn_tail(tmp_path: Path) -> None:
    crash_after(tmp_path, synced=20, unsynced=5)
    records = entry_records(tmp_path)
    file, off, _ = records[-3]  # entry 23: appended after the sync, never acknowledged
    flip_bit(Path(file), off + 20)
    report = verify(tmp_path)
    assert report.ok and report.problem is not None and report.problem.tail
    log = RecordingLogger()
    with WriteAheadLog.open(tmp_path, segment_size=SEG, logger=log) as wal:
        assert [e.index for e in wal.recovered()[1].entries] == list(range(1, 23))
    (cut,) = log.named("wal_torn_tail_truncated")
    assert (cut["file"], cut["offset"]) == (file, off)


def test_damage_before_the_last_sync_is_corruption_even_in_the_newest_segment(
        tmp_path: Path) -> None:
    crash_after(tmp_path, synced=20, unsynced=5)
    file, off, _ = entry_records(tmp_path)[-10]  # synced (acknowledgeable)
    flip_bit(Path(file), off + 20)
    report = verify(tmp_path)
    assert not report.ok and report.problem is not None
    assert (report.problem.file, report.problem.offset) == (file, off)
    with pytest.raises(WalCorruptionError, match="durable") as info:
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    assert (str(info.value.path), info.value.offset) == (file, off)


def test_a_zeroed_page_in_the_synced_part_is_not_the_end_of_the_data(tmp_path: Path) -> None:
    # Zeros where a record header should be used to read as "end of data":
    # every record after them was dropped in silence.
    with WriteAheadLog.open(tmp_path, segment_size=1 << 20) as wal:
        for i in range(1, 300):
            wal.append_entries(1, ents(i, 1, size=100))
            if i % 10 == 0:
                wal.sync()
    (seg,) = segment_paths(tmp_path)
    with open(seg, "r+b") as f:
        f.seek(4096)
        f.write(bytes(4096))
    with pytest.raises(WalCorruptionError) as info:
        WriteAheadLog.open(tmp_path, segment_size=1 << 20)
    assert info.value.path == seg and 4096 - 200 < info.value.offset <= 8192
    assert not verify(tmp_path).ok


def test_a_deleted_newest_segment_is_detected(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        for i in range(1, 200):
            wal.append_entries(1, ents(i, 1))
    segs = segment_paths(tmp_path)
    assert len(segs) >= 3
    segs[-1].unlink()
    with pytest.raises(WalCorruptionError, match="is missing"):
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    assert not verify(tmp_path).ok


def test_a_crash_between_creating_a_segment_and_sealing_the_last_one_recovers(
        tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        for i in range(1, 200):
            wal.append_entries(1, ents(i, 1))
    segs = segment_paths(tmp_path)
    kept = [e for r in dump(tmp_path) if r.file != str(segs[-1]) for e in r.entries]
    # Undo the last rollover half-way: the newest file has only its header,
    # the one before it has no seal yet.
    header_len = rec.decode_segment_header(segs[-1].read_bytes()).length  # type: ignore[union-attr]
    with open(segs[-1], "r+b") as f:
        f.seek(header_len)
        f.write(bytes(SEG - header_len))
    seal = [r for r in dump(tmp_path) if r.file == str(segs[-2])][-1]
    assert seal.kind == RecordKind.SEAL
    with open(segs[-2], "r+b") as f:
        f.seek(seal.offset)
        f.write(bytes(rec.RECORD_HEADER_SIZE))
    assert verify(tmp_path).ok
    log = RecordingLogger()
    with WriteAheadLog.open(tmp_path, segment_size=SEG, logger=log) as wal:
        assert wal.recovered()[1].entries == kept
        assert log.named("wal_rollover_finished")
        wal.append_entries(1, ents(kept[-1].index + 1, 1, term=2))
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        assert wal.recovered()[1].entries == kept + ents(kept[-1].index + 1, 1, term=2)


@pytest.mark.parametrize("cut", [1, 4096])
def test_a_truncated_newest_segment_is_corruption(tmp_path: Path, cut: int) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=1 << 20) as wal:
        wal.append_entries(1, ents(1, 50))
    (seg,) = segment_paths(tmp_path)
    os.truncate(seg, seg.stat().st_size - cut)
    with pytest.raises(WalCorruptionError, match="truncated or extended"):
        WriteAheadLog.open(tmp_path, segment_size=1 << 20)


def test_a_segment_of_another_data_dir_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with WriteAheadLog.open(a, segment_size=SEG, data_dir_id=b"A" * 16) as wal:
        wal.append_entries(1, ents(1, 5))
    with WriteAheadLog.open(b, segment_size=SEG, data_dir_id=b"B" * 16) as wal:
        wal.append_entries(1, ents(1, 5))
    (sa,), (sb,) = segment_paths(a), segment_paths(b)
    shutil.copyfile(sb, sa)
    with pytest.raises(WalCorruptionError, match="another node or data dir") as info:
        WriteAheadLog.open(a, segment_size=SEG, data_dir_id=b"A" * 16)
    assert (b"B" * 16).hex() in str(info.value)
    assert not verify(a, dir_id=b"A" * 16).ok
    with WriteAheadLog.open(b, segment_size=SEG, data_dir_id=b"B" * 16) as wal:
        assert len(wal.recovered()[1].entries) == 5


def test_a_version_1_segment_from_before_identities_is_still_read(tmp_path: Path) -> None:
    body = b"".join(rec.encode_entries(1, ents(i, 1)) for i in range(1, 11))
    data = rec.encode_segment_header_v1(1) + body
    (tmp_path / "0000000000000001.wal").write_bytes(data + bytes(SEG - len(data)))
    with WriteAheadLog.open(tmp_path, segment_size=SEG, data_dir_id=b"C" * 16) as wal:
        assert [e.index for e in wal.recovered()[1].entries] == list(range(1, 11))
        wal.append_entries(1, ents(11, 200))
    with WriteAheadLog.open(tmp_path, segment_size=SEG, data_dir_id=b"C" * 16) as wal:
        assert [e.index for e in wal.recovered()[1].entries] == list(range(1, 211))


def test_every_sync_leaves_a_mark_and_an_idle_wal_asks_to_sync_it(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path, segment_size=1 << 20)
    try:
        wal.append_entries(1, ents(1, 3))
        assert wal.needs_sync()
        wal.sync()
        assert wal.needs_sync()  # the mark of that sync is not durable yet
        wal.sync()
        assert not wal.needs_sync()  # a sync of nothing but a mark writes no new mark
        marks = [r.synced_end for r in dump(tmp_path) if r.kind == RecordKind.SYNC_MARK]
        (first_entry,) = [r.offset for r in dump(tmp_path) if r.kind == RecordKind.ENTRY]
        assert len(marks) == 1 and marks[0] > first_entry
    finally:
        wal.close()


def test_a_missing_middle_segment_holding_the_end_of_a_log_is_detected(tmp_path: Path) -> None:
    # Partition 2's last entries live only in one middle segment; no later
    # entry of partition 2 would reveal the gap, the preamble's LOG_END does.
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        for i in range(1, 60):
            wal.append_entries(1, ents(i, 1))
        wal.append_entries(2, ents(1, 30))
        for i in range(60, 200):
            wal.append_entries(1, ents(i, 1))
    holders = {r.file for r in dump(tmp_path) if r.kind == RecordKind.ENTRY and r.partition == 2}
    (middle,) = holders
    assert Path(middle) not in (segment_paths(tmp_path)[0], segment_paths(tmp_path)[-1])
    Path(middle).unlink()
    with pytest.raises(WalCorruptionError, match="partition 2: its log ended at index 30"):
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    assert not verify(tmp_path).ok
