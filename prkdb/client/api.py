"""`AsyncApi`: the SDK's async methods, shared by the trio and asyncio front ends.

Every method makes a plan of the sans-IO core (prkdb.client.core) and hands
it to ``_drive``, which each front end implements with its own I/O. So the
trio `PrkDbClient` and the asyncio `AsyncClient` have one API, one set of
docstrings and one behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final

from prkdb.client.core import BACKUP_CHUNK, ClientCore, Plan
from prkdb.client.results import (
    UNSET,
    GetResult,
    KeyValue,
    Lease,
    LeaseStatus,
    ScanPage,
    TxnResult,
    Unset,
    WatchEvent,
    WriteResult,
)
from prkdb.client.routing import Topology
from prkdb.client.scan import DEFAULT_PAGE_SIZE, KeyRange, key_range
from prkdb.client.sessions import SessionPool
from prkdb.client.txn import Compare, TxnOpLike
from prkdb.client.watch import (
    AwaitFrames,
    CancelStream,
    OpenStream,
    WatchCursor,
    WatchDriver,
    WatchInbox,
    current_cursor,
    new_watch_plan,
    watch_start,
)
from prkdb.wire.messages import (
    AdminOk,
    BackupBeginOk,
    BackupChunk,
    BatchOp,
    Perm,
    ReadConsistency,
    RoleAdd,
    RoleDelete,
    RoleGrant,
    RoleInfo,
    RoleList,
    RoleListOk,
    RoleRevoke,
    StatusOk,
    UserAdd,
    UserDelete,
    UserGrant,
    UserInfo,
    UserList,
    UserListOk,
    UserPasswd,
    UserRevoke,
)
from prkdb.wire.messages import Compare as WireCompare

if TYPE_CHECKING:
    from prkdb.client.lease import AsyncKeptLease

__all__ = ["AsyncApi", "AsyncWatch", "Connecting", "WatchIO"]

T = TypeVar("T")
C = TypeVar("C", bound="AsyncApi")


class AsyncApi:
    """The async client API; subclasses provide ``core`` and ``_drive``.

    Every method takes ``timeout=`` (seconds, the whole call including
    retries); None means the client's default.
    """

    core: ClientCore

    async def _drive(self, plan: Plan[T]) -> T:
        raise NotImplementedError

    async def drive(self, plan: Plan[T]) -> T:
        """Run a `ClientCore` plan with this client's I/O; its result.

        The extension point of the SDK: the recipes (prkdb.client.recipes)
        write their waits and requests once, as plans, and every front end
        runs them.
        """
        return await self._drive(plan)

    # --- what the core knows -------------------------------------------------------

    @property
    def cluster_id(self) -> str | None:
        """The cluster's id: as given, or as the first node named it."""
        return self.core.cluster_id

    @property
    def topology(self) -> Topology:
        return self.core.topology

    @property
    def sessions(self) -> SessionPool:
        return self.core.sessions

    @property
    def timeout(self) -> float:
        """Default per-call deadline, seconds (retries included)."""
        return self.core.timeout

    @property
    def attempt_timeout(self) -> float:
        """Longest wait for one answer from one node before trying elsewhere, seconds."""
        return self.core.attempt_timeout

    @property
    def refresh_problems(self) -> list[str]:
        return self.core.refresh_problems

    @property
    def client_id(self) -> int:
        """The first session's client id: the one every write uses when none overlap."""
        return self.core.client_id

    # --- key-value API -------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> bytes | None:
        """The value of `key` (None if absent), linearizable: read at the leader."""
        plan = self.core.get(key, ReadConsistency.LINEARIZABLE, timeout)
        return (await self._drive(plan)).value

    async def get_with_consistency(
        self, key: bytes, consistency: ReadConsistency, *, timeout: float | None = None
    ) -> bytes | None:
        """The value of `key` at the given consistency (FOLLOWER/STALE spread load)."""
        return (await self._drive(self.core.get(key, consistency, timeout))).value

    async def get_entry(
        self,
        key: bytes,
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> GetResult:
        """`key` with its version, mod_revision and the answering node's applied index.

        Raises:
            InvalidRequest: bad key.
            Timeout: no replica could answer before the deadline.
        """
        return await self._drive(self.core.get(key, consistency, timeout))

    async def put(self, key: bytes, value: bytes, *, lease: int | Lease = 0,
                  timeout: float | None = None) -> WriteResult:
        """Store `value` under `key`, exactly once.

        Args:
            lease: attach the key to this lease (an id, or a `Lease` or kept
                lease): it is deleted when the lease expires or is revoked.
                The lease must live in the key's partition. 0: no lease (a
                put without one detaches the key from any).

        Raises:
            OutcomeUnknown: the deadline passed while the write's fate was unknown.
            Timeout: the deadline passed and the write surely did not happen.
            InvalidRequest / TooLarge: the write can never succeed.
            LeaseNotFound: the lease expired or was revoked.
        """
        if lease:
            return await self._drive(self.core.put_leased(key, value, lease, timeout))
        return await self._drive(self.core.put(key, value, timeout))

    async def delete(self, key: bytes, *, timeout: float | None = None) -> WriteResult:
        """Remove `key` (``prev_version`` 0 in the result: it was already absent)."""
        return await self._drive(self.core.delete(key, timeout))

    async def cas(
        self,
        key: bytes,
        *,
        expected_value: bytes | Unset | None = UNSET,
        expected_version: int | None = None,
        new_value: bytes | None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Compare-and-set: if the conditions hold, store `new_value` (None deletes).

        Args:
            expected_value: the value the key must have; None = the key must
                be absent; omitted = not compared.
            expected_version: the version the key must have (0 = absent);
                None = not compared.
            new_value: what to store if the conditions hold; None deletes.

        Returns:
            A `WriteResult`; ``succeeded`` False means a condition failed
            (``version`` is then the key's current version).

        Raises:
            InvalidRequest: no condition given, or contradictory conditions.
        """
        return await self._drive(
            self.core.cas(key, expected_value, expected_version, new_value, timeout)
        )

    async def batch(
        self,
        ops: Iterable[tuple[Any, ...] | BatchOp],
        *,
        timeout: float | None = None,
    ) -> WriteResult:
        """Apply puts and deletes atomically, in order; all keys must share a partition.

        Sent as a `txn` without compares (one revision, exactly once). Keys
        share a partition when they share a hash tag (``user:{42}:name``).

        Args:
            ops: ``("put", key, value)``, ``("delete", key)`` or `BatchOp` items.

        Returns:
            A `WriteResult` whose ``ops`` has one (version, prev_version) per op.

        Raises:
            InvalidRequest: empty batch, a malformed op, or keys in more than
                one partition (checked before anything is sent).
        """
        return await self._drive(self.core.batch(ops, timeout))

    # --- scans ---------------------------------------------------------------------

    async def scan(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> list[KeyValue]:
        """Every key starting with `prefix`, or in ``[start, end)``, in key order (a list).

        Reads every partition a page at a time and merges the pages by key
        (prkdb.client.scan). Each key that exists for the whole call is
        returned exactly once; each partition page is read at one
        linearizable point (at `consistency`), with no snapshot across
        partitions or pages.

        Args:
            prefix: the keys' prefix (``b""``: every key); or give start/end.
            start: first key (None: the first key); end: first key past the
                range (None: to the last key).
            limit: at most this many keys (0: all).
            keys_only: values come back empty (``b""``).
            consistency: as for `get_entry`, per partition page.
            page_size: keys asked of one partition per request.
            timeout: per page request, retries included.

        Returns:
            `KeyValue` records: key, value, version, mod_revision,
            create_revision, lease.

        Raises:
            InvalidRequest: a prefix and start/end together, bad types.
            Timeout: a partition could not answer in time.
        """
        return await self._drive(self.core.scan(
            key_range(prefix, start, end), limit, keys_only, consistency, page_size, timeout))

    async def scan_iter(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[KeyValue]:
        """`scan`, lazily: ``async for kv in client.scan_iter(b"app/"): ...``.

        Pages are read as the loop needs them: a loop that stops early reads
        no more (a partition is asked again only when all it gave was
        delivered). The guarantees are `scan`'s.
        """
        cursor = await self._drive(self.core.scan_cursor(
            key_range(prefix, start, end), limit, keys_only, consistency, page_size, timeout))
        while batch := await self._drive(cursor.next_batch()):
            for item in batch:
                yield item

    async def scan_page(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        limit: int = 0,
        keys_only: bool = False,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        token: bytes | str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> ScanPage:
        """One page of at most `page_size` keys and an opaque token for the next one.

        For stateless paging (a web API's "next page" link): pass the page's
        ``token`` to get the next page; ``token`` None means it was the last.
        The token holds the range, keys_only and the limit left; the range
        arguments may be given again (they must match) or left out. Each
        page restarts every partition just after the last key delivered, so
        the guarantees are `scan`'s, across pages too.

        Raises:
            InvalidRequest: a damaged token, or one of another range.
        """
        given = prefix is not None or start is not None or end is not None
        return await self._drive(self.core.scan_page(
            key_range(prefix, start, end) if given or token is None else None, limit,
            keys_only, consistency, token, page_size, timeout))

    async def count(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> int:
        """How many keys start with `prefix` (or are in ``[start, end)``); no keys are sent."""
        return await self._drive(self.core.count(key_range(prefix, start, end), consistency,
                                                 timeout))

    # --- transactions --------------------------------------------------------------

    async def txn(
        self,
        compares: Iterable[Compare | WireCompare],
        success: Iterable[TxnOpLike],
        failure: Iterable[TxnOpLike] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """If every compare holds, run the `success` ops, else the `failure` ops; atomically.

        Build compares and ops with prkdb.client.txn: ``Compare.value(k) ==
        b"x"``, ``Compare.version(k) > 0``, `exists`, `absent`; ``Put(k, v,
        lease=0)``, ``Delete(k)``, ``Get(k)``. Every key must be in one
        partition (use a hash tag: ``user:{42}:name``). The txn is one
        revision; later ops see earlier ones. Exactly once, like every write.

        Returns:
            `TxnResult` (succeeded, revision, results: one per op of the
            branch that ran).

        Raises:
            InvalidRequest: keys in several partitions (named, before
                sending), a malformed compare or op.
            LeaseNotFound: a put names a lease that is gone.
            OutcomeUnknown / Timeout: as for `put`.
        """
        return await self._drive(self.core.txn(compares, success, failure, timeout))

    # --- leases --------------------------------------------------------------------

    async def grant_lease(self, ttl: float, *, key: bytes = b"",
                          timeout: float | None = None) -> Lease:
        """Grant a lease of `ttl` seconds in the partition of `key` (``b""``: any partition).

        A lease holds keys of its own partition only, so pass one of the
        keys it will hold (or one with the same hash tag). The server raises
        a TTL below its minimum (2 s by default); `Lease.ttl` is what it
        granted. Keep it alive with `keep_alive_once` (or use `lease`,
        which does that in the background).

        Raises:
            TooManyLeases: the partition holds its limit of leases.
        """
        return await self._drive(self.core.grant_lease(ttl, key, timeout))

    async def keep_alive_once(self, lease_id: int | Lease, *,
                              timeout: float | None = None) -> float:
        """Renew a lease now (its full TTL again); the seconds it has left.

        Raises:
            LeaseNotFound: the lease expired or was revoked.
        """
        return await self._drive(self.core.keep_alive_once(lease_id, timeout))

    async def keep_alive_many(self, lease_ids: Iterable[int | Lease], *,
                              timeout: float | None = None) -> dict[int, float]:
        """Renew many leases with one request per partition; id -> seconds left (0.0: gone)."""
        return await self._drive(self.core.keep_alive(lease_ids, timeout))

    async def revoke_lease(self, lease_id: int | Lease, *, timeout: float | None = None) -> int:
        """Delete a lease and every key attached to it (in one revision); how many keys.

        Raises:
            LeaseNotFound: no such lease (expired, revoked, never granted).
        """
        return await self._drive(self.core.revoke_lease(lease_id, timeout))

    async def lease_ttl(self, lease_id: int | Lease, *, keys: bool = False,
                        timeout: float | None = None) -> LeaseStatus:
        """A lease as its partition's leader sees it: TTL, seconds left, keys if `keys`.

        Raises:
            LeaseNotFound: no such lease.
        """
        return await self._drive(self.core.lease_ttl(lease_id, keys, timeout))

    async def leases(self, *, timeout: float | None = None) -> list[LeaseStatus]:
        """Every lease of the cluster, by id (each partition's leader asked at once)."""
        return await self._drive(self.core.leases(timeout))

    def lease(self, ttl: float, *, key: bytes = b"") -> AsyncKeptLease:
        """A lease kept alive in the background while ``async with`` holds it (prkdb.client.lease).

        Grants at entry, renews every ttl/3, revokes at exit (deleting its
        keys); ``.lost`` turns true if a renewal finds the lease gone.
        """
        raise NotImplementedError

    # --- admin API -----------------------------------------------------------------

    async def status(self, node_id: int | None = None, *, timeout: float | None = None) -> StatusOk:
        """Topology and Raft state as one node sees it (any node if `node_id` is None).

        Also refreshes the client's cached topology.
        """
        return await self._drive(self.core.status(node_id, timeout))

    async def refresh_topology(self, *, timeout: float | None = None) -> None:
        """Ask any node for the members and leaders now.

        Raises:
            Timeout: no node answered before the deadline.
            WrongCluster: a node belongs to another cluster.
        """
        await self._drive(self.core.refresh_topology(timeout))

    # --- users and roles (root only; issue 18) -----------------------------------------

    async def user_add(self, name: str, password: str | None = None, roles: Iterable[str] = (),
                       *, timeout: float | None = None) -> AdminOk:
        """Create user `name` (password None: it logs in with a client certificate only)."""
        given = tuple(roles)  # (an iterator is read once; every attempt sends the same)
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: UserAdd(rid, name, password, given, c, s),
            f"user add {name!r}",
            AdminOk, timeout))

    async def user_delete(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Delete user `name` (not root); its tokens stop working on every node."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: UserDelete(rid, name, c, s),
            f"user delete {name!r}", AdminOk, timeout))

    async def user_passwd(self, name: str, password: str, *,
                          timeout: float | None = None) -> AdminOk:
        """Set a user's password; every token issued before is void."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: UserPasswd(rid, name, password, c, s),
            f"user passwd {name!r}", AdminOk,
            timeout))

    async def user_grant(self, name: str, role: str, *,
                         timeout: float | None = None) -> AdminOk:
        """Give user `name` the role `role` (an existing role, or root)."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: UserGrant(rid, name, role, c, s),
            f"user grant {name!r} {role!r}", AdminOk,
            timeout))

    async def user_revoke(self, name: str, role: str, *,
                          timeout: float | None = None) -> AdminOk:
        """Take the role `role` from user `name`."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: UserRevoke(rid, name, role, c, s), f"user revoke {name!r} {role!r}",
            AdminOk, timeout))

    async def users(self, *, timeout: float | None = None) -> list[UserInfo]:
        """Every user with its roles, by name."""
        reply = await self._drive(self.core.auth_admin(UserList, "user list", UserListOk,
                                                       timeout, write=False))
        return list(reply.users)

    async def role_add(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Create role `name` (no permissions yet)."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: RoleAdd(rid, name, c, s), f"role add {name!r}", AdminOk, timeout))

    async def role_delete(self, name: str, *, timeout: float | None = None) -> AdminOk:
        """Delete role `name`; users that had it lose it."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: RoleDelete(rid, name, c, s),
            f"role delete {name!r}", AdminOk, timeout))

    async def role_grant(self, role: str, start: bytes, end: bytes | None, perm: Perm, *,
                         timeout: float | None = None) -> AdminOk:
        """Give `role` READ or READWRITE on the keys in ``[start, end)`` (end None: no end)."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: RoleGrant(rid, role, start, end, Perm(perm), c, s),
            f"role grant {role!r}", AdminOk, timeout))

    async def role_revoke(self, role: str, start: bytes, end: bytes | None, *,
                          timeout: float | None = None) -> AdminOk:
        """Take back the permission `role` has on exactly ``[start, end)``."""
        return await self._drive(self.core.auth_admin(
            lambda rid, c, s: RoleRevoke(rid, role, start, end, c, s),
            f"role revoke {role!r}", AdminOk,
            timeout))

    async def roles(self, *, timeout: float | None = None) -> list[RoleInfo]:
        """Every role with its permissions, by name (root first: it allows everything)."""
        reply = await self._drive(self.core.auth_admin(RoleList, "role list", RoleListOk,
                                                       timeout, write=False))
        return list(reply.roles)

    async def transfer_leader(
        self, partition: int, to_node: int = 0, *, timeout: float | None = None
    ) -> AdminOk:
        """Ask `partition`'s leader to hand leadership to `to_node` (0 = its pick).

        Asking the current leader to hand over to itself answers at once.
        """
        return await self._drive(self.core.transfer_leader(partition, to_node, timeout))

    async def snapshot(
        self,
        partition: int | None = None,
        *,
        node_id: int | None = None,
        timeout: float | None = None,
    ) -> AdminOk:
        """Ask a node to snapshot `partition` now (None = every partition).

        The node is `node_id` if given, else the partition's leader, else (no
        partition) the lowest-numbered known node. Snapshots are per node.
        """
        return await self._drive(self.core.snapshot(partition, node_id, timeout))

    async def backup_begin(self, partition: int, *, timeout: float | None = None
                           ) -> BackupBeginOk:
        """Have `partition`'s leader pick a snapshot covering every write acknowledged so far.

        The leader confirms its leadership and waits until it applied its
        commit index as of the request (as for a linearizable read), then
        snapshots the partition and holds the file open for `backup_read`
        from the node named in the answer. The wait for the snapshot is not
        cut short per attempt: one attempt may take the whole `timeout`.
        """
        return await self._drive(self.core.backup_begin(partition, timeout))

    async def backup_read(self, begin: BackupBeginOk, offset: int, length: int = BACKUP_CHUNK,
                          *, timeout: float | None = None) -> BackupChunk:
        """Bytes of the snapshot file `begin` named, from the node that holds it.

        Raises:
            InvalidRequest: with ``details["backup_gone"]`` when that node no
                longer has the file (start over with `backup_begin`).
        """
        return await self._drive(self.core.backup_read(begin, offset, length, timeout))

    async def backup_partition(
        self,
        partition: int,
        out: IO[bytes],
        *,
        attempts: int = 3,
        chunk_size: int = BACKUP_CHUNK,
        timeout: float | None = None,
        begin_timeout: float | None = None,
    ) -> BackupBeginOk:
        """Copy a snapshot of `partition` taken now into `out`; what it is.

        The snapshot covers every write acknowledged before this call
        (`backup_begin`). The bytes are the node's snapshot file as-is; their
        size and SHA-256 are checked against what the node announced. If the
        node loses the file or a check fails, the partition starts over (at
        most `attempts` times), rewinding `out` to where it was, so `out`
        must be seekable (a file).

        Args:
            timeout: per read call; begin_timeout: for `backup_begin`, which
                waits for the snapshot to be written (default: `timeout`).

        Raises:
            BackupFailed: every attempt failed; the last reason is named.
            Timeout, InvalidRequest, ...: as `backup_begin` / `backup_read`.
        """
        return await self._drive(self.core.backup_partition(
            partition, out, attempts, chunk_size, timeout, begin_timeout))

    # --- watches -----------------------------------------------------------------------

    def watch(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        cursor: WatchCursor | str | bytes | None = None,
        prev_values: bool = False,
        timeout: float | None = None,
    ) -> AsyncWatch:
        """The changes of every key starting with `prefix`, or in ``[start, end)``, as they happen.

        ``async for event in client.watch(b"app/"): ...`` (or ``async with``
        it, to close its streams on exit). One stream per partition the range
        covers (a hash-tagged prefix: one), at a follower if possible. Per
        partition, events come in revision order; after a lost connection, a
        dead or frozen node or a server-side overflow the watch reopens the
        stream elsewhere and goes on exactly after what it delivered: no gap,
        no duplicate. ``watch.cursor`` is what was delivered; pass it (or its
        ``encode()`` text) as `cursor` to resume later. See prkdb.client.watch.

        Args:
            prefix / start / end: the keys, as for `scan`.
            cursor: deliver only what comes after it; partitions it does not
                name (and all, without a cursor) start from "now".
            prev_values: fill `WatchEvent.prev_value`.
            timeout: for the calls that start the watch (not for the watch).

        Raises (from the iteration):
            Compacted: the cursor is older than a partition's kept history
                (``.partition``, ``.oldest``): list again and watch from a new cursor.
            InvalidRequest: bad arguments or a damaged cursor.
        """
        return AsyncWatch(self, key_range(prefix, start, end), cursor, prev_values, timeout)

    async def watch_cursor(
        self,
        prefix: bytes | None = None,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        timeout: float | None = None,
    ) -> WatchCursor:
        """A cursor at "now" for a range: take it, list the range, then watch from it.

        Nothing committed after it is missed by ``watch(cursor=...)``; what
        the list already shows may come again as events (applied in order,
        they end in the same state). See `prkdb.client.watch.current_cursor`.
        """
        return await self._drive(current_cursor(self.core, key_range(prefix, start, end),
                                                timeout))

    def _watch_io(self) -> WatchIO:
        """A new `WatchIO` for one watch (front ends implement it)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class WatchIO(Protocol):
    """What `AsyncWatch` needs of a front end (prkdb.client.watch's actions)."""

    inbox: WatchInbox

    async def open(self, action: OpenStream) -> object:
        """Dial if needed, send the request; the stream's handle."""

    def cancel(self, handle: object, build: Callable[[int], Any]) -> None:
        """Stop the stream and send its cancel."""

    async def wait(self, deadline: float) -> None:
        """Return once the inbox is not empty, or at `deadline` (the core's clock)."""


