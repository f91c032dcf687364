"""Lock and Election: etcd's concurrency recipes, on leases and transactions.

```python
from prkdb.client.recipes import Election, Lock

async with Lock(client, b"jobs/nightly", ttl=10) as lock:      # `with` for a SyncClient
    await client.txn([lock.guard()], [Put(b"{jobs/nightly}/result", b"done")])

election = Election(client, b"scheduler")
await election.campaign(b"node-7")      # returns once this client leads
print(await election.leader())          # Leader(key, value, revision, lease)
await election.resign()
```

Theory of operation
-------------------
Both are etcd's (go.etcd.io/etcd/client/v3/concurrency), on PrkDB's
partitions. Every key of one lock or election lives under one *prefix*
that pins a partition with a hash tag: ``name/`` if `name` already has a
tag (``{locks}/nightly``), else ``{name}/``. The partition matters because
revisions are per partition: the queue order below compares revisions, so
every contender's key must be in the same partition (and so must its lease).
A cluster whose key rule is "crc32" (a data dir from before hash tags) has
no tags, so it cannot host these recipes; they refuse with InvalidRequest.

A contender:

1. grants a lease in that partition and keeps it alive in the background
   (`client.lease`: a trio task, an asyncio task or a thread);
2. creates its own key ``prefix + hex(lease id)`` with a txn "if its
   create_revision is 0 (absent), put it attached to the lease"; the key's
   create revision is its place in the queue (a revision is the Raft index
   of the entry, so creations are totally ordered in the partition);
3. waits until no key under the prefix has a smaller create revision: it
   finds its predecessor (the largest smaller one) and polls it with a get
   until it is deleted, with short jittered waits (20 ms doubling to 250 ms),
   then looks again. Waiting on the predecessor only (not the first key)
   means a release wakes one waiter, not all. (Polling, until PrkDB has
   watches.)

Holding ends with a revoke of the lease, which deletes the key in the same
entry: the next contender's get sees it gone. A holder that dies stops
renewing; its lease expires within its TTL (plus an election timeout) and
the key goes with it. The queue is fair: contenders hold in the order
their keys were created.

Fencing: a lock is only as safe as its holder's knowledge that it still
holds it. The lock key's create revision (``lock.revision``) increases with
every holder, so a resource that remembers the highest revision it saw can
refuse a stale holder; inside PrkDB, ``lock.guard()`` is the compare
"my key still exists with my revision", to put in front of a txn's writes.
``lock.lost`` turns true if a keep-alive finds the lease gone.

An election is a lock whose key holds a value (the leader's name): the
leader is the key with the smallest create revision, `observe` polls it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, final, overload

from prkdb.client.api import AsyncApi
from prkdb.client.core import ClientCore, Plan, Sleep
from prkdb.client.results import KeyValue
from prkdb.client.scan import DEFAULT_PAGE_SIZE, key_range
from prkdb.client.sync import SyncClient, SyncKeptLease
from prkdb.client.txn import Compare, Get, Put
from prkdb.errors import InvalidRequest, LeaseNotFound, Timeout, Unavailable
from prkdb.partitioning import hash_slice
from prkdb.wire.messages import KEY_RULE_HASHTAG, ReadConsistency

if TYPE_CHECKING:
    from prkdb.client.lease import AsyncKeptLease

__all__ = [
    "DEFAULT_TTL",
    "AsyncElection",
    "AsyncLock",
    "Election",
    "Leader",
    "Lock",
    "SyncElection",
    "SyncLock",
    "recipe_prefix",
]

T = TypeVar("T")

DEFAULT_TTL: Final = 10.0
"""Seconds a lock or candidacy outlives its holder's last keep-alive."""

_POLL_FIRST: Final = 0.02  # seconds; the first wait for a predecessor
_POLL_MAX: Final = 0.25  # seconds; waits double up to this (a hand-over takes at most about it)
_OBSERVE_POLL: Final = 0.25  # seconds between looks at the leader, by default
_LINEARIZABLE: Final = ReadConsistency.LINEARIZABLE


@final
@dataclass(frozen=True, slots=True)
class Leader:
    """An election's leader: its key, the value it proclaimed, its revision and lease."""

    key: bytes
    value: bytes
    revision: int  # the key's create revision (increases with every new leader)
    lease: int


def _name_bytes(name: object) -> bytes:
    if isinstance(name, str):
        name = name.encode()
    if not isinstance(name, bytes) or not name:
        raise InvalidRequest(f"a lock or election name must be non-empty bytes or str, "
                             f"got {name!r:.40}")
    return name


