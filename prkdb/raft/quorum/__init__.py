"""Quorum arithmetic (majority now; joint consensus later)."""

from prkdb.raft.quorum.majority import VoteResult, committed_index, quorum_size, vote_result

__all__ = ["VoteResult", "committed_index", "quorum_size", "vote_result"]
