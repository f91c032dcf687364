"""`RaftConfig`: everything that tunes one Raft core, validated up front.

All durations are in ticks; only the driver knows how long a tick is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from prkdb.raft.errors import ConfigError
from prkdb.raft.logger import Logger, NullLogger


@dataclass(slots=True)
class RaftConfig:
    """Tuning of one core. Call `validate()` (RawNode does) before use."""

    id: int
    # The voter set for a brand-new group; ignored when storage already holds one.
    peers: tuple[int, ...] = ()
    # Follower/candidate: ticks without a leader before campaigning; the real
    # timeout is drawn from [election_ticks, 2*election_ticks - 1].
    election_ticks: int = 10
    # Leader: ticks between heartbeats. Invariant: heartbeat_ticks < election_ticks.
    heartbeat_ticks: int = 2
    # Upper bound on the entries' bytes in one AppendEntries (one entry always fits).
    max_size_per_msg: int = 1024 * 1024
    # Bounded pipelining: at most this many AppendEntries in flight per follower...
    max_inflight_msgs: int = 256
    # ...and at most this many entry bytes in flight per follower (0 = unbounded).
    max_inflight_bytes: int = 32 * 1024 * 1024
    # Leader refuses proposals once this many bytes are appended but not committed
    # (0 = unbounded); this bounds the leader's memory when a quorum is gone.
    max_uncommitted_size: int = 64 * 1024 * 1024
    # Upper bound on the bytes of committed entries handed out in one Ready.
    max_committed_size_per_ready: int = 64 * 1024 * 1024
    pre_vote: bool = True
    # This replica lost its durable state (a rebuilt node): until the driver
    # calls `RawNode.end_recovery`, it never grants a vote or pre-vote and never
    # campaigns, because it no longer remembers the votes it cast or the
    # entries it acknowledged. It still accepts and acknowledges entries
    # (those acks are true). See prkdb/server/rebuild.py.
    recovering: bool = False
    check_quorum: bool = True
    # Index already applied to the state machine at start (0 = snapshot index).
    applied: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    logger: Logger = field(default_factory=NullLogger)

    def validate(self) -> None:
        """Raise `ConfigError` naming the first bad value."""
        if self.id <= 0:
            raise ConfigError(f"id ({self.id}) must be > 0")
        if self.heartbeat_ticks <= 0:
            raise ConfigError(f"heartbeat_ticks ({self.heartbeat_ticks}) must be > 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must be > "
                f"heartbeat_ticks ({self.heartbeat_ticks})"
            )
        if self.max_size_per_msg <= 0:
            raise ConfigError(f"max_size_per_msg ({self.max_size_per_msg}) must be > 0")
        if self.max_inflight_msgs <= 0:
            raise ConfigError(f"max_inflight_msgs ({self.max_inflight_msgs}) must be > 0")
        if self.max_inflight_bytes < 0:
            raise ConfigError(f"max_inflight_bytes ({self.max_inflight_bytes}) must be >= 0")
        if self.max_uncommitted_size < 0:
            raise ConfigError(
                f"max_uncommitted_size ({self.max_uncommitted_size}) must be >= 0"
            )
        if self.max_committed_size_per_ready <= 0:
            raise ConfigError(
                f"max_committed_size_per_ready ({self.max_committed_size_per_ready}) must be > 0"
            )
        if self.applied < 0:
            raise ConfigError(f"applied ({self.applied}) must be >= 0")
        if any(p <= 0 for p in self.peers):
            raise ConfigError(f"peers ({self.peers}) must all be > 0")