def recipe_prefix(name: bytes) -> bytes:
    """The prefix of every key of the lock or election `name` (one partition: module doc)."""
    if len(hash_slice(name)) != len(name):  # the name has a tag: keep it
        return name + b"/"
    if b"}" in name:
        # "{" + name + "}" would end the tag at the name's own "}" (or make it empty).
        raise InvalidRequest(f"name {name[:40]!r} holds '}}' but no hash tag: give it a "
                             "whole tag ({tag}) or no braces")
    return b"{" + name + b"}/"


def _prepare(core: ClientCore, name: bytes) -> Plan[bytes]:
    """The recipe's prefix, once the cluster is known to have hash tags."""
    if not core.topology.partitions:
        yield from core.refresh_topology(None)
    if core.topology.key_rule != KEY_RULE_HASHTAG:
        raise InvalidRequest(
            f"locks and elections need hash tags, but this cluster's key rule is "
            f"{core.topology.key_rule!r} (a data dir from before hash tags): the keys of "
            f"{name[:40]!r} could not share a partition")
    return recipe_prefix(name)


def _enqueue(core: ClientCore, prefix: bytes, lease_id: int, value: bytes
             ) -> Plan[tuple[bytes, int]]:
    """Create our key (if absent) attached to the lease: (key, its create revision)."""
    key = prefix + b"%x" % lease_id
    result = yield from core.txn(
        [Compare.create_revision(key) == 0],
        [Put(key, value, lease_id), Get(key)],
        [Get(key)],
        None,
    )
    revision = result.results[-1].create_revision
    if not revision:
        raise LeaseNotFound(f"{key[:48]!r} vanished as it was created: the lease expired")
    return key, revision


def _members(core: ClientCore, prefix: bytes, keys_only: bool,
             timeout: float | None = None) -> Plan[list[KeyValue]]:
    return (yield from core.scan(key_range(prefix), 0, keys_only, _LINEARIZABLE,
                                 DEFAULT_PAGE_SIZE, timeout))


def _patiently(core: ClientCore, read: Callable[[float | None], Plan[T]],
               deadline: float | None, expired: Callable[[], str]) -> Plan[T]:
    """Run the read ``read(timeout)`` until it answers, through outages, until `deadline`.

    A queued contender must not lose its place to a leader election: a read
    that fails with `Unavailable` (Timeout included) is tried again after a
    short pause, each try capped by the time left (None: wait on).

    Raises:
        Timeout: `deadline` passed; the message is ``expired()`` and the last failure.
    """
    pause = _POLL_FIRST
    while True:
        left = None if deadline is None else deadline - core.clock()
        if left is not None and left <= 0:
            raise Timeout(expired())
        try:
            return (yield from read(None if left is None else min(left, core.timeout)))
        except Unavailable as e:
            if deadline is not None and core.clock() >= deadline:
                raise Timeout(f"{expired()}; last: {e}") from e
        yield Sleep(core.rng.uniform(pause / 2, pause))
        pause = min(pause * 2, _POLL_MAX)


def _wait_turn(core: ClientCore, prefix: bytes, key: bytes, revision: int,
               lost: Callable[[], bool], timeout: float | None, what: str) -> Plan[None]:
    """Return once no key under `prefix` was created before ours (module doc, step 3).

    Its reads ride out outages (`_patiently`): only the deadline ends the wait.

    Raises:
        LeaseNotFound: our key is gone (the lease expired or was revoked).
        Timeout: still queued after `timeout` seconds.
    """
    deadline = None if timeout is None else core.clock() + timeout
    rng = core.rng
    ahead: list[KeyValue] = []

    def expired() -> str:
        return f"{what}: not acquired within {timeout}s ({len(ahead)} ahead in the queue)"

    while True:
        members = yield from _patiently(
            core, partial(_members, core, prefix, True), deadline, expired)
        if not any(kv.key == key for kv in members):
            raise LeaseNotFound(f"{what}: our key {key[:48]!r} is gone: its lease expired "
                                "or was revoked while queued")
        ahead = [kv for kv in members if kv.create_revision < revision]
        if not ahead:
            return
        predecessor = max(ahead, key=lambda kv: kv.create_revision).key
        pause = _POLL_FIRST
        while True:
            if lost():
                raise LeaseNotFound(f"{what}: the lease was lost while queued")
            if deadline is not None:
                left = deadline - core.clock()
                if left <= 0:
                    raise Timeout(expired())
                pause = min(pause, left)
            yield Sleep(rng.uniform(pause / 2, pause))
            pause = min(pause * 2, _POLL_MAX)
            entry = yield from _patiently(
                core, partial(core.get, predecessor, _LINEARIZABLE), deadline, expired)
            if entry.version == 0:
                break  # gone (lease ids are unique: it never comes back); look again


