"""Majority quorums: which index is committed, and who won a vote.

A strict majority of the voters is needed for both (no split brain: two
majorities of the same set always intersect).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence


class VoteResult(enum.IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def quorum_size(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Sequence[int], match: Mapping[int, int]) -> int:
    """The highest index that a majority of `voters` has (per `match`)."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[quorum_size(len(voters)) - 1]


def vote_result(voters: Sequence[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    q = quorum_size(len(voters))
    if granted >= q:
        return VoteResult.WON
    if granted + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST
