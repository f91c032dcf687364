"""WAL behaviour: append/replay rules, rollover, deletion, corruption handling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from prkdb.raft.types import ConfState, Entry, HardState, SnapshotMeta
from prkdb.storage import (
    InvalidAppendError,
    WalClosedError,
    WalCorruptionError,
    WriteAheadLog,
    dump,
    verify,
)
from prkdb.storage.record import RecordKind
from tests.storage.helpers import RecordingLogger, flip_bit, record_offsets, segment_paths

SEG = 4096


def ents(first: int, n: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 251]) * size) for i in range(first, first + n)]


def fill(wal: WriteAheadLog, partitions: int = 2, n: int = 150) -> None:
    for i in range(1, n + 1):
        for p in range(1, partitions + 1):
            wal.append_entries(p, ents(i, 1))
    wal.sync()


def test_empty_directory_opens_empty(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path / "wal", segment_size=SEG) as wal:
        assert wal.recovered() == {}
        assert len(wal.segment_files()) == 1


def test_replay_rules_truncation_hard_state_marker(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        wal.append_entries(7, ents(1, 10))
        wal.append_entries(7, ents(6, 2, term=2))  # truncates 6..10
        wal.append_hard_state(7, HardState(2, 3, 4))
        wal.append_hard_state(7, HardState(2, 3, 5))
        wal.append_snapshot_marker(7, SnapshotMeta(3, 1, ConfState((3, 1, 2))))
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        plog = wal.recovered()[7]
        assert plog.hard_state == HardState(2, 3, 5)
        assert plog.snapshot == SnapshotMeta(3, 1, ConfState((1, 2, 3)))
        assert [(e.index, e.term) for e in plog.entries] == [(4, 1), (5, 1), (6, 2), (7, 2)]
        assert [e.index for e in plog.before_snapshot] == [1, 2, 3]
        assert plog.entries_after(1) == ents(2, 4) + ents(6, 2, term=2)


def test_restore_marker_drops_diverging_log(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        wal.append_entries(1, ents(1, 10, term=1))
        # Leader's snapshot at 8 has term 3: our entry 8 (term 1) diverges.
        wal.append_snapshot_marker(1, SnapshotMeta(8, 3))
        with pytest.raises(InvalidAppendError):
            wal.append_entries(1, ents(10, 1, term=3))  # gap after the snapshot
        wal.append_entries(1, ents(9, 1, term=3))
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        plog = wal.recovered()[1]
        assert plog.snapshot == SnapshotMeta(8, 3)
        assert plog.entries == ents(9, 1, term=3)
        assert plog.before_snapshot == []


def test_invalid_appends_write_nothing(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        with pytest.raises(InvalidAppendError):
            wal.append_entries(1, ents(2, 1))  # gap: log is empty
        with pytest.raises(InvalidAppendError):
            wal.append_entries(1, [Entry(1, 1), Entry(1, 3)])
        wal.append_entries(1, ents(1, 5))
        wal.append_snapshot_marker(1, SnapshotMeta(4, 1))
        with pytest.raises(InvalidAppendError):
            wal.append_snapshot_marker(1, SnapshotMeta(3, 1))
        with pytest.raises(InvalidAppendError):
            wal.append_entries(1, ents(4, 1))  # at the snapshot index
        with pytest.raises(InvalidAppendError):
            wal.release(1, 5)
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        assert [e.index for e in wal.recovered()[1].entries] == [5]
    with pytest.raises(WalClosedError):
        wal.append_entries(1, ents(6, 1))


def test_rollover_and_reopen_keeps_everything(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        fill(wal, partitions=3, n=200)
        assert len(wal.segment_files()) > 5
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        for p in (1, 2, 3):
            assert wal.recovered()[p].entries == [e for i in range(1, 201) for e in ents(i, 1)]
        wal.append_entries(1, ents(201, 1))  # appends continue after reopen
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        assert wal.recovered()[1].last_index() == 201


def test_oversized_record_gets_its_own_segment(tmp_path: Path) -> None:
    big = [Entry(1, 1, data=b"b" * (3 * SEG))]
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        wal.append_entries(1, big)
        wal.append_entries(1, ents(2, 3))
        sizes = [p.stat().st_size for p in wal.segment_files()]
        assert max(sizes) > 3 * SEG
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        assert wal.recovered()[1].entries == big + ents(2, 3)


def test_release_deletes_segments_and_replay_is_unchanged(tmp_path: Path) -> None:
    log = RecordingLogger()
    with WriteAheadLog.open(tmp_path, segment_size=SEG, logger=log) as wal:
        fill(wal, partitions=2, n=300)
        wal.append_hard_state(1, HardState(1, 1, 250))
        wal.append_hard_state(2, HardState(1, 2, 250))
        before = len(wal.segment_files())
        wal.append_snapshot_marker(1, SnapshotMeta(250, 1, ConfState((1, 2, 3))))
        wal.release(1, 250)
        assert len(wal.segment_files()) == before  # partition 2 still pins them
        wal.append_snapshot_marker(2, SnapshotMeta(200, 1))
        wal.release(2, 200)
        after = wal.segment_files()
        assert len(after) < before
        assert log.named("wal_segment_deleted")
        fill(wal, partitions=0)
        wal.append_entries(1, ents(301, 400))  # more rollovers carry the preamble
        wal.release(1, 250)
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        p1, p2 = wal.recovered()[1], wal.recovered()[2]
        assert p1.hard_state == HardState(1, 1, 250)
        assert p1.snapshot == SnapshotMeta(250, 1, ConfState((1, 2, 3)))
        assert [e.index for e in p1.entries] == list(range(251, 701))
        assert p2.hard_state == HardState(1, 2, 250)
        assert p2.snapshot == SnapshotMeta(200, 1)
        assert [e.index for e in p2.entries] == list(range(201, 301))


def _three_segment_wal(path: Path) -> list[Path]:
    with WriteAheadLog.open(path, segment_size=SEG) as wal:
        fill(wal, partitions=1, n=400)
    segs = segment_paths(path)
    assert len(segs) >= 3
    return segs


def test_flipped_bit_in_middle_segment_names_file_and_offset(tmp_path: Path) -> None:
    segs = _three_segment_wal(tmp_path)
    victim = segs[1]
    offsets = record_offsets(tmp_path, victim)
    bad = offsets[len(offsets) // 2]
    flip_bit(victim, bad + 20)
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    with pytest.raises(WalCorruptionError) as info:
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    err = info.value
    assert err.path == victim and err.offset == bad
    assert str(victim) in str(err) and f"offset {bad}" in str(err)
    report = verify(tmp_path)
    assert not report.ok and report.problem is not None
    assert (report.problem.file, report.problem.offset) == (str(victim), bad)
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == digest  # nothing modified


def test_flipped_length_field_is_detected(tmp_path: Path) -> None:
    segs = _three_segment_wal(tmp_path)
    bad = record_offsets(tmp_path, segs[0])[5]
    flip_bit(segs[0], bad + 1, bit=0)  # length field
    with pytest.raises(WalCorruptionError) as info:
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    assert info.value.offset == bad


def test_flipped_bit_in_a_synced_record_of_the_newest_segment_is_corruption(
        tmp_path: Path) -> None:
    # The WAL was closed cleanly: every record is below a sync mark's claim,
    # so a bad one is damage, never a torn write (issue 13).
    segs = _three_segment_wal(tmp_path)
    last = segs[-1]
    entry_offsets = [r.offset for r in dump(tmp_path)
                     if r.file == str(last) and r.kind == RecordKind.ENTRY]
    bad = entry_offsets[-1]
    flip_bit(last, bad + 18)
    report = verify(tmp_path)
    assert not report.ok and report.problem is not None and not report.problem.tail
    assert (report.problem.file, report.problem.offset) == (str(last), bad)
    with pytest.raises(WalCorruptionError, match="durable") as info:
        WriteAheadLog.open(tmp_path, segment_size=SEG)
    assert info.value.path == last and info.value.offset == bad


def test_repair_truncates_at_the_bad_record(tmp_path: Path) -> None:
    segs = _three_segment_wal(tmp_path)
    victim = segs[1]
    bad = record_offsets(tmp_path, victim)[3]
    survivors = [
        e for r in dump(tmp_path) if (r.file, r.offset) < (str(victim), bad) for e in r.entries
    ]
    flip_bit(victim, bad + 25)
    log = RecordingLogger()
    with WriteAheadLog.open(tmp_path, segment_size=SEG, repair=True, logger=log) as wal:
        assert wal.recovered()[1].entries == survivors
    (warn,) = log.named("wal_repaired_by_truncation")
    assert warn["file"] == str(victim) and warn["offset"] == bad
    assert Path(warn["backup"]).exists()
    assert all(Path(p + ".discarded").exists() for p in warn["discarded_segments"])
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:  # clean afterwards
        assert wal.recovered()[1].entries == survivors


def test_lost_tail_of_non_last_segment_is_corruption(tmp_path: Path) -> None:
    segs = _three_segment_wal(tmp_path)
    victim = segs[0]
    seal = [r.offset for r in dump(tmp_path) if r.file == str(victim)][-1]
    with open(victim, "r+b") as f:  # zero the seal: the segment's tail is gone
        f.seek(seal)
        f.write(bytes(16))
    with pytest.raises(WalCorruptionError, match="seal"):
        WriteAheadLog.open(tmp_path, segment_size=SEG)


def test_dump_filters_and_describes(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=SEG) as wal:
        wal.append_entries(1, ents(1, 3))
        wal.append_entries(2, ents(1, 3))
        wal.append_hard_state(1, HardState(1, 1, 2))
        wal.append_snapshot_marker(1, SnapshotMeta(2, 1, ConfState((1, 2))))
    recs = [r for r in dump(tmp_path, partition=1, from_index=2)
            if r.kind != RecordKind.SYNC_MARK]
    kinds = [r.kind for r in recs]
    assert kinds == [RecordKind.ENTRY, RecordKind.HARD_STATE, RecordKind.SNAPSHOT_MARKER]
    assert [e.index for e in recs[0].entries] == [2, 3]
    assert "p1 ENTRY [1/2:20B 1/3:20B]" in str(recs[0])
    assert "voters=[1, 2]" in str(recs[2])
    report = verify(tmp_path)
    marks = [r for r in dump(tmp_path) if r.kind == RecordKind.SYNC_MARK]
    assert marks and "SYNC_MARK durable_to=" in str(marks[-1])
    assert report.ok and report.records == 4 + len(marks)
    assert report.partitions[1].snapshot_index == 2 and report.partitions[2].last_index == 3