def _leader(core: ClientCore, prefix: bytes) -> Plan[Leader | None]:
    members = yield from _members(core, prefix, False)
    if not members:
        return None
    first = min(members, key=lambda kv: kv.create_revision)
    return Leader(first.key, first.value, first.create_revision, first.lease)


def _next_leader(core: ClientCore, prefix: bytes, last: Leader | _Unseen | None,
                 poll: float) -> Plan[Leader | None]:
    """The leader, once it differs from `last` (at once for the first look)."""
    while True:
        current = yield from _leader(core, prefix)
        if current != last:
            return current
        yield Sleep(core.rng.uniform(poll / 2, poll))


def _proclaim(core: ClientCore, key: bytes, revision: int, lease_id: int, value: bytes,
              what: str) -> Plan[None]:
    result = yield from core.txn([Compare.create_revision(key) == revision],
                                 [Put(key, value, lease_id)], [], None)
    if not result.succeeded:
        raise LeaseNotFound(f"{what}: no longer the leader (its key is gone)")


class _Unseen:
    """No leader looked at yet (observe's first look always reports)."""


_UNSEEN: Final = _Unseen()


# --- the front ends ----------------------------------------------------------------------


class Lock:
    """A fair distributed mutex (module doc): ``async with Lock(client, name)`` or ``with``.

    `Lock(client, ...)` makes an `AsyncLock` for a `PrkDbClient` or
    `AsyncClient`, a `SyncLock` for a `SyncClient`.

    Args:
        client: a connected client of any front end.
        name: the lock's name (bytes or str); its keys live under
            `recipe_prefix` (``{name}/``).
        ttl: seconds the lock outlives a holder that stopped renewing.
        value: stored in the holder's key (for humans looking at the queue).
    """

    @overload
    def __new__(cls, client: SyncClient, name: bytes | str, ttl: float = ...,
                *, value: bytes = ...) -> SyncLock: ...

    @overload
    def __new__(cls, client: AsyncApi, name: bytes | str, ttl: float = ...,
                *, value: bytes = ...) -> AsyncLock: ...

    def __new__(cls, client: Any, name: bytes | str, ttl: float = DEFAULT_TTL,
                *, value: bytes = b"") -> Any:
        if cls is Lock:
            cls = SyncLock if isinstance(client, SyncClient) else AsyncLock
        return object.__new__(cls)

    def _setup(self, name: bytes | str, ttl: float, value: bytes) -> None:
        self.name = _name_bytes(name)
        self.ttl = ttl
        self.value = value
        #: Where every contender's key lives (set by acquire).
        self.prefix = b""
        #: Our key while held.
        self.key = b""
        #: The key's create revision while held: the fencing token (module doc).
        self.revision = 0

    def guard(self) -> Compare:
        """The compare "this lock is still ours", for a txn's writes (fencing inside PrkDB)."""
        if not self.revision:
            raise InvalidRequest(f"lock {self.name!r:.40} is not held")
        return Compare.create_revision(self.key) == self.revision

    def __repr__(self) -> str:
        held = f" held rev={self.revision}" if self.revision else ""
        return f"<{type(self).__name__} {self.name!r}{held}>"


@final
class AsyncLock(Lock):
    """`Lock` for the trio and asyncio clients."""

    def __init__(self, client: AsyncApi, name: bytes | str, ttl: float = DEFAULT_TTL,
                 *, value: bytes = b"") -> None:
        self.client = client
        self._setup(name, ttl, value)
        self._kept: AsyncKeptLease | None = None

    @property
    def held(self) -> bool:
        return self._kept is not None

    @property
    def lost(self) -> bool:
        """True if the lease under the lock was lost: stop acting as the holder."""
        return self._kept is not None and self._kept.lost

    async def acquire(self, *, timeout: float | None = None) -> int:
        """Wait for the lock (FIFO); its fencing revision.

        Raises:
            Timeout: not acquired within `timeout` seconds (None: wait on).
            LeaseNotFound: the lease was lost while waiting.
        """
        if self._kept is not None:
            raise InvalidRequest(f"lock {self.name!r:.40} is already held by this object")
        client = self.client
        core = client.core
        what = f"lock {self.name!r:.40}"
        self.prefix = await client.drive(_prepare(core, self.name))
        kept = client.lease(self.ttl, key=self.prefix)
        await kept.start()
        try:
            key, revision = await client.drive(_enqueue(core, self.prefix, kept.id, self.value))
            await client.drive(_wait_turn(core, self.prefix, key, revision,
                                          lambda: kept.lost, timeout, what))
        except BaseException:
            await kept.aclose()  # revokes: our key leaves the queue
            raise
        self._kept, self.key, self.revision = kept, key, revision
        return revision

    async def release(self) -> None:
        """Give the lock up (revoke its lease, which deletes its key). Idempotent."""
        kept, self._kept = self._kept, None
        self.key, self.revision = b"", 0
        if kept is not None:
            await kept.aclose()

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.release()
        except Exception:
            if exc_type is None:
                raise  # else the body's error wins; the lock frees itself within its TTL


