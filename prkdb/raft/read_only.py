"""ReadIndex bookkeeping on the leader (thesis §6.4).

A read arriving at the leader is tagged with the current commit index and a
unique context. The leader sends the most recent context with a heartbeat
round; once a quorum echoes a context, every read queued up to and including
it is confirmed (one round serves a whole batch): at that moment the leader
was still the leader, so its commit index was the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prkdb.raft.types import NONE


@dataclass(slots=True)
class ReadIndexStatus:
    context: bytes
    index: int
    # Who asked: NONE or the leader itself for local reads, else a follower id.
    origin: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, context: bytes, origin: int) -> None:
        if context in self.pending:
            return
        self.pending[context] = ReadIndexStatus(context, index, origin or NONE)
        self.queue.append(context)

    def recv_ack(self, node: int, context: bytes) -> set[int] | None:
        rs = self.pending.get(context)
        if rs is None:
            return None
        rs.acks.add(node)
        return rs.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Pop every request queued up to and including `context`."""
        if context not in self.pending:
            return []
        i = self.queue.index(context)
        ctxs, self.queue = self.queue[: i + 1], self.queue[i + 1 :]
        return [self.pending.pop(c) for c in ctxs]

    def last_pending_context(self) -> bytes:
        return self.queue[-1] if self.queue else b""

    def reset(self) -> None:
        self.pending.clear()
        self.queue.clear()
