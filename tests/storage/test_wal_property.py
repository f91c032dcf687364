"""Property test: random WAL histories, a crash at a random point, recovery vs a model.

The model is a few dicts and lists applying the documented replay rules. A
"crash" keeps exactly the files as they were when the last `sync()` returned
(copied then), plus a torn record or random garbage after the newest
segment's last record. Recovery must give back the model's state as of that
sync: nothing synced lost, nothing unsynced invented, truncations and
markers respected.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prkdb.raft.types import EMPTY_HARD_STATE, ConfState, Entry, HardState, SnapshotMeta
from prkdb.storage import WriteAheadLog
from prkdb.storage.record import RECORD_HEADER
from prkdb.storage.recovery import read_segment
from tests.storage.helpers import RecordingLogger, segment_paths

SEG = 4096
PARTITIONS = (1, 2, 3)


@dataclass
class PModel:
    log: list[Entry] = field(default_factory=list)  # contiguous, history included
    snap: SnapshotMeta | None = None
    hs: HardState = EMPTY_HARD_STATE
    released: int = 0

    @property
    def snap_index(self) -> int:
        return self.snap.index if self.snap else 0

    def last(self) -> int:
        return self.log[-1].index if self.log else self.snap_index

    def term_at(self, i: int) -> int | None:
        if self.snap and i == self.snap.index:
            return self.snap.term
        for e in self.log:
            if e.index == i:
                return e.term
        return None

    def live(self) -> list[Entry]:
        return [e for e in self.log if e.index > self.snap_index]


def run_ops(data: st.DataObject, wal: WriteAheadLog, model: dict[int, PModel], img: Path) -> dict:
    """Apply random ops to wal and model; return the model as of the last sync."""
    synced = copy.deepcopy(model)
    snapshot_files(wal, img)
    for _ in range(data.draw(st.integers(5, 40), label="steps")):
        op = data.draw(st.sampled_from(["app", "app", "app", "hs", "mark", "rel", "sync"]))
        p = data.draw(st.sampled_from(PARTITIONS))
        m = model.setdefault(p, PModel())
        if op == "app":
            # Raft never rewrites a committed entry (replay refuses a record that does).
            first = data.draw(st.integers(max(m.snap_index, m.hs.commit) + 1, m.last() + 1))
            n = data.draw(st.integers(1, 4))
            prev_terms = [e.term for e in m.log if e.index < first]
            base = prev_terms[-1] if prev_terms else (m.snap.term if m.snap else 1)
            term = base + data.draw(st.integers(0, 1))
            size = data.draw(st.sampled_from([0, 10, 300, 1200, 5000]))
            new = [Entry(term, i, data=bytes([i % 256]) * size) for i in range(first, first + n)]
            wal.append_entries(p, new)
            m.log = [e for e in m.log if e.index < first] + new
        elif op == "hs":
            # As Raft persists them: the term never goes back; within a term
            # the vote, once cast, stays and the commit index only grows; the
            # commit index never passes the log (replay refuses otherwise).
            prev = m.hs
            term = prev.term + data.draw(st.integers(0, 2))
            if term == prev.term:
                vote = prev.vote or data.draw(st.integers(0, 9))
                commit = data.draw(st.integers(prev.commit, max(prev.commit, m.last())))
            else:
                vote = data.draw(st.integers(0, 9))
                commit = data.draw(st.integers(0, m.last()))
            hs = HardState(term, vote, commit)
            wal.append_hard_state(p, hs)
            m.hs = hs
        elif op == "mark":
            lo = max(1, m.snap_index)
            if data.draw(st.booleans()) and m.last() >= lo:  # local compaction
                s = data.draw(st.integers(lo, m.last()))
                term = m.term_at(s)
                assert term is not None
            else:  # snapshot from a leader, maybe beyond our log
                s = data.draw(st.integers(max(lo, m.hs.commit), m.last() + 3))
                term = data.draw(st.integers(1, 12))
            voters = tuple(data.draw(st.lists(st.integers(1, 7), max_size=5)))
            meta = SnapshotMeta(s, term, ConfState(voters))
            if m.term_at(s) != term:
                m.log = []
            wal.append_snapshot_marker(p, meta)
            m.snap = meta
        elif op == "rel":
            r = data.draw(st.integers(0, m.snap_index))
            wal.release(p, r)
            m.released = max(m.released, r)
        else:
            wal.sync()
            synced = copy.deepcopy(model)
            snapshot_files(wal, img)
    return synced


def snapshot_files(wal: WriteAheadLog, img: Path) -> None:
    """The crash image: the WAL files exactly as they are right after a sync."""
    if img.exists():
        shutil.rmtree(img)
    img.mkdir()
    for path in wal.segment_files():
        shutil.copyfile(path, img / path.name)


def tear(data: st.DataObject, img: Path, live: Path) -> None:
    """Leave unsynced junk after the newest segment's last good record."""
    segs = segment_paths(img)
    newest = segs[-1]
    scan = read_segment(newest, int(newest.name[:16], 16), None)
    assert scan.problem is None
    end = scan.end
    room = scan.size - end
    how = data.draw(st.sampled_from(["none", "garbage", "torn"]))
    tail = b""
    if how == "garbage":
        tail = data.draw(st.binary(min_size=1, max_size=64))
    elif how == "torn" and (live / newest.name).exists():
        later = (live / newest.name).read_bytes()[end:]
        if len(later) >= RECORD_HEADER.size and later[:4] != b"\0\0\0\0":
            length = RECORD_HEADER.unpack_from(later, 0)[0]
            # Cut before the record's last non-zero byte: a "torn" write whose
            # missing part was zeros anyway is a complete record, not a tear.
            whole = len(later[: RECORD_HEADER.size + length].rstrip(b"\0"))
            cut = data.draw(st.integers(1, whole - 1))
            tail = later[:cut]
    tail = tail[:room]
    if tail:
        with open(newest, "r+b") as f:
            f.seek(end)
            f.write(tail)


def check(wal: WriteAheadLog, model: dict[int, PModel]) -> None:
    got = wal.recovered()
    for p in PARTITIONS:
        m = model.get(p, PModel())
        plog = got.get(p)
        if plog is None:
            assert m.hs == EMPTY_HARD_STATE and m.snap is None and not m.log
            continue
        assert plog.hard_state == m.hs
        assert plog.snapshot == m.snap
        assert plog.entries == m.live()
        # The older-snapshot fallback: history above the release index.
        h = m.log[0].index if m.log else m.snap_index + 1
        idx = max(m.released, h - 1)
        if idx < m.snap_index:
            assert plog.entries_after(idx) == [e for e in m.log if e.index > idx]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_crash_recovery_matches_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        live, img = Path(tmp) / "live", Path(tmp) / "img"
        model: dict[int, PModel] = {}
        wal = WriteAheadLog.open(live, segment_size=SEG)
        for round_ in range(data.draw(st.integers(1, 2), label="rounds")):
            synced = run_ops(data, wal, model, img)
            tear(data, img, live)
            # Crash: abandon the live WAL (no close, no sync) and recover the image.
            wal._segments[-1].close()  # only to free the mapping
            shutil.rmtree(live)
            shutil.copytree(img, live)
            log = RecordingLogger()
            wal = WriteAheadLog.open(live, segment_size=SEG, logger=log)
            check(wal, synced)
            model = synced
            assert round_ < 2
        wal.close()
        wal = WriteAheadLog.open(live, segment_size=SEG)  # a clean close loses nothing
        check(wal, model)
        wal.close()