@final
class SyncLock(Lock):
    """`Lock` for `SyncClient` (blocking; the lease is kept by a daemon thread)."""

    def __init__(self, client: SyncClient, name: bytes | str, ttl: float = DEFAULT_TTL,
                 *, value: bytes = b"") -> None:
        self.client = client
        self._setup(name, ttl, value)
        self._kept: SyncKeptLease | None = None

    @property
    def held(self) -> bool:
        return self._kept is not None

    @property
    def lost(self) -> bool:
        return self._kept is not None and self._kept.lost

    def acquire(self, *, timeout: float | None = None) -> int:
        """As `AsyncLock.acquire`, blocking."""
        if self._kept is not None:
            raise InvalidRequest(f"lock {self.name!r:.40} is already held by this object")
        client = self.client
        core = client.core
        what = f"lock {self.name!r:.40}"
        self.prefix = client.drive(_prepare(core, self.name))
        kept = client.lease(self.ttl, key=self.prefix)
        kept.start()
        try:
            key, revision = client.drive(_enqueue(core, self.prefix, kept.id, self.value))
            client.drive(_wait_turn(core, self.prefix, key, revision, lambda: kept.lost,
                                    timeout, what))
        except BaseException:
            kept.close()
            raise
        self._kept, self.key, self.revision = kept, key, revision
        return revision

    def release(self) -> None:
        kept, self._kept = self._kept, None
        self.key, self.revision = b"", 0
        if kept is not None:
            kept.close()

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.release()
        except Exception:
            if exc_type is None:
                raise


class Election:
    """Leader election (module doc): `campaign`, `leader`, `observe`, `proclaim`, `resign`.

    `Election(client, ...)` makes an `AsyncElection` for a `PrkDbClient` or
    `AsyncClient`, a `SyncElection` for a `SyncClient`. One object campaigns
    once at a time; `leader` and `observe` work without campaigning.

    Args:
        client: a connected client of any front end.
        name: the election's name; keys live under `recipe_prefix`.
        ttl: seconds a leader outlives its last keep-alive.
    """

    @overload
    def __new__(cls, client: SyncClient, name: bytes | str,
                ttl: float = ...) -> SyncElection: ...

    @overload
    def __new__(cls, client: AsyncApi, name: bytes | str, ttl: float = ...) -> AsyncElection: ...

    def __new__(cls, client: Any, name: bytes | str, ttl: float = DEFAULT_TTL) -> Any:
        if cls is Election:
            cls = SyncElection if isinstance(client, SyncClient) else AsyncElection
        return object.__new__(cls)

    def _setup(self, name: bytes | str, ttl: float) -> None:
        self.name = _name_bytes(name)
        self.ttl = ttl
        self.prefix = recipe_prefix(self.name)
        #: Our key and its revision while campaigning or leading.
        self.key = b""
        self.revision = 0
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """True from a successful campaign until resign (check `lost` too)."""
        return self._leading

    def __repr__(self) -> str:
        state = " leader" if self._leading else ""
        return f"<{type(self).__name__} {self.name!r}{state}>"


