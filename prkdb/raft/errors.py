"""Errors of the Raft core, in the three kinds of STYLE.md §8.5.

(a) The caller asked for something impossible: a `RaftError` subclass.
(b) A peer sent something stale or odd: not an exception at all; `step`
    drops it and returns the reason as a string.
(c) An invariant broke: `RaftInvariantError`, an `AssertionError`, caught only
    by the partition supervisor, which restarts the partition from its WAL.
"""

from __future__ import annotations


class RaftError(Exception):
    """Root of the caller-mistake errors raised by the core."""


class ConfigError(RaftError):
    """A `RaftConfig` value is out of range."""


class ProposalDropped(RaftError):
    """The proposal or read cannot be handled here (no leader, transfer in progress, ...)."""


class NotLeaderError(ProposalDropped):
    """Only the leader accepts this; `leader_id` is the leader we know of, or 0."""

    def __init__(self, leader_id: int, message: str = "") -> None:
        self.leader_id = leader_id
        super().__init__(message or f"not the leader (leader is {leader_id or 'unknown'})")


class LogStorageError(RaftError):
    """Root of the errors a `Storage` raises for out-of-range reads."""


class Compacted(LogStorageError):
    """The requested index is below the first index: it lives in a snapshot now."""


class EntriesUnavailable(LogStorageError):
    """The requested index is above the last index, or a snapshot is being made."""


class RaftInvariantError(AssertionError):
    """A Raft invariant broke: a bug or corrupt storage. Never caught inside the core."""
