"""Session slots: exactly-once writes without serializing them.

Theory of operation
-------------------
The server's session table (prkdb.state.sessions) remembers only the *last*
``(seq, result)`` per ``client_id``. One id with a global counter would break
as soon as two writes overlap: if seq 8 is applied before a retry of seq 7
arrives, the retry is a "stale sequence" and its result is gone. Serializing
writes would fix that and kill throughput.

So each concurrently in-flight write gets its own session *slot*
``(client_id, next_seq)``:

1. `SessionPool.acquire` pops a free slot (LIFO, so a sequential caller keeps
   using one client id) or makes a new one with a fresh random 63-bit id.
2. The write is sent with ``(slot.client_id, slot.next_seq)``; every retry of
   that logical write reuses exactly that pair, and the server de-duplicates.
3. `SessionPool.release` bumps ``next_seq`` and puts the slot back, whatever
   the outcome (success, error, OutcomeUnknown, cancellation). Bumping even
   after an unknown outcome is safe: once seq N+1 is applied, a late copy of
   seq N is refused as stale and never applied.

Invariants: a slot is used by at most one write at a time; per slot, the seqs
sent are strictly increasing; ids are unique within the pool. The number of
ids equals the peak number of concurrent writes. An idle slot needs no server
state (it has no retry in flight), so the server evicting it is harmless.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import final

__all__ = ["SessionPool", "SessionSlot"]

_ID_BITS = 63  # client_id is a CBOR uint >= 1; 63 bits keeps it a signed int64 elsewhere


@final
@dataclass(slots=True)
class SessionSlot:
    """One exactly-once session: the id and the seq its next write will use."""

    client_id: int
    next_seq: int = 1


@final
class SessionPool:
    """A free list of `SessionSlot`s; see the module docstring."""

    __slots__ = ("_free", "_ids", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._free: list[SessionSlot] = []
        self._ids: set[int] = set()  # every id this pool ever made (uniqueness)

    @property
    def size(self) -> int:
        """How many session ids exist (= peak concurrent writes so far)."""
        return len(self._ids)

    def new_slot(self) -> SessionSlot:
        while True:
            client_id = self._rng.getrandbits(_ID_BITS)
            if client_id >= 1 and client_id not in self._ids:
                self._ids.add(client_id)
                return SessionSlot(client_id)

    def acquire(self) -> SessionSlot:
        """A slot no other write is using."""
        return self._free.pop() if self._free else self.new_slot()

    def release(self, slot: SessionSlot) -> None:
        """Give a slot back after its write finished (in any way)."""
        slot.next_seq += 1
        self._free.append(slot)
