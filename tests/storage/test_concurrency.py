"""Group commit: appends continue from one thread while another syncs."""

from __future__ import annotations

import threading
from pathlib import Path

from prkdb.raft.types import Entry
from prkdb.storage import WriteAheadLog


def test_appends_during_syncs_survive_reopen(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path, segment_size=16384)
    n = 3000
    appended = 0  # entries appended before the current sync() call started
    durable: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def appender() -> None:
        nonlocal appended
        try:
            for i in range(1, n + 1):
                wal.append_entries(i % 3, [Entry(1, (i - 1) // 3 + 1, data=b"%d" % i)])
                appended = i
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def syncer() -> None:
        try:
            while not done.is_set():
                before = appended
                wal.sync()
                durable.append(before)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender), threading.Thread(target=syncer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(durable) > 1 and len(wal.segment_files()) > 2
    # Crash image: only what the last sync covered must be there. Abandon
    # the WAL without close() and reopen the same files.
    last_durable = durable[-1]
    for s in wal._segments:
        s.close()
    reopened = WriteAheadLog.open(tmp_path, segment_size=16384)
    got = {p: plog.entries for p, plog in reopened.recovered().items()}
    for i in range(1, last_durable + 1):
        p, idx = i % 3, (i - 1) // 3 + 1
        assert got[p][idx - 1] == Entry(1, idx, data=b"%d" % i)
    for entries in got.values():  # contiguous, in order, nothing invented
        assert [e.index for e in entries] == list(range(1, len(entries) + 1))
    reopened.close()
