"""A WAL whose rollover failed (the next segment could not be created) reopens.

That happens when the disk fills up at rollover. The new segment is created
before the full one is sealed, so the full one is left unsealed and simply
continues. Found by tests/fault/test_disk_full.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prkdb.raft import Entry, HardState
from prkdb.storage import StorageError, WriteAheadLog
from prkdb.storage import segment as segment_mod


def test_reopen_after_failed_rollover_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog.open(tmp_path, segment_size=64 * 1024)
    written = 0
    real_create = segment_mod.Segment.create

    def no_space(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="No space left"):
        for i in range(1, 10_000):
            if i == 40:
                wal.sync()
                # From now on the next rollover cannot create its segment.
                monkeypatch.setattr(segment_mod.Segment, "create", no_space)
            wal.append_entries(0, [Entry(1, i, data=b"x" * 1000)])
            written = i
    monkeypatch.setattr(segment_mod.Segment, "create", real_create)
    # The process dies here; the first segment is full and sealed, no second one.
    reopened = WriteAheadLog.open(tmp_path, segment_size=64 * 1024)
    plog = reopened.recovered()[0]
    assert [e.index for e in plog.entries][:39] == list(range(1, 40))
    assert plog.entries[-1].index <= written
    # And it is writable again.
    nxt = plog.entries[-1].index + 1
    reopened.append_entries(0, [Entry(1, nxt, data=b"y")])
    reopened.append_hard_state(0, HardState(1, 1, nxt))
    reopened.sync()
    reopened.close()
    again = WriteAheadLog.open(tmp_path, segment_size=64 * 1024).recovered()[0]
    assert again.entries[-1].index == nxt and again.hard_state.commit == nxt
