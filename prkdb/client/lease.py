"""Leases kept alive in the background: the schedule, and what every front end shares.

Theory of operation
-------------------
``client.lease(ttl)`` grants a lease and keeps it alive until it is closed,
then revokes it (deleting the keys attached to it):

```python
async with client.lease(10.0, key=b"{svc}/me") as lease:       # trio or asyncio
    await client.put(b"{svc}/me", b"10.0.0.7:80", lease=lease.id)
    ...                                                          # lease.lost: gone?
```

The keep-alive itself is a plan of the sans-IO core (`keep_alive_loop`):
every ``ttl / 3`` it renews the lease, so two keep-alives may fail before
the lease is at risk. `KeepAliveState` tracks how long the lease surely
lives: until the send time of the last answered keep-alive plus the time
left it reported (the leader counts from later, so this errs early). A
failed keep-alive that may succeed later (Timeout, Unavailable, an unknown
outcome) is retried sooner, ``ttl / 12`` later, until that time has passed;
then the lease is *lost*. It is lost at once when the leader says it is
gone (expired or revoked), or on any other error.

Each front end runs the plan its own way, in the background: a task in a
nursery for `PrkDbClient` (the caller's, or one the client owns), an
asyncio task for `AsyncClient`, a daemon thread for `SyncClient`. Their
context managers share `AsyncKeptLease` / the same attributes: ``lease``
(the `Lease`), ``id``, ``ttl``, ``lost`` (a flag) and ``lost_reason``, and
``wait_lost()`` to sleep until the lease is lost. A lost lease is not
revoked at exit (it is gone); any other lease is, unless the revoke fails
and the body raised (the body's error wins; the lease then expires by itself
within its TTL).

A lost lease means every key attached to it is, or will shortly be,
deleted: a holder of a lock on it must stop acting as the holder.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final, final

from prkdb.client.core import ClientCore, Plan, Sleep
from prkdb.client.results import Lease
from prkdb.errors import InvalidRequest, LeaseNotFound, OutcomeUnknown, PrkdbError, Unavailable

if TYPE_CHECKING:
    from prkdb.client.api import AsyncApi

__all__ = [
    "KEEPALIVES_PER_TTL",
    "AsyncKeptLease",
    "KeepAliveState",
    "KeptLeaseView",
    "check_ttl",
    "keep_alive_loop",
]

KEEPALIVES_PER_TTL: Final = 3
"""Keep-alives sent per TTL: two may fail before the lease is at risk (etcd sends three too)."""

_RETRIES_PER_INTERVAL: Final = 4  # a failed keep-alive is retried this much sooner


@final
class KeepAliveState:
    """What one kept lease knows: until when it surely lives, and whether it is lost.

    Pure: the plan that renews the lease updates it, a front end reads it.
    Times are on the client's clock (`ClientCore.clock`), in seconds.
    """

    __slots__ = ("expires_at", "lease", "lost", "reason", "renewals", "stopped")

    def __init__(self, lease: Lease, sent_at: float) -> None:
        self.lease = lease
        #: The lease surely lives until then: send time of the last renewal + what was left.
        #: Invariant: never decreases.
        self.expires_at = sent_at + lease.ttl
        #: True once the lease is gone or its fate is past knowing (see module doc).
        self.lost = False
        #: Why it was lost (for messages); None while it is not.
        self.reason: str | None = None
        #: Keep-alives answered so far.
        self.renewals = 0
        #: The keeper was closed: nothing is lost any more, whatever late answers say.
        self.stopped = False

    @property
    def interval(self) -> float:
        """Seconds between keep-alives."""
        return self.lease.ttl / KEEPALIVES_PER_TTL

    def renewed(self, sent_at: float, remaining: float) -> None:
        """A keep-alive sent at `sent_at` was answered: `remaining` seconds left."""
        self.renewals += 1
        self.expires_at = max(self.expires_at, sent_at + remaining)

    def lose(self, reason: str) -> None:
        if not self.stopped and not self.lost:
            self.lost = True
            self.reason = reason


def keep_alive_loop(core: ClientCore, state: KeepAliveState) -> Plan[None]:
    """Renew ``state.lease`` every `KeepAliveState.interval` until it is lost (module doc).

    Returns once the lease is lost; a front end stops it earlier by closing it.
    """
    lease_id = state.lease.id
    interval = state.interval
    wait = interval
    while True:
        yield Sleep(wait)
        sent_at = core.clock()
        left = state.expires_at - sent_at
        if left <= 0:
            state.lose(f"lease {lease_id}: no keep-alive was answered before it expired")
            return
        try:
            remaining = yield from core.keep_alive_once(lease_id, min(interval, left))
        except LeaseNotFound as exc:
            state.lose(f"lease {lease_id} is gone (expired or revoked): {exc.message}")
            return
        except (Unavailable, OutcomeUnknown):
            wait = interval / _RETRIES_PER_INTERVAL  # the cluster may answer soon: retry
            continue
        except PrkdbError as exc:  # closed client, protocol error, ...: it will not get better
            state.lose(f"lease {lease_id}: keep-alive failed: {exc.message or exc!r}")
            return
        state.renewed(sent_at, remaining)
        wait = interval


def check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
        raise InvalidRequest(f"lease ttl ({ttl!r}) must be a positive number of seconds")
    return float(ttl)


class KeptLeaseView:
    """What every front end's kept lease shows (module doc); filled in by ``start``."""

    def __init__(self, ttl: float, key: bytes) -> None:
        self._ttl = check_ttl(ttl)
        self._key = key
        self._state: KeepAliveState | None = None
        self._closed = False

    @property
    def lease(self) -> Lease:
        """The granted lease (once started)."""
        return self.state.lease

    @property
    def id(self) -> int:
        return self.state.lease.id

    @property
    def ttl(self) -> float:
        """Seconds, as granted."""
        return self.state.lease.ttl

    @property
    def partition(self) -> int:
        return self.state.lease.partition

    @property
    def lost(self) -> bool:
        """True once the lease is gone or could not be renewed in time (module doc)."""
        return self._state is not None and self._state.lost

    @property
    def lost_reason(self) -> str | None:
        return None if self._state is None else self._state.reason

    @property
    def state(self) -> KeepAliveState:
        """The keep-alive bookkeeping (renewals, expires_at), once started."""
        if self._state is None:
            raise InvalidRequest("the lease is not granted yet: enter the context manager "
                                 "or call start()")
        return self._state

    def __repr__(self) -> str:
        if self._state is None:
            return f"<{type(self).__name__} ttl={self._ttl} (not started)>"
        lease = self._state.lease
        how = "lost" if self._state.lost else "closed" if self._closed else "kept"
        return f"<{type(self).__name__} id={lease.id} ttl={lease.ttl} {how}>"


