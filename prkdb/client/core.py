"""The sans-IO client core: routing, retries, sessions and topology for every front end.

Theory of operation
-------------------
Three front ends share this module: `PrkDbClient` (trio), `AsyncClient`
(asyncio, prkdb.client.aio) and `SyncClient` (blocking sockets). Each public
call of a front end is a *plan*: a generator made by a `ClientCore` method
that yields actions and returns the call's result. A front end only runs
actions, in its own kind of I/O:

- `Send`: send one request to ``address`` (dialing first if it has no live
  connection there, with `hello_frame` / `accept_hello`) and ``send`` the
  plan the answer (any message; an `Error` frame is an answer too), or
  ``throw`` into the plan what went wrong: `ConnectFailed`, `ConnectionLost`,
  `AttemptExpired` (``deadline`` passed, dial included), or a fatal error
  (`WrongCluster`, `ProtocolError`, `TooLarge`). The action is also the
  attempt's `AttemptState` (pass it as the connection's ``state``):
  ``sent`` must be true once the request's bytes may have reached the node.
- `Sleep`: pause that many seconds (a backoff), then ``send`` None.
- `Gather`: drive several plans at once (a scan's pages of every
  partition), then ``send`` their results as a list in plan order; if one
  raises, stop the others (closing them) and ``throw`` that exception. The
  blocking front end drives them one after the other.

A front end must ``close()`` a plan it stops driving (cancellation): that
runs the plan's ``finally`` blocks, which give session slots back.

The retry loop (`ClientCore.execute`) runs one op within a per-call deadline:

1. pick a target (`_route`): the partition's cached leader for writes,
   LINEARIZABLE reads and admin calls; a non-leader round-robin for FOLLOWER
   reads (leader as fallback); any node for STALE reads and Status. An
   unknown leader triggers a topology refresh (a Status to another node);
2. send, and wait at most one *attempt span*: ``attempt_timeout``, but never
   more than half the call's budget, so that a second attempt always fits
   inside the caller's deadline;
3. on NOT_LEADER follow the hint at once (or refresh when there is none);
   on UNAVAILABLE / TIMEOUT / OUTCOME_UNKNOWN / a lost connection back off
   (exponential, jittered, capped by the deadline) and try again; any other
   error is raised at once.

A node that did not answer an attempt in time is *suspected* for
`SUSPECT_FOR` seconds (or until it answers something): routing treats it as
leading nothing and refreshes ask others first. A leader frozen by SIGSTOP or
cut off by a partition keeps its TCP connection open, so without this every
call would spend its attempt there until the node woke up, while the rest of
the cluster had long elected a new leader.

Writes carry ``(client_id, seq)`` from a session slot (prkdb.client.sessions)
held for the whole loop, so every retry of one logical write is the same
request to the state machine, which applies it once. A write attempt is
*ambiguous* when its bytes may have reached a server and no definite answer
came back (connection lost after sending, OUTCOME_UNKNOWN, or the attempt's
time ran out). Retrying is the cure; only if the deadline ends the loop
after an ambiguous attempt does the caller get `OutcomeUnknown`. Otherwise a
spent deadline raises `Timeout` (an `Unavailable`) naming the partition and
the last attempts.

The cluster id: given, it is checked at every handshake. Not given, the
first node that answers names it and the core pins it; a node of another
cluster is then refused with WRONG_CLUSTER naming both.

The core never reads a clock itself: the front end passes its own (trio,
asyncio or monotonic time), so tests drive it with trio's `MockClock`.
Randomness (jitter, client ids) comes from an injectable `random.Random`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Final, TypeVar, final

from prkdb.client.attempt import (
    AttemptExpired,
    AttemptState,
    ConnectFailed,
    ConnectionLost,
    error_from_frame,
    hello_frame,
    hello_node_id,
)
from prkdb.client.results import (
    BackupFailed,
    GetResult,
    KeyValue,
    Lease,
    LeaseStatus,
    ScanPage,
    TxnResult,
    Unset,
    WriteResult,
    check_key,
    check_value,
    new_get_result,
    parse_batch_op,
    write_result,
)
from prkdb.client.routing import Topology, normalize_address
from prkdb.client.scan import (
    KeyRange,
    ScanMerge,
    check_count,
    decode_token,
    encode_token,
    pinned_key,
)
from prkdb.client.security import Credentials
from prkdb.client.sessions import SessionPool
from prkdb.client.txn import (
    Compare,
    TxnOpLike,
    check_lease_id,
    compare_to_wire,
    ops_to_wire,
)
from prkdb.errors import (
    ErrorCode,
    InvalidRequest,
    LeaseNotFound,
    NotLeader,
    OutcomeUnknown,
    PrkdbError,
    ProtocolError,
    Timeout,
    WrongCluster,
)
from prkdb.wire import (
    encode_delete_request,
    encode_get_request,
    encode_message,
    encode_put_request,
)
from prkdb.wire.messages import (
    BACKUP_CHUNK_MAX,
    KEEPALIVE_IDS_MAX,
    KEY_RULE_HASHTAG,
    AdminOk,
    Authenticate,
    AuthOk,
    BackupBegin,
    BackupBeginOk,
    BackupChunk,
    BackupRead,
    BatchOp,
    Cas,
    Error,
    GetOk,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKeepAliveOk,
    LeaseList,
    LeaseListOk,
    LeaseOk,
    LeaseRevoke,
    LeaseTimeToLive,
    Login,
    OpKind,
    OpResult,
    ReadConsistency,
    Scan,
    ScanOk,
    Snapshot,
    Status,
    StatusOk,
    TransferLeader,
    Txn,
    TxnOk,
    TxnOp,
    TxnOpKind,
    WireMessage,
    WriteOk,
    lease_partition,
    to_wire,
)
from prkdb.wire.messages import Compare as WireCompare

__all__ = [
    "BACKUP_CHUNK",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "SUSPECT_FOR",
    "ClientCore",
    "Gather",
    "Plan",
    "ScanCursor",
    "Send",
    "Sleep",
    "drive_async",
    "drive_blocking",
    "gather",
]

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 5.0
"""Per-call deadline in seconds, retries included."""

DEFAULT_ATTEMPT_TIMEOUT: Final = 2.0
"""Seconds one node gets to answer one attempt before the SDK suspects it and
retries elsewhere (writes with the same seq). Below the server's 5 s request
timeout on purpose: a node frozen or cut off by a partition keeps its TCP
connection open, and would otherwise eat the whole deadline. A call whose
deadline is shorter gets half of it per attempt."""

SUSPECT_FOR: Final = 1.0
"""Seconds a node that let an attempt expire is avoided (about one election
timeout: a leader silent that long has been replaced by then). Ended early
by any answer from it."""

BACKUP_CHUNK: Final = 1024 * 1024
"""Bytes asked for per `BackupRead` by `ClientCore.backup_partition`."""

_BACKOFF_BASE: Final = 0.02  # seconds; first retry waits 10-20 ms
_BACKOFF_CAP: Final = 1.0  # seconds; no single wait is longer
_STATUS_TRY_TIMEOUT: Final = 1.0  # seconds one node gets to answer a topology refresh
_REFRESH_POLL: Final = 0.005  # seconds between looks while another call refreshes
_MAX_HINT_HOPS: Final = 3  # NOT_LEADER hints followed without a pause (ping-pong guard)
_TRIED_SHOWN: Final = 6  # attempts listed in a give-up message
#: The request id of the Authenticate pipelined after a Hello (`hello_frame`): far above
#: any id a connection counts to, so its answer matches no request and is dropped.
AUTHENTICATE_REQUEST_ID: Final = 2**62


@final
class Send(AttemptState):
    """Action: one request to one node; answer with its reply (see module doc).

    Also the attempt's `AttemptState` (one object per attempt, not two): the
    front end hands it to the connection as the ``state`` to mark ``sent``.
    """

    __slots__ = ("address", "build")

    def __init__(self, address: str, build: Callable[[int], Any], deadline: float) -> None:
        # AttemptState's fields set here too: a super() call costs as much as they do.
        self.sent = False
        self.abandoned = False
        self.task = None
        self.deadline = deadline
        self.address = address
        #: request id -> the wire array (`to_wire` form), or a finished frame (bytes).
        self.build = build

    def __repr__(self) -> str:
        return f"Send({self.address!r}, deadline={self.deadline}, sent={self.sent})"


@final
@dataclass(slots=True)
class Sleep:
    """Action: pause, then go on."""

    seconds: float


@final
@dataclass(slots=True)
class Gather:
    """Action: drive `plans` at once, then go on with their results, in order (module doc)."""

    plans: list[Generator[Any, Any, Any]]


Plan = Generator[Send | Sleep | Gather, Any, T]
"""What every `ClientCore` call returns: drive it to get a ``T``."""


@final
@dataclass(slots=True)
class _Op:
    """One logical request and how to route it.

    Made once per call: positional arguments, and (on the hot calls) no
    closure but `build`, since each costs more than the fields together.
    """

    # For messages ("put key=b'k'"); a function because most calls never
    # need the text, and formatting it would cost more than the call itself.
    describe: Callable[[], str]
    build: Callable[[int], Any]  # request id -> the wire array (`to_wire` form) or frame
    partition: int | None = None  # routes by partition (leader or replicas)
    consistency: ReadConsistency = ReadConsistency.LINEARIZABLE
    write: bool = False  # carries a session: ambiguity -> OutcomeUnknown
    address: str | None = None  # a fixed node (Status to a node, Snapshot)
    attempt_timeout: float | None = None  # None: the client's; admin calls that may be slow


def _status_array(request_id: int) -> list[Any]:
    return to_wire(Status(request_id))


def _describe_get(key: bytes, consistency: ReadConsistency) -> str:
    return f"get key={key[:32]!r} ({consistency.name.lower()})"


def _describe_write(what: str, key: bytes | None, partition: int, client_id: int,
                    seq: int) -> str:
    about = what if key is None else f"{what} key={key[:32]!r}"
    return f"{about} (partition {partition}, client {client_id} seq {seq})"


def _cas_array(request_id: int, key: bytes, expected_value: bytes | None,
               expected_version: int | None, new_value: bytes | None, client_id: int,
               seq: int) -> list[Any]:
    return to_wire(Cas(request_id, key, expected_value, expected_version, new_value,
                       client_id, seq))


_STALE: Final = ReadConsistency.STALE
_LINEARIZABLE: Final = ReadConsistency.LINEARIZABLE


def _backoff_delays(rng: random.Random) -> Generator[float, None, None]:
    """Exponential backoff with "equal jitter": each wait in [b/2, b], b doubling to the cap."""
    bound = _BACKOFF_BASE
    while True:
        yield rng.uniform(bound / 2, bound)
        bound = min(bound * 2, _BACKOFF_CAP)


def _positive(value: float, name: str) -> float:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise InvalidRequest(f"{name} ({value!r}) must be a positive number of seconds")
    return float(value)


@final
class ClientCore:
    """Everything a client knows and decides; the front ends only do I/O.

    Safe to share between the tasks of one event loop, and between threads
    (the blocking front end): its state is a cache of hints, and the pieces
    that must not be shared (session slots) are handed out one per write.
    """

    def __init__(
        self,
        seeds: Sequence[str] | str,
        *,
        clock: Callable[[], float],
        cluster_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        rng: random.Random | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """Raises: InvalidRequest: no seeds, a malformed seed, or a bad timeout."""
        if credentials is not None and not isinstance(credentials, Credentials):
            raise InvalidRequest(f"credentials ({type(credentials).__name__}) must be a "
                                 "prkdb.client.Credentials")
        #: Who to log in as (None: no login; the cluster must have auth off).
        self.credentials = credentials
        #: The token of the last login ("": the server has auth off; None: none yet).
        #: Every new connection presents it right after its Hello (`hello_frame`).
        self.token: str | None = None
        self._token_gen = 0  # bumped at every login (a waiting call sees a new token)
        self._logging_in_until = -math.inf  # a relogin runs until then (single flight)
        if isinstance(seeds, str):
            seeds = [seeds]
        if not seeds:
            raise InvalidRequest("at least one seed address is needed")
        if cluster_id is not None and (not isinstance(cluster_id, str) or not cluster_id):
            raise InvalidRequest(f"cluster_id ({cluster_id!r}) must be a non-empty str or None")
        #: The cluster's id: as given, or as the first node named it (None until then).
        self.cluster_id = cluster_id
        self._id_given = cluster_id is not None
        #: Default per-call deadline, seconds (retries included).
        self.timeout = _positive(timeout, "timeout")
        #: Longest wait for one answer from one node before trying elsewhere, seconds.
        self.attempt_timeout = _positive(attempt_timeout, "attempt_timeout")
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.topology = Topology(normalize_address(s) for s in seeds)
        self.sessions = SessionPool(self.rng)
        #: What went wrong in the last topology refresh (for give-up messages).
        self.refresh_problems: list[str] = []
        #: address -> clock time until which it is avoided (see module doc).
        self.suspects: dict[str, float] = {}
        self._round_robin = 0
        self._refreshing_until = -math.inf  # a refresh runs until then (single flight)
        # Made eagerly so a sequential writer always uses this one client id
        # (seq starts at 1: release() bumps it, so start the counter at 0).
        self._first_slot = self.sessions.new_slot()
        self._first_slot.next_seq = 0
        self.sessions.release(self._first_slot)

    @property
    def client_id(self) -> int:
        """The first session's client id: the one every write uses when none overlap."""
        return self._first_slot.client_id

    # --- the handshake -------------------------------------------------------------

    def hello_frame(self) -> bytes:
        """The first frame(s) of a new connection (an empty cluster id until one is pinned).

        With a token, an `Authenticate` follows the Hello at once (pipelined:
        the node binds the user before it reads the next request). Its answer
        carries `AUTHENTICATE_REQUEST_ID`, which no request uses, so every
        connection drops it; a refused token shows as UNAUTHENTICATED on the
        first request, and `execute` logs in again.
        """
        frame = hello_frame(self.cluster_id)
        if self.token:
            frame += encode_message(Authenticate(AUTHENTICATE_REQUEST_ID, self.token))
        return frame

    # --- logging in (issue 18) ----------------------------------------------------------

    def login(self, timeout: float | None) -> Plan[None]:
        """Log in with `credentials` on any node (no-op without them); keep the token.

        Raises:
            AuthFailed: wrong user or password, or rate limited.
        """
        creds = self.credentials
        if creds is None:
            return
        op = _Op(lambda: f"login as {creds.user!r}",
                 lambda rid: to_wire(Login(rid, creds.user, creds.password)))
        reply = yield from self.execute(op, timeout, AuthOk)
        assert isinstance(reply, AuthOk)
        self._set_token(reply.token)

    def auth_admin(self, request: Callable[..., WireMessage], describe: str,
                   expect: type[T], timeout: float | None, *, write: bool = True) -> Plan[T]:
        """A user or role request (root only), sent to partition 0's leader.

        Args:
            request: ``(request_id, client_id, seq)`` -> the change (`UserAdd`, ...),
                made exactly once with a session slot held throughout (a retry
                after a lost answer gets the first answer again); with
                ``write=False`` ``(request_id)`` -> a listing (`UserList`, `RoleList`).
            describe: what it does, for error messages ("user add alice").
            expect: its answer's type (AdminOk, UserListOk, RoleListOk).
        """
        if not write:
            op = _Op(lambda: describe, lambda rid: to_wire(request(rid)), partition=0)
            reply = yield from self.execute(op, timeout, expect)  # type: ignore[arg-type]
            assert isinstance(reply, expect)
            return reply
        slot = self.sessions.acquire()
        client_id, seq = slot.client_id, slot.next_seq
        try:
            op = _Op(lambda: f"{describe} (client {client_id} seq {seq})",
                     lambda rid: to_wire(request(rid, client_id, seq)), 0, _LINEARIZABLE, True)
            reply = yield from self.execute(op, timeout, expect)  # type: ignore[arg-type]
        finally:
            self.sessions.release(slot)
        assert isinstance(reply, expect)
        return reply

    def login_frame(self) -> bytes:
        """A Login frame with `credentials`, to pipeline before a request (a watch's reopen).

        Its answer carries `AUTHENTICATE_REQUEST_ID` and is dropped by every connection.
        """
        creds = self.credentials
        assert creds is not None
        return encode_message(Login(AUTHENTICATE_REQUEST_ID, creds.user, creds.password))

    def _set_token(self, token: str) -> None:
        self.token = token
        self._token_gen += 1

    def _relogin(self, target: str, deadline: float) -> Plan[None]:
        """After UNAUTHENTICATED from `target`: bind a user to our connection there.

        Cheapest first, since many calls may be refused at once (a connection
        dialed before the login, a token that expired under load): (1) present
        our token with Authenticate (an HMAC check on the node); (2) if it is
        refused and another call is logging in, wait for its token and present
        that; (3) else log in there ourselves (scrypt on the node; one call at
        a time, so a burst of refusals costs one login, not one each).
        Raises what the node answers a Login (AuthFailed: wrong password); a
        broken connection or the deadline is left to the retry loop.
        """
        creds = self.credentials
        assert creds is not None
        clock = self.clock
        try:
            first = self.token
            if first:
                reply = yield Send(target, lambda rid: to_wire(Authenticate(rid, first)),
                                   deadline)
                if isinstance(reply, AuthOk):
                    return
            seen = self._token_gen
            while self._logging_in_until > clock() and self._token_gen == seen:
                yield Sleep(_REFRESH_POLL)  # another call logs in: its token will do
            newer = self.token
            if self._token_gen != seen and newer:
                reply = yield Send(target, lambda rid: to_wire(Authenticate(rid, newer)),
                                   deadline)
                if isinstance(reply, AuthOk):
                    return
            self._logging_in_until = deadline
            try:
                reply = yield Send(target, lambda rid: to_wire(Login(rid, creds.user,
                                                                     creds.password)),
                                   deadline)
            finally:
                self._logging_in_until = -math.inf
        except (ConnectFailed, ConnectionLost, AttemptExpired):
            return
        if isinstance(reply, AuthOk):
            self._set_token(reply.token)
        elif isinstance(reply, Error):
            raise error_from_frame(reply)

    def accept_hello(self, address: str, msg: object) -> int:
        """Judge a node's answer to our Hello; its node id. Pins the cluster id.

        Raises:
            ConnectFailed: the node is busy or starting.
            WrongCluster: the node belongs to another cluster than the pinned one.
            ProtocolError: not a PrkDB answer.
        """
        node_id, cluster_id = hello_node_id(address, msg)
        if self.cluster_id is None:
            self.cluster_id = cluster_id
        elif cluster_id != self.cluster_id:
            raise WrongCluster(
                f"{address} belongs to cluster {cluster_id!r}, not {self.cluster_id!r} "
                f"(the cluster this client {'was given' if self._id_given else 'met first'})",
                details={"cluster_id": cluster_id, "expected": self.cluster_id},
            )
        return node_id

    # --- the key-value API ---------------------------------------------------------

    def get(
        self, key: bytes, consistency: ReadConsistency, timeout: float | None
    ) -> Plan[GetResult]:
        """Read `key` at `consistency` (see `PrkDbClient.get_entry`)."""
        if type(key) is not bytes or not key:
            key = check_key(key)
        if type(consistency) is not ReadConsistency:
            consistency = ReadConsistency(consistency)
        level = int(consistency)
        if not self.topology.partitions:
            yield from self._partition_count(timeout)
        partition = self.topology.partition_of(key)
        op = _Op(
            partial(_describe_get, key, consistency),
            lambda rid: encode_get_request(rid, key, level, partition),
            partition,
            consistency,
        )
        reply = yield from self.execute(op, timeout, GetOk)
        assert isinstance(reply, GetOk)
        return new_get_result(
            (reply.value, reply.version, reply.mod_revision, reply.applied_index))

    def put(self, key: bytes, value: bytes, timeout: float | None) -> Plan[WriteResult]:
        """Store `value` under `key`, exactly once."""
        if type(key) is not bytes or not key:
            key = check_key(key)
        if type(value) is not bytes:
            value = check_value(value)
        return self._write("put", key, encode_put_request, (key, value), timeout)

    def delete(self, key: bytes, timeout: float | None) -> Plan[WriteResult]:
        """Remove `key`."""
        key = check_key(key)
        return self._write("delete", key, encode_delete_request, (key,), timeout)

    def cas(
        self,
        key: bytes,
        expected_value: bytes | Unset | None,
        expected_version: int | None,
        new_value: bytes | None,
        timeout: float | None,
    ) -> Plan[WriteResult]:
        """Compare-and-set (see `PrkDbClient.cas`)."""
        key = check_key(key)
        wire_value: bytes | None
        if isinstance(expected_value, Unset):
            wire_value = None
        elif expected_value is None:
            if expected_version not in (None, 0):
                raise InvalidRequest(
                    f"cas: expected_value=None (absent) contradicts "
                    f"expected_version={expected_version}"
                )
            wire_value, expected_version = None, 0
        else:
            wire_value = check_value(expected_value, "expected_value")
        if expected_version is not None and (
            not isinstance(expected_version, int) or expected_version < 0
        ):
            raise InvalidRequest(
                f"cas: expected_version ({expected_version!r}) must be an int >= 0"
            )
        if wire_value is None and expected_version is None:
            raise InvalidRequest("cas needs expected_value or expected_version (else use put)")
        stored = None if new_value is None else check_value(new_value, "new_value")
        return self._write(
            "cas", key, _cas_array, (key, wire_value, expected_version, stored), timeout
        )

    def batch(
        self, ops: Iterable[tuple[Any, ...] | BatchOp], timeout: float | None
    ) -> Plan[WriteResult]:
        """Puts and deletes of one partition, atomically (see `PrkDbClient.batch`)."""
        parsed = tuple(parse_batch_op(i, op) for i, op in enumerate(ops))
        if not parsed:
            raise InvalidRequest("batch needs at least one op")
        return self._batch(parsed, timeout)

    def _batch(self, parsed: tuple[BatchOp, ...], timeout: float | None) -> Plan[WriteResult]:
        # A txn without compares on the wire (servers run Batch as one too).
        ops = tuple(TxnOp(TxnOpKind.PUT, op.key, op.value) if op.kind == OpKind.PUT
                    else TxnOp(TxnOpKind.DELETE, op.key) for op in parsed)
        reply = yield from self._txn((), ops, (), timeout, "batch", f"batch of {len(ops)} ops")
        return WriteResult(True, reply.revision, 0, 0,
                           tuple(OpResult(r.version, r.prev_version) for r in reply.results))

    def put_leased(self, key: bytes, value: bytes, lease: object,
                   timeout: float | None) -> Plan[WriteResult]:
        """Store `value` under `key` attached to `lease` (a one-op txn), exactly once."""
        op = TxnOp(TxnOpKind.PUT, check_key(key), check_value(value), check_lease_id(lease))
        reply = yield from self._txn((), (op,), (), timeout, "put", f"put key={op.key[:32]!r}")
        (result,) = reply.results
        return WriteResult(True, reply.revision, result.version, result.prev_version)

    # --- scans -----------------------------------------------------------------------

    def scan_cursor(self, rng: KeyRange, limit: int, keys_only: bool,
                    consistency: ReadConsistency, page_size: int,
                    timeout: float | None) -> Plan[ScanCursor]:
        """A scan of `rng` in progress: its `ScanCursor.next_batch` plans deliver keys in order.

        Raises:
            InvalidRequest: a bad limit or page size.
        """
        limit = check_count(limit, "limit")
        page_size = check_count(page_size, "page_size")
        merge: ScanMerge[KeyValue] = ScanMerge(
            (yield from self.scan_partitions(rng, timeout)), rng, limit, page_size)
        return ScanCursor(self, merge, bool(keys_only), ReadConsistency(consistency), timeout)

    def scan(self, rng: KeyRange, limit: int, keys_only: bool, consistency: ReadConsistency,
             page_size: int, timeout: float | None) -> Plan[list[KeyValue]]:
        """Every key of `rng` (at most `limit`; 0 = all), in order, page by page."""
        cursor = yield from self.scan_cursor(rng, limit, keys_only, consistency, page_size,
                                             timeout)
        items: list[KeyValue] = []
        while batch := (yield from cursor.next_batch()):
            items += batch
        return items

    def scan_page(self, rng: KeyRange | None, limit: int, keys_only: bool,
                  consistency: ReadConsistency, token: object, page_size: int,
                  timeout: float | None) -> Plan[ScanPage]:
        """One page of at most `page_size` keys, and the token of the next (None: the last).

        With a `token`, the scan goes on where the page that made it ended:
        its range, keys_only and limit come from the token (`rng`, if
        given, must be the scan's range).

        Raises:
            InvalidRequest: a damaged token, or one from another range than `rng`.
        """
        if token is not None:
            resume = decode_token(token)
            if rng is not None and not (
                rng.end == resume.range.end and rng.start <= resume.range.start
            ):
                raise InvalidRequest(
                    f"scan_page: the token continues a scan of "
                    f"[{resume.range.start[:32]!r}, {resume.range.end!r:.40}), not of "
                    f"[{rng.start[:32]!r}, {rng.end!r:.40}) (pass the same range, or none)")
            rng, limit, keys_only = resume.range, resume.limit_left, resume.keys_only
        elif rng is None:
            rng = KeyRange(b"", None)
        page_size = check_count(page_size, "page_size")
        if page_size < 1:
            raise InvalidRequest("scan_page: page_size must be >= 1")
        cursor = yield from self.scan_cursor(rng, limit, keys_only, consistency, page_size,
                                             timeout)
        items: list[KeyValue] = []
        while len(items) < page_size:
            batch = yield from cursor.next_batch(page_size - len(items))
            if not batch:
                break
            items += batch
        after = cursor.merge.resume(bool(keys_only))
        return ScanPage(tuple(items), None if after is None else encode_token(after))

    def count(self, rng: KeyRange, consistency: ReadConsistency,
              timeout: float | None) -> Plan[int]:
        """How many keys `rng` holds: every partition counts its part, at once."""
        if rng.empty:
            return 0
        consistency = ReadConsistency(consistency)
        partitions = yield from self.scan_partitions(rng, timeout)
        replies = yield from gather([
            self.scan_request(p, rng.start, rng.end, 0, True, True, consistency, timeout)
            for p in partitions
        ])
        return sum(reply.count for reply in replies)

    def scan_partitions(self, rng: KeyRange, timeout: float | None) -> Plan[list[int]]:
        """The partitions that may hold keys of `rng`: all, or the one its hash tag picks."""
        if not self.topology.partitions:
            yield from self._partition_count(timeout)
        topo = self.topology
        if rng.empty:
            return []
        if topo.key_rule == KEY_RULE_HASHTAG:
            tagged = pinned_key(rng)
            if tagged is not None:
                return [topo.partition_of(tagged)]
        return list(range(topo.partitions))

    def scan_request(self, partition: int, start: bytes, end: bytes | None, limit: int,
                     keys_only: bool, count_only: bool, consistency: ReadConsistency,
                     timeout: float | None) -> Plan[ScanOk]:
        """One page (or count) of one partition, at `consistency`, routed as a get is."""
        op = _Op(
            lambda: (f"scan of partition {partition} from {start[:32]!r} "
                     f"({consistency.name.lower()})"),
            lambda rid: to_wire(Scan(rid, partition, start, end, limit, keys_only, count_only,
                                     consistency)),
            partition,
            consistency,
        )
        reply = yield from self.execute(op, timeout, ScanOk)
        assert isinstance(reply, ScanOk)
        return reply

    # --- transactions ----------------------------------------------------------------

    def txn(self, compares: Iterable[Compare | WireCompare], success: Iterable[TxnOpLike],
            failure: Iterable[TxnOpLike], timeout: float | None) -> Plan[TxnResult]:
        """If every compare holds run `success`, else `failure`; atomically, exactly once.

        Raises:
            InvalidRequest: a malformed compare or op, no key at all, keys in
                more than one partition, or a leased put whose lease lives in
                another partition than its key (all before sending).
        """
        if isinstance(compares, Compare | WireCompare):
            compares = [compares]
        wire_compares = tuple(compare_to_wire(i, c) for i, c in enumerate(compares))
        yes, no = ops_to_wire("success", success), ops_to_wire("failure", failure)
        reply = yield from self._txn(
            wire_compares, yes, no, timeout, "txn",
            f"txn of {len(wire_compares)} compares, {len(yes)} + {len(no)} ops")
        return TxnResult(reply.succeeded, reply.revision, reply.results)

    def _txn(self, compares: tuple[WireCompare, ...], success: tuple[TxnOp, ...],
             failure: tuple[TxnOp, ...], timeout: float | None, what: str,
             describe: str) -> Plan[TxnOk]:
        if not self.topology.partitions:
            yield from self._partition_count(timeout)
        keys = [c.key for c in compares] + [op.key for op in success] + [
            op.key for op in failure]
        partition = self._one_partition(what, keys)
        for op in (*success, *failure):
            if op.lease and lease_partition(op.lease) != partition:
                raise InvalidRequest(
                    f"{what}: the put of {op.key[:32]!r} names lease {op.lease}, which lives "
                    f"in partition {lease_partition(op.lease)}, but the key is in partition "
                    f"{partition}; a lease holds keys of its own partition: grant it with "
                    f"key= one of the keys it will hold (or a key with the same hash tag)")
        reply = yield from self._session_call(
            describe,
            partition,
            lambda rid, client_id, seq: Txn(rid, partition, compares, success, failure,
                                            client_id, seq),
            TxnOk, timeout)
        assert isinstance(reply, TxnOk)
        return reply

    def _one_partition(self, what: str, keys: Sequence[bytes]) -> int:
        """The partition of all `keys` (the topology is loaded).

        Raises:
            InvalidRequest: no keys, or keys of several partitions (named, with the cure).
        """
        if not keys:
            raise InvalidRequest(f"{what} needs at least one key (a compare or an op)")
        topo = self.topology
        by_partition: dict[int, list[bytes]] = {}
        for key in keys:
            by_partition.setdefault(topo.partition_of(key), []).append(key)
        if len(by_partition) == 1:
            return next(iter(by_partition))
        spread = "; ".join(
            f"partition {p}: {', '.join(repr(k[:32]) for k in dict.fromkeys(ks))}"
            for p, ks in sorted(by_partition.items()))
        if topo.key_rule == KEY_RULE_HASHTAG:
            cure = ("give related keys one hash tag, the part between the first '{' and the "
                    "next '}', as in 'user:{42}:name' and 'user:{42}:mail'")
        else:
            cure = (f"this cluster's key rule is {topo.key_rule!r} (a data dir from before hash "
                    "tags): it hashes whole keys, so choose keys of one partition")
        raise InvalidRequest(f"{what} keys span partitions {sorted(by_partition)} ({spread}); "
                             f"an atomic {what} must stay in one partition: {cure}",
                             details={"partitions": sorted(by_partition)})

    # --- leases ----------------------------------------------------------------------

    def grant_lease(self, ttl: float, key: bytes, timeout: float | None) -> Plan[Lease]:
        """A new lease of `ttl` seconds in the partition of `key` (any partition if empty)."""
        ttl_ms = math.ceil(_positive(ttl, "ttl") * 1000)
        if not self.topology.partitions:
            yield from self._partition_count(timeout)
        if isinstance(key, bytes) and not key:
            partition = self.rng.randrange(self.topology.partitions)
        else:
            partition = self.topology.partition_of(check_key(key, "lease key"))
        reply = yield from self._session_call(
            f"lease grant of {ttl}s", partition,
            lambda rid, client_id, seq: LeaseGrant(rid, partition, ttl_ms, client_id, seq),
            LeaseOk, timeout)
        assert isinstance(reply, LeaseOk)
        if lease_partition(reply.lease_id) != partition or reply.ttl_ms <= 0:
            raise ProtocolError(f"lease grant in partition {partition} answered lease "
                                f"{reply.lease_id} of {reply.ttl_ms} ms")
        return Lease(reply.lease_id, reply.ttl_ms / 1000, partition)

    def keep_alive(self, lease_ids: Iterable[object],
                   timeout: float | None) -> Plan[dict[int, float]]:
        """Renew leases at once (one request per partition): id -> seconds left, 0.0 = gone."""
        ids = list(dict.fromkeys(check_lease_id(i) for i in lease_ids))
        groups: dict[int, list[int]] = {}
        for lease_id in ids:
            partition = yield from self._lease_partition(lease_id, timeout)
            groups.setdefault(partition, []).append(lease_id)
        chunks = [(p, tuple(group[i : i + KEEPALIVE_IDS_MAX]))
                  for p, group in sorted(groups.items())
                  for i in range(0, len(group), KEEPALIVE_IDS_MAX)]
        replies = yield from gather(
            [self._keep_alive_request(p, chunk, timeout) for p, chunk in chunks])
        remaining: dict[int, float] = {}
        for (_, chunk), reply in zip(chunks, replies, strict=True):
            if len(reply.remaining_ms) != len(chunk):
                raise ProtocolError(f"keep-alive of {len(chunk)} leases answered "
                                    f"{len(reply.remaining_ms)} times")
            for lease_id, ms in zip(chunk, reply.remaining_ms, strict=True):
                remaining[lease_id] = ms / 1000
        return {lease_id: remaining[lease_id] for lease_id in ids}

    def keep_alive_once(self, lease_id: object, timeout: float | None) -> Plan[float]:
        """Renew one lease; the seconds it has left.

        Raises:
            LeaseNotFound: it expired or was revoked.
        """
        lease_id = check_lease_id(lease_id)
        left = (yield from self.keep_alive([lease_id], timeout))[lease_id]
        if left <= 0:
            raise LeaseNotFound(f"lease {lease_id} expired or was revoked",
                                details={"lease_id": lease_id})
        return left

    def revoke_lease(self, lease_id: object, timeout: float | None) -> Plan[int]:
        """Delete a lease and its keys (in one entry), exactly once; how many keys went.

        Raises:
            LeaseNotFound: no such lease (expired, revoked, never granted).
        """
        lease_id = check_lease_id(lease_id)
        partition = yield from self._lease_partition(lease_id, timeout)
        reply = yield from self._session_call(
            f"lease revoke of {lease_id}", partition,
            lambda rid, client_id, seq: LeaseRevoke(rid, lease_id, client_id, seq),
            WriteOk, timeout)
        assert isinstance(reply, WriteOk)
        return reply.version

    def lease_ttl(self, lease_id: object, keys: bool, timeout: float | None
                  ) -> Plan[LeaseStatus]:
        """A lease as its leader sees it now (with its keys if `keys`).

        Raises:
            LeaseNotFound: no such lease.
        """
        lease_id = check_lease_id(lease_id)
        partition = yield from self._lease_partition(lease_id, timeout)
        op = _Op(lambda: f"lease time-to-live of {lease_id}",
                 lambda rid: to_wire(LeaseTimeToLive(rid, lease_id, bool(keys))),
                 partition)
        reply = yield from self.execute(op, timeout, LeaseOk)
        assert isinstance(reply, LeaseOk)
        return LeaseStatus(lease_id, reply.ttl_ms / 1000, reply.remaining_ms / 1000,
                           tuple(reply.keys))

    def leases(self, timeout: float | None) -> Plan[list[LeaseStatus]]:
        """Every lease of every partition, by id (asked of all leaders at once)."""
        count = yield from self._partition_count(timeout)
        replies = yield from gather(
            [self._lease_list_request(p, timeout) for p in range(count)])
        return sorted((LeaseStatus(info.lease_id, info.ttl_ms / 1000, info.remaining_ms / 1000)
                       for reply in replies for info in reply.leases), key=lambda s: s.id)

    def _lease_partition(self, lease_id: int, timeout: float | None) -> Plan[int]:
        count = yield from self._partition_count(timeout)
        partition = lease_partition(lease_id)
        if lease_id == 0 or partition >= count:
            raise LeaseNotFound(f"lease {lease_id} cannot exist: it names partition "
                                f"{partition} of a cluster of {count}",
                                details={"lease_id": lease_id})
        return partition

    def _keep_alive_request(self, partition: int, lease_ids: tuple[int, ...],
                            timeout: float | None) -> Plan[LeaseKeepAliveOk]:
        op = _Op(lambda: f"keep-alive of {len(lease_ids)} leases in partition {partition}",
                 lambda rid: to_wire(LeaseKeepAlive(rid, partition, lease_ids)),
                 partition)
        reply = yield from self.execute(op, timeout, LeaseKeepAliveOk)
        assert isinstance(reply, LeaseKeepAliveOk)
        return reply

    def _lease_list_request(self, partition: int, timeout: float | None
                            ) -> Plan[LeaseListOk]:
        op = _Op(lambda: f"lease list of partition {partition}",
                 lambda rid: to_wire(LeaseList(rid, partition)), partition)
        reply = yield from self.execute(op, timeout, LeaseListOk)
        assert isinstance(reply, LeaseListOk)
        return reply

    def _session_call(self, what: str, partition: int,
                      build: Callable[[int, int, int], WireMessage],
                      expect: type[WireMessage], timeout: float | None) -> Plan[WireMessage]:
        """A write other than put/delete/cas: ``build(request_id, client_id, seq)``
        with a session slot held throughout (as `_write`, routed by partition)."""
        slot = self.sessions.acquire()
        client_id = slot.client_id
        seq = slot.next_seq
        try:
            op = _Op(
                lambda: f"{what} (partition {partition}, client {client_id} seq {seq})",
                lambda rid: to_wire(build(rid, client_id, seq)),
                partition,
                _LINEARIZABLE,
                True,
            )
            reply = yield from self.execute(op, timeout, expect)
        finally:
            self.sessions.release(slot)
        return reply  # type: ignore[no-any-return]

    # --- the admin API -------------------------------------------------------------

    def status(self, node_id: int | None, timeout: float | None) -> Plan[StatusOk]:
        """One node's view (any node if `node_id` is None); refreshes the topology."""
        address = None
        if node_id is not None:
            address = self.topology.address_of(node_id)
            if address is None:
                yield from self.refresh_topology(timeout)
                address = self.topology.address_of(node_id)
            if address is None:
                raise InvalidRequest(f"status: node {node_id} is not a member")
        op = _Op(
            lambda: "status" if node_id is None else f"status of node {node_id}",
            _status_array,
            address=address,
        )
        reply = yield from self.execute(op, timeout, StatusOk)
        assert isinstance(reply, StatusOk)
        self.topology.apply_status(reply)
        return reply

    def refresh_topology(self, timeout: float | None) -> Plan[None]:
        """Ask any node for the members and leaders now.

        Raises:
            Timeout: no node answered before the deadline.
            WrongCluster: a node belongs to another cluster.
        """
        budget = self._budget(timeout)
        if (yield from self._refresh((), None, self.clock() + budget)):
            if self.token is None and self.credentials is not None:
                yield from self.login(timeout)  # at connect: later connections present the token
            return
        why = "; ".join(self.refresh_problems[-_TRIED_SHOWN:]) or "no answer"
        raise Timeout(
            f"no node answered a status request within {budget}s "
            f"(tried {', '.join(self.topology.candidate_addresses())}: {why})"
        )

    def transfer_leader(
        self, partition: int, to_node: int, timeout: float | None
    ) -> Plan[AdminOk]:
        """Ask `partition`'s leader to hand leadership to `to_node` (0 = its pick)."""
        partition = yield from self._check_partition(partition, timeout)
        op = _Op(
            lambda: f"transfer leader of partition {partition} to node {to_node or 'any'}",
            lambda rid: to_wire(TransferLeader(rid, partition, to_node)),
            partition=partition,
        )
        reply = yield from self.execute(op, timeout, AdminOk)
        assert isinstance(reply, AdminOk)
        return reply

    def snapshot(
        self, partition: int | None, node_id: int | None, timeout: float | None
    ) -> Plan[AdminOk]:
        """Ask a node to snapshot `partition` now (see `PrkDbClient.snapshot`)."""
        if partition is not None:
            partition = yield from self._check_partition(partition, timeout)
        address = None
        if node_id is None and partition is None:
            if not self.topology.nodes:
                yield from self.refresh_topology(timeout)
            node_id = min(self.topology.nodes)
        if node_id is not None:
            address = self.topology.address_of(node_id)
            if address is None:
                raise InvalidRequest(f"snapshot: node {node_id} is not a member")
        op = _Op(
            lambda: f"snapshot of partition {'all' if partition is None else partition}",
            lambda rid: to_wire(Snapshot(rid, partition)),
            partition=partition,
            address=address,
        )
        reply = yield from self.execute(op, timeout, AdminOk)
        assert isinstance(reply, AdminOk)
        return reply

    def backup_begin(self, partition: int, timeout: float | None) -> Plan[BackupBeginOk]:
        """Have `partition`'s leader pick a snapshot covering every acknowledged write.

        The wait for the snapshot is not cut short per attempt: one attempt may
        take the whole `timeout`.
        """
        partition = yield from self._check_partition(partition, timeout)
        op = _Op(
            lambda: f"backup snapshot of partition {partition}",
            lambda rid: to_wire(BackupBegin(rid, partition)),
            partition=partition,
            attempt_timeout=self._budget(timeout),
        )
        reply = yield from self.execute(op, timeout, BackupBeginOk)
        assert isinstance(reply, BackupBeginOk)
        return reply

    def backup_read(
        self, begin: BackupBeginOk, offset: int, length: int, timeout: float | None
    ) -> Plan[BackupChunk]:
        """Bytes of the snapshot file `begin` named, from the node that holds it.

        Raises:
            InvalidRequest: with ``details["backup_gone"]`` when that node no
                longer has the file (start over with `backup_begin`).
        """
        if not 1 <= length <= BACKUP_CHUNK_MAX:
            raise InvalidRequest(f"backup_read: length {length} is not in 1..{BACKUP_CHUNK_MAX}")
        address = self.topology.address_of(begin.node_id)
        if address is None:
            yield from self.refresh_topology(timeout)
            address = self.topology.address_of(begin.node_id)
        if address is None:
            raise InvalidRequest(f"backup_read: node {begin.node_id} is not a member")
        op = _Op(
            lambda: f"backup read of partition {begin.partition} at {offset} "
                    f"from node {begin.node_id}",
            lambda rid: to_wire(BackupRead(rid, begin.partition, begin.index, begin.term,
                                           offset, length)),
            address=address,
        )
        reply = yield from self.execute(op, timeout, BackupChunk)
        assert isinstance(reply, BackupChunk)
        return reply

    def backup_partition(
        self,
        partition: int,
        out: IO[bytes],
        attempts: int,
        chunk_size: int,
        timeout: float | None,
        begin_timeout: float | None,
    ) -> Plan[BackupBeginOk]:
        """Copy a snapshot of `partition` into `out` (see `PrkDbClient.backup_partition`)."""
        start = out.tell()
        reason = ""
        for _ in range(attempts):
            out.seek(start)
            out.truncate()
            begin = yield from self.backup_begin(partition, begin_timeout or timeout)
            sha = hashlib.sha256()
            offset = 0
            try:
                while offset < begin.size:
                    want = min(chunk_size, begin.size - offset)
                    chunk = yield from self.backup_read(begin, offset, want, timeout)
                    if chunk.size != begin.size or chunk.offset != offset or not chunk.data:
                        raise BackupFailed(
                            f"node {begin.node_id} answered {len(chunk.data)} bytes at "
                            f"{chunk.offset} of {chunk.size} for a read of {want} at {offset} "
                            f"of {begin.size}")
                    out.write(chunk.data)
                    sha.update(chunk.data)
                    offset += len(chunk.data)
            except InvalidRequest as exc:
                if not exc.details.get("backup_gone"):
                    raise
                reason = exc.message
                continue
            except BackupFailed as exc:
                reason = exc.message
                continue
            if sha.digest() != begin.sha256:
                reason = (f"sha256 of the {begin.size} bytes read from node {begin.node_id} "
                          f"does not match the one it announced")
                continue
            return begin
        out.seek(start)
        out.truncate()
        raise BackupFailed(f"backup of partition {partition} failed {attempts} times; "
                           f"last: {reason}")

    # --- internals: routing --------------------------------------------------------

    def _budget(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        return _positive(timeout, "timeout")

    def _partition_count(self, timeout: float | None) -> Plan[int]:
        if not self.topology.partitions:
            yield from self.refresh_topology(timeout)
        return self.topology.partitions

    def _check_partition(self, partition: int, timeout: float | None) -> Plan[int]:
        count = yield from self._partition_count(timeout)
        if not isinstance(partition, int) or not 0 <= partition < count:
            raise InvalidRequest(f"partition {partition!r} is not in 0..{count - 1}")
        return partition

    def _write(
        self,
        what: str,
        key: bytes,
        encode: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
        *,
        describe_key: bool = True,
    ) -> Plan[WriteResult]:
        """Run a write with a session slot held throughout (module doc).

        Args:
            what: the operation's name in messages ("put").
            key: routes the write (its partition); named in messages if `describe_key`.
            encode: ``encode(request_id, *args, client_id, seq)`` -> the
                request's frame or wire array.
        """
        if not self.topology.partitions:
            yield from self._partition_count(timeout)
        partition = self.topology.partition_of(key)
        slot = self.sessions.acquire()
        # Every attempt is the same request: the slot's ids do not change while held.
        client_id = slot.client_id
        seq = slot.next_seq
        try:
            op = _Op(
                partial(_describe_write, what, key if describe_key else None, partition,
                        client_id, seq),
                lambda rid: encode(rid, *args, client_id, seq),
                partition,
                _LINEARIZABLE,
                True,
            )
            reply = yield from self.execute(op, timeout, WriteOk)
        finally:
            self.sessions.release(slot)
        assert isinstance(reply, WriteOk)
        return write_result(reply)

    def suspected(self, address: str | None, now: float) -> bool:
        """Whether `address` let an attempt expire less than `SUSPECT_FOR` ago."""
        until = self.suspects.get(address) if address is not None else None
        if until is None:
            return False
        if now < until:
            return True
        self.suspects.pop(address, None)  # type: ignore[arg-type]
        return False

    def _refresh(self, avoid: Iterable[str], version: int | None, end: float) -> Plan[bool]:
        """Load the topology from some node, preferring ones not in `avoid` nor suspected.

        Single-flight: if another call is refreshing, wait for it to finish
        (polling); if the topology changed since the caller looked
        (`version`), return at once. Returns False if nobody answered by `end`.

        Raises:
            WrongCluster / ProtocolError: fatal answers.
        """
        clock = self.clock
        while version is not None and clock() < min(self._refreshing_until, end):
            if self.topology.version != version:
                return True
            yield Sleep(_REFRESH_POLL)
        if version is not None and self.topology.version != version:
            return True
        self._round_robin += 1
        now = clock()
        avoided = set(avoid)
        candidates = self.topology.candidate_addresses(self._round_robin)
        ordered = sorted(candidates, key=lambda a: (a in avoided, self.suspected(a, now)))
        problems: list[str] = []
        self._refreshing_until = end
        try:
            for address in ordered:
                now = clock()
                if now >= end:
                    break
                try:
                    reply = yield Send(address, _status_array, min(end, now + _STATUS_TRY_TIMEOUT))
                except (ConnectFailed, ConnectionLost) as exc:
                    problems.append(str(exc))
                    continue
                except AttemptExpired:
                    problems.append(f"{address}: no status answer in time")
                    continue
                self.suspects.pop(address, None)
                if isinstance(reply, StatusOk):
                    if self.cluster_id is None or reply.cluster_id == self.cluster_id:
                        self.cluster_id = reply.cluster_id
                        self.topology.apply_status(reply)
                        self.refresh_problems = problems
                        return True
                    problems.append(f"{address}: cluster {reply.cluster_id!r}")
                elif isinstance(reply, Error):
                    refusal = error_from_frame(reply)
                    if refusal.code in (ErrorCode.WRONG_CLUSTER, ErrorCode.BAD_VERSION):
                        raise refusal
                    problems.append(f"{address}: {refusal.message}")
                else:
                    raise ProtocolError(f"{address}: answered status with {type(reply).__name__}")
        finally:
            self._refreshing_until = -math.inf
        self.refresh_problems = problems
        return False

    def _route(self, op: _Op, failed: set[str], now: float) -> str | None:
        """The address to try next from the cached topology; None if no leader is known."""
        topo = self.topology
        if op.address is not None:
            return op.address
        suspects = self.suspects
        if op.partition is None:  # Status: any node, avoiding those that just failed
            self._round_robin += 1
            candidates = topo.candidate_addresses(self._round_robin)
            fresh = [a for a in candidates if a not in failed and not self.suspected(a, now)]
            return (fresh or candidates)[0]
        consistency = op.consistency
        if consistency is _STALE and topo.nodes:  # any node; no leader needed
            self._round_robin += 1
            pool: Sequence[str] = topo.sorted_addresses()
            if failed or suspects:
                pool = [a for a in pool if a not in failed and not self.suspected(a, now)] or pool
            return pool[self._round_robin % len(pool)]
        leader = topo.leaders.get(op.partition, 0)
        leader_addr = topo.nodes.get(leader) if leader else None
        if suspects and self.suspected(leader_addr, now):
            leader_addr = None
        if consistency == ReadConsistency.FOLLOWER and topo.nodes:
            self._round_robin += 1
            # Spread over followers; the leader (if known) is the fallback.
            others = [a for a in topo.addresses_by_id() if a != leader_addr]
            pool = [a for a in others if a not in failed]
            if suspects:
                pool = [a for a in pool if not self.suspected(a, now)]
            if not pool:
                pool = [leader_addr] if leader_addr else others
            return pool[self._round_robin % len(pool)]
        return leader_addr

    def _leader_after_refresh(self, op: _Op, failed: set[str], end: float) -> Plan[str | None]:
        """Refresh the topology (no usable leader of `op.partition` is known), look again."""
        assert op.partition is not None
        topo = self.topology
        yield from self._refresh(failed, topo.version, end)
        address = topo.address_of(topo.leader_of(op.partition))
        if self.suspected(address, self.clock()):
            self.refresh_problems = [
                *self.refresh_problems,
                f"the leader named, {address}, did not answer in time",
            ]
            return None
        return address

    # --- internals: the retry loop -------------------------------------------------

    def execute(self, op: _Op, timeout: float | None, expect: type[WireMessage]) -> Plan[Any]:
        """Run `op` until a definite answer or the deadline (module docstring)."""
        clock = self.clock
        budget = self.timeout if timeout is None else _positive(timeout, "timeout")
        start = clock()
        deadline = start + budget
        span = op.attempt_timeout
        if not span:  # the client's, at most half the budget (min() costs a call)
            span = self.attempt_timeout
            if span > budget / 2:
                span = budget / 2
        delays: Generator[float, None, None] | None = None  # made on the first retry
        tried: list[str] = []
        failed: set[str] = set()  # addresses that failed during this call
        ambiguous = False
        hops = 0
        last_error: BaseException | None = None
        now = start
        relogged = False  # logged in again once after UNAUTHENTICATED (issue 18)
        while now < deadline:
            send: Send | None = None  # the attempt (and its state), once there is a target
            reply: Any = None
            expired = False  # the attempt's time ran out
            attempt_end = now + span
            if attempt_end > deadline:
                attempt_end = deadline
            target = self._route(op, failed, now)
            try:
                if target is None:
                    target = yield from self._leader_after_refresh(op, failed, attempt_end)
                    if target is None:
                        why = "; ".join(self.refresh_problems[-3:]) or "nobody knows one"
                        tried.append(f"no leader known ({why})")
                        expired = clock() >= deadline
                if target is not None:
                    send = Send(target, op.build, attempt_end)
                    reply = yield send
            except ConnectFailed as exc:
                tried.append(str(exc))
                last_error = exc
            except ConnectionLost as exc:
                tried.append(str(exc))
                last_error = exc
                ambiguous |= op.write and send is not None and send.sent
            except AttemptExpired:
                expired = True
            if reply.__class__ is expect:  # the common case first (None never is)
                if self.suspects:
                    self.suspects.pop(target, None)  # type: ignore[arg-type]  # set with reply
                return reply
            if target is not None and reply is None:  # failed, or silent: suspect the node
                failed.add(target)
                self.topology.forget_node_leadership(target)
                if expired:
                    self.suspects[target] = clock() + SUSPECT_FOR
            if expired:
                ambiguous |= op.write and send is not None and send.sent
                if attempt_end >= deadline:
                    tried.append(f"{target or 'routing'}: no answer before the deadline")
                    break
                tried.append(f"{target or 'routing'}: no answer in {round(span, 3)}s")
            if reply is not None:
                assert target is not None
                self.suspects.pop(target, None)
                if not isinstance(reply, Error):
                    raise ProtocolError(f"{target}: answered {op.describe()} with "
                                        f"{type(reply).__name__}")
                err = error_from_frame(reply)
                last_error = err
                tried.append(f"{target}: {err.message or ErrorCode(err.code).name.lower()}")
                if isinstance(err, NotLeader):
                    if self._follow_hint(op, err, target) and hops < _MAX_HINT_HOPS:
                        hops += 1
                        now = clock()
                        continue  # a new leader to try: no pause
                    failed.add(target)
                elif err.code == ErrorCode.OUTCOME_UNKNOWN and op.write:
                    ambiguous = True  # same seq again is safe: the server de-duplicates
                elif (err.code == ErrorCode.UNAUTHENTICATED and not relogged
                      and self.credentials is not None):
                    # Nothing was done: log in on that connection once, and retry at once.
                    relogged = True
                    yield from self._relogin(target, attempt_end)
                    now = clock()
                    continue
                elif err.code in (
                    ErrorCode.UNAVAILABLE,
                    ErrorCode.TIMEOUT,
                    ErrorCode.OUTCOME_UNKNOWN,
                ):
                    if op.consistency != ReadConsistency.LINEARIZABLE:
                        failed.add(target)
                else:
                    raise err
            hops = 0
            if delays is None:
                delays = _backoff_delays(self.rng)
            pause = min(next(delays), deadline - clock())
            if pause > 0:
                yield Sleep(pause)
            now = clock()
        raise self._give_up(op, budget, tried, ambiguous) from last_error

    def _follow_hint(self, op: _Op, exc: NotLeader, target: str) -> bool:
        """Apply a NOT_LEADER hint; True if it names a different node to try now."""
        if op.partition is None or op.consistency != ReadConsistency.LINEARIZABLE:
            return False
        if exc.leader_id:
            self.topology.set_leader(op.partition, exc.leader_id, exc.leader_address)
        else:
            self.topology.forget_leader(op.partition)
        new = self.topology.address_of(self.topology.leader_of(op.partition))
        if new is None or self.suspected(new, self.clock()):
            return False
        return new != target

    def _give_up(self, op: _Op, budget: float, tried: list[str], ambiguous: bool) -> PrkdbError:
        # Collapse runs of the same failure: "x (3 times)".
        runs: list[list[Any]] = []
        for entry in tried:
            if runs and runs[-1][0] == entry:
                runs[-1][1] += 1
            else:
                runs.append([entry, 1])
        tried = [e if n == 1 else f"{e} ({n} times)" for e, n in runs]
        shown = tried[-_TRIED_SHOWN:]
        more = (
            f"{len(tried) - len(shown)} earlier attempts, then " if len(tried) > len(shown) else ""
        )
        history = f"{more}{'; '.join(shown) or 'nothing'}"
        what = op.describe()
        if ambiguous:
            return OutcomeUnknown(
                f"{what}: deadline of {budget}s passed; the write may or may not have been "
                f"applied (tried: {history})"
            )
        where = f"partition {op.partition}" if op.partition is not None else "the cluster"
        return Timeout(f"{what}: {where} did not answer within {budget}s (tried: {history})")


def gather(plans: list[Plan[T]]) -> Plan[list[T]]:
    """Drive `plans` at once (a `Gather`); one plan is simply run (no action, no task)."""
    if len(plans) == 1:
        return [(yield from plans[0])]
    results: list[T] = yield Gather(plans)
    return results


@final
class ScanCursor:
    """A scan in progress: a `ScanMerge` and the requests that feed it.

    Made by `ClientCore.scan_cursor`. Each `next_batch` plan returns the
    next keys in order (fetching the pages of every partition that needs
    one, at once), and an empty list once the scan is finished. A front end's
    ``scan_iter`` drives one plan per batch and yields its keys, so a caller
    that stops early reads no more pages.
    """

    __slots__ = ("consistency", "core", "keys_only", "merge", "timeout")

    def __init__(self, core: ClientCore, merge: ScanMerge[KeyValue], keys_only: bool,
                 consistency: ReadConsistency, timeout: float | None) -> None:
        self.core = core
        self.merge = merge
        self.keys_only = keys_only
        self.consistency = consistency
        self.timeout = timeout  # per page request, retries included

    def next_batch(self, at_most: int | None = None) -> Plan[list[KeyValue]]:
        """The next keys in order (at most `at_most`); empty: the scan is finished."""
        merge = self.merge
        while True:
            items = merge.pop_ready(at_most)
            if items:
                return items
            requests = merge.requests(at_most)
            if not requests:
                return items
            core = self.core
            replies = yield from gather([
                core.scan_request(r.partition, r.start, r.end, r.limit, self.keys_only, False,
                                  self.consistency, self.timeout)
                for r in requests
            ])
            for request, reply in zip(requests, replies, strict=True):
                merge.add_page(request.partition, reply.kvs, reply.more)


async def drive_async(plan: Plan[T], send: Callable[[Send], Awaitable[Any]],
                      sleep: Callable[[float], Awaitable[Any]],
                      gather: Callable[[list[Plan[Any]]], Awaitable[list[Any]]]) -> T:
    """Run `plan` to its result with an async `send`, `sleep` and `gather` (trio and asyncio).

    Any exception of `send` or `gather` is thrown into the plan, which judges
    it (retry, or raise it back out); a cancellation passes straight through,
    and the plan is closed so that its session slot is given back.
    """
    try:
        action = next(plan)
        while True:
            if action.__class__ is Send:
                try:
                    reply = await send(action)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(reply)
            elif action.__class__ is Sleep:
                await sleep(action.seconds)
                action = plan.send(None)
            else:
                try:
                    results = await gather(action.plans)  # type: ignore[union-attr]
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(results)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        plan.close()


def drive_blocking(plan: Plan[T], send: Callable[[Send], Any],
                   sleep: Callable[[float], None]) -> T:
    """Run `plan` to its result with blocking `send` and `sleep` (the SyncClient's loop).

    A `Gather` runs its plans one after the other (this thread does one thing at a time).
    """
    try:
        action = next(plan)
        while True:
            if action.__class__ is Send:
                try:
                    reply = send(action)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(reply)
            elif action.__class__ is Sleep:
                sleep(action.seconds)
                action = plan.send(None)
            else:
                plans: list[Plan[Any]] = action.plans  # type: ignore[union-attr]
                try:
                    results = [drive_blocking(sub, send, sleep) for sub in plans]
                except Exception as exc:
                    for sub in plans:
                        sub.close()
                    action = plan.throw(exc)
                else:
                    action = plan.send(results)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        plan.close()

