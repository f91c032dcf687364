"""`Inflights`: the bounded window of AppendEntries sent but not yet acknowledged.

Flow control (thesis §10.2.1 pipelining): a leader in REPLICATE state keeps
sending without waiting for acks, but at most `capacity` messages and
`max_bytes` bytes per follower. A dead or slow follower therefore costs the
leader a bounded amount of memory and bandwidth.

Each slot records the last entry index a message carried and its byte size;
an ack for index i frees every slot <= i. Invariant: indexes are increasing.
"""

from __future__ import annotations

from collections import deque


class Inflights:
    __slots__ = ("_q", "bytes", "capacity", "max_bytes")

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes  # 0 means no byte bound
        self._q: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def add(self, index: int, size: int) -> None:
        self._q.append((index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget every in-flight message whose last index is <= `index`."""
        q = self._q
        while q and q[0][0] <= index:
            self.bytes -= q.popleft()[1]

    def free_first_one(self) -> None:
        if self._q:
            self.bytes -= self._q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.capacity or (0 < self.max_bytes <= self.bytes)

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0