class AsyncKeptLease(KeptLeaseView):
    """A lease kept alive in the background (trio or asyncio); ``async with`` it.

    The front ends (`PrkDbClient.lease`, `AsyncClient.lease`) subclass it
    with their way of running the keep-alive task: ``_start_keeper``,
    ``_stop_keeper``, ``_notify_lost`` and ``wait_lost``.

    Also usable without ``async with``: ``await kept.start()`` ... ``await
    kept.aclose()``, even from different tasks (an election holds its lease
    from campaign to resign).
    """

    def __init__(self, client: AsyncApi, ttl: float, key: bytes) -> None:
        super().__init__(ttl, key)
        self.client = client

    async def wait_lost(self) -> None:
        """Return once the lease is lost (never, while it is kept)."""
        raise NotImplementedError

    # --- life cycle ----------------------------------------------------------------

    async def start(self) -> Lease:
        """Grant the lease and start keeping it alive."""
        if self._state is not None:
            raise InvalidRequest("the lease is already started")
        sent_at = self.client.core.clock()
        lease = await self.client.grant_lease(self._ttl, key=self._key)
        self._state = KeepAliveState(lease, sent_at)
        await self._start_keeper(keep_alive_loop(self.client.core, self._state))
        return lease

    async def aclose(self, *, revoke: bool = True) -> None:
        """Stop keeping the lease alive and (if `revoke` and not lost) revoke it. Idempotent.

        Raises:
            PrkdbError: the revoke failed (the lease then expires within its TTL).
        """
        if self._closed or self._state is None:
            return
        self._closed = True
        state = self._state
        await self._stop_keeper()
        lost = state.lost
        state.stopped = True
        if revoke and not lost:
            with contextlib.suppress(LeaseNotFound):
                await self._revoke(state.lease.id)

    async def __aenter__(self) -> AsyncKeptLease:
        await self.start()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.aclose()
        except PrkdbError:
            if exc_type is None:
                raise  # else the body's error wins; the lease expires by itself

    # --- for the front ends ----------------------------------------------------------

    async def _start_keeper(self, plan: Plan[None]) -> None:
        raise NotImplementedError

    async def _stop_keeper(self) -> None:
        raise NotImplementedError

    async def _revoke(self, lease_id: int) -> None:
        """Revoke at exit; front ends shield it from a cancellation of the body."""
        await self.client.revoke_lease(lease_id)

    async def _keep(self, plan: Plan[None]) -> None:
        """The background task's body: renew until lost or stopped; never raises."""
        state = self._state
        assert state is not None
        try:
            await self.client.drive(plan)
        except Exception as exc:  # a bug or a broken client: the lease is as good as lost
            state.lose(f"lease {state.lease.id}: keep-alive stopped: {exc!r}")
        if state.lost:
            self._notify_lost()

    def _notify_lost(self) -> None:
        raise NotImplementedError
