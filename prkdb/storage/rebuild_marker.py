"""The `REBUILDING` marker: a data dir whose node may not vote until it caught up.

Written by a rebuild (prkdb/server/rebuild.py explains the protocol) and by
`prkctl wal repair`, which truncates a corrupt WAL: a node that may have lost
entries it acknowledged must rebuild from its peers before it votes again.
The file is JSON, replaced atomically and durably.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from prkdb.storage.segment import fsync_dir

MARKER = "REBUILDING"
MARKER_FORMAT = 1


class MarkerError(Exception):
    """The marker exists but cannot be read."""


class Target(NamedTuple):
    """When a rebuilt partition may vote again (module doc).

    Done once the durable commit index is >= `commit` and either >= `leader_last`
    (when nonzero), or at an entry of a term above `floor`, or (no leader of
    `floor` at the survey) at an entry of `floor` while we follow that term:
    its leader was elected after the survey, so it is a survivor.
    """

    commit: int  # the highest commit index any peer reported
    # Last index of the surviving leader of the floor term, 0 if none. Not
    # `index`: that would shadow `tuple.index`.
    leader_last: int
    floor: int  # the highest term any peer reported

    def reached(self, durable_commit: int, term_at_commit: int, current_term: int) -> bool:
        if durable_commit < self.commit:
            return False
        if self.leader_last:
            return durable_commit >= self.leader_last or term_at_commit > self.floor
        return term_at_commit > self.floor or (
            term_at_commit == self.floor == current_term)


@dataclass
class Marker:
    """What `REBUILDING` says: None targets = the survey is still to be done."""

    node_id: int
    # partition -> Target before voting; None = the survey is still to be done.
    targets: dict[int, Target] | None

    @classmethod
    def load(cls, data_dir: Path) -> Marker | None:
        path = data_dir / MARKER
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != MARKER_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {MARKER_FORMAT}")
            targets = raw["targets"]
            return cls(
                int(raw["node_id"]),
                None if targets is None
                else {int(p): Target(*map(int, t)) for p, t in targets.items()},
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MarkerError(
                f"{path}: unreadable rebuild marker ({e}); the rebuild it records is not "
                f"finished: move the data dir away and start again with --rebuild"
            ) from None

    def save(self, data_dir: Path) -> None:
        """Replace the marker atomically and durably (temp file, fsync, rename, dir fsync)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        body = {
            "format": MARKER_FORMAT,
            "node_id": self.node_id,
            "targets": None if self.targets is None
            else {str(p): list(ct) for p, ct in sorted(self.targets.items())},
        }
        tmp = data_dir / (MARKER + ".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / MARKER)
        fsync_dir(data_dir)

    @staticmethod
    def remove(data_dir: Path) -> None:
        (data_dir / MARKER).unlink(missing_ok=True)
        fsync_dir(data_dir)


