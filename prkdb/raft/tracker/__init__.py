"""Leader-side bookkeeping of followers: progress and in-flight windows."""

from prkdb.raft.tracker.inflights import Inflights
from prkdb.raft.tracker.progress import Progress, ProgressState

__all__ = ["Inflights", "Progress", "ProgressState"]
