"""`Progress`: what the leader knows of one follower's log.

States (etcd's tracker/progress.go):
- PROBE: we do not know where the follower's log ends; send one append per
  heartbeat interval and wait for the answer (`msg_app_flow_paused`).
- REPLICATE: the follower is in sync; stream appends optimistically, bounded
  by `inflights`.
- SNAPSHOT: the follower needs a snapshot; send nothing until it is applied.

Invariant: match < next.
"""

from __future__ import annotations

import enum

from prkdb.raft.tracker.inflights import Inflights


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


# Module names for the per-message paths (an Enum class attribute lookup is
# slow on Python 3.11: it goes through EnumType.__getattr__).
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE


class Progress:
    __slots__ = (
        "inflights",
        "last_heard_tick",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "snapshot_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Leader tick count when the pending snapshot was sent (to retry a lost one).
        self.snapshot_sent_tick = 0
        self.msg_app_flow_paused = False
        # Leader tick count when we last heard from this peer (CheckQuorum).
        self.last_heard_tick = 0
        self.inflights = inflights

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """The follower acknowledged up to `n`; False if that is old news."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.msg_app_flow_paused = False
        self.next = max(self.next, n + 1)
        return updated

    def update_optimistic(self, n: int) -> None:
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at `rejected`; back off towards `match_hint`."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state == _PROBE:
            return self.msg_app_flow_paused
        if state == _REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next}"
            f" inflight={self.inflights.count()})"
        )