@final
class AsyncElection(Election):
    """`Election` for the trio and asyncio clients."""

    def __init__(self, client: AsyncApi, name: bytes | str, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self._setup(name, ttl)
        self._kept: AsyncKeptLease | None = None

    @property
    def lost(self) -> bool:
        """True if our lease was lost: we are no longer the leader (or candidate)."""
        return self._kept is not None and self._kept.lost

    async def campaign(self, value: bytes, *, timeout: float | None = None) -> int:
        """Stand with `value`; return once elected (our key's revision).

        Raises:
            Timeout: not elected within `timeout` seconds (the candidacy is withdrawn).
            LeaseNotFound: the lease was lost while waiting.
        """
        if self._kept is not None:
            raise InvalidRequest(f"election {self.name!r:.40}: already campaigning")
        client = self.client
        core = client.core
        what = f"election {self.name!r:.40}"
        self.prefix = await client.drive(_prepare(core, self.name))
        kept = client.lease(self.ttl, key=self.prefix)
        await kept.start()
        self._kept = kept
        try:
            self.key, self.revision = await client.drive(
                _enqueue(core, self.prefix, kept.id, value))
            await client.drive(_wait_turn(core, self.prefix, self.key, self.revision,
                                          lambda: kept.lost, timeout, what))
        except BaseException:
            await self.resign()
            raise
        self._leading = True
        return self.revision

    async def proclaim(self, value: bytes) -> None:
        """Change the leader's value without a new election.

        Raises:
            InvalidRequest: not the leader; LeaseNotFound: leadership was lost.
        """
        if not self._leading or self._kept is None:
            raise InvalidRequest(f"election {self.name!r:.40}: not the leader")
        await self.client.drive(_proclaim(self.client.core, self.key, self.revision,
                                          self._kept.id, value, f"election {self.name!r:.40}"))

    async def resign(self) -> None:
        """Stop leading (or campaigning): revoke the lease, deleting our key. Idempotent."""
        kept, self._kept = self._kept, None
        self._leading = False
        self.key, self.revision = b"", 0
        if kept is not None:
            await kept.aclose()

    async def leader(self) -> Leader | None:
        """The current leader (the oldest candidate), or None."""
        core = self.client.core
        self.prefix = await self.client.drive(_prepare(core, self.name))
        return await self.client.drive(_leader(core, self.prefix))

    async def observe(self, *, poll: float = _OBSERVE_POLL) -> AsyncIterator[Leader | None]:
        """The leader now, then each change (new leader, new value, none), by polling."""
        core = self.client.core
        self.prefix = await self.client.drive(_prepare(core, self.name))
        last: Leader | _Unseen | None = _UNSEEN
        while True:
            last = await self.client.drive(_next_leader(core, self.prefix, last, poll))
            yield last

    async def __aenter__(self) -> AsyncElection:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.resign()
        except Exception:
            if exc_type is None:
                raise


@final
class SyncElection(Election):
    """`Election` for `SyncClient` (blocking; the lease is kept by a daemon thread)."""

    def __init__(self, client: SyncClient, name: bytes | str, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self._setup(name, ttl)
        self._kept: SyncKeptLease | None = None

    @property
    def lost(self) -> bool:
        return self._kept is not None and self._kept.lost

    def campaign(self, value: bytes, *, timeout: float | None = None) -> int:
        """As `AsyncElection.campaign`, blocking."""
        if self._kept is not None:
            raise InvalidRequest(f"election {self.name!r:.40}: already campaigning")
        client = self.client
        core = client.core
        what = f"election {self.name!r:.40}"
        self.prefix = client.drive(_prepare(core, self.name))
        kept = client.lease(self.ttl, key=self.prefix)
        kept.start()
        self._kept = kept
        try:
            self.key, self.revision = client.drive(_enqueue(core, self.prefix, kept.id, value))
            client.drive(_wait_turn(core, self.prefix, self.key, self.revision,
                                    lambda: kept.lost, timeout, what))
        except BaseException:
            self.resign()
            raise
        self._leading = True
        return self.revision

    def proclaim(self, value: bytes) -> None:
        if not self._leading or self._kept is None:
            raise InvalidRequest(f"election {self.name!r:.40}: not the leader")
        self.client.drive(_proclaim(self.client.core, self.key, self.revision, self._kept.id,
                                    value, f"election {self.name!r:.40}"))

    def resign(self) -> None:
        kept, self._kept = self._kept, None
        self._leading = False
        self.key, self.revision = b"", 0
        if kept is not None:
            kept.close()

    def leader(self) -> Leader | None:
        core = self.client.core
        self.prefix = self.client.drive(_prepare(core, self.name))
        return self.client.drive(_leader(core, self.prefix))

    def observe(self, *, poll: float = _OBSERVE_POLL) -> Iterator[Leader | None]:
        core = self.client.core
        self.prefix = self.client.drive(_prepare(core, self.name))
        last: Leader | _Unseen | None = _UNSEEN
        while True:
            last = self.client.drive(_next_leader(core, self.prefix, last, poll))
            yield last

    def __enter__(self) -> SyncElection:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.resign()
        except Exception:
            if exc_type is None:
                raise