@final
class AsyncWatch:
    """An async iterator of `WatchEvent`s: what `AsyncApi.watch` returns.

    ``cursor`` says what was delivered. ``aclose`` (or leaving ``async
    with``) cancels its streams; a watch not closed is cancelled on the
    server when its connection closes.
    """

    def __init__(self, client: AsyncApi, key_range: KeyRange, cursor: object,
                 prev_values: bool, timeout: float | None) -> None:
        self._client = client
        self._range = key_range
        self._given = cursor
        self._prev_values = prev_values
        self._timeout = timeout
        self._driver: WatchDriver | None = None
        self._io: WatchIO | None = None
        self._closed = False

    @property
    def cursor(self) -> WatchCursor:
        """Partition -> the revision up to which every event was delivered."""
        if self._driver is not None:
            return self._driver.plan.cursor
        return WatchCursor() if self._given is None else WatchCursor.parse(self._given)

    @property
    def streams(self) -> dict[int, str]:
        """Partition -> the node (host:port) its stream is open at now; a partition
        between streams (reconnecting) is absent. For logs and debugging."""
        return self._driver.plan.streams if self._driver is not None else {}

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        driver = self._driver
        if driver is None:
            core = self._client.core
            start = await self._client.drive(watch_start(core, self._range, self._given,
                                                         self._timeout))
            self._io = self._client._watch_io()
            driver = self._driver = WatchDriver(
                new_watch_plan(core, self._range, start, self._prev_values))
        io = self._io
        assert io is not None
        while True:
            event = driver.next_event()
            if event is not None:
                return event
            action = driver.action
            if action is None:
                raise StopAsyncIteration
            if isinstance(action, OpenStream):
                try:
                    handle = await io.open(action)
                except Exception as exc:
                    driver.fail(exc)
                else:
                    driver.answer(handle)
            elif isinstance(action, CancelStream):
                io.cancel(action.handle, action.cancel)
                driver.answer(None)
            else:
                assert isinstance(action, AwaitFrames)
                await io.wait(action.deadline)
                driver.answer(io.inbox.take())

    async def aclose(self) -> None:
        """Cancel the streams; the iteration ends. Idempotent."""
        driver = self._driver
        if driver is not None and self._io is not None and not self._closed:
            for cancel in driver.close():
                self._io.cancel(cancel.handle, cancel.cancel)
        self._closed = True


class Connecting(Generic[C]):
    """What ``connect`` returns: ``await`` it, or ``async with`` it (closed on exit)."""

    __slots__ = ("_client", "_open")

    def __init__(self, open_: Callable[[], Awaitable[C]]) -> None:
        self._open = open_
        self._client: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._open().__await__()

    async def __aenter__(self) -> C:
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._client is not None
        await self._client.aclose()
