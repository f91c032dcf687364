"""Authentication and authorization on the client port (issue 18).

Theory of operation
-------------------
The rules live in partition 0's replicated `AuthStore` (prkdb/state/auth.py);
this module is the node's side: who is on a connection, whether a request
may run, tokens, logins, the admin requests that change users and roles,
and the creation of the root user at first start.

* **Identity.** Each client connection has a `ConnectionAuth`: nobody until
  a `Login` (a password, checked with scrypt in a worker thread), an
  `Authenticate` (a token) or, with ``[tls] client_cert_auth``, the verified
  client certificate's common name. Both are served in the order they
  arrive on the connection (the reader awaits a Login), so requests
  pipelined after them run as their user. With ``[auth] enabled = false``
  nothing is checked and Login answers an empty token.
* **Tokens** are ``v1.<payload>.<signature>``: the payload is base64url JSON
  ``{"c": cluster id, "u": user, "r": the user's revision, "e": expiry in
  Unix ms}``, the signature base64url HMAC-SHA256 over the payload text with
  the cluster's secret (32 random bytes replicated in the AuthStore, so
  every node of the cluster checks every token). A token is void once it
  expires, once the user is deleted or its password changes (the revision
  moves), or on another cluster; each gets UNAUTHENTICATED saying which.
* **Every request** is checked against the store *as applied on this node
  now*, so a role change takes effect on a node as soon as it applies
  partition 0's entry: Get/Scan/Watch need READ on the whole key or range
  (a wider range is refused, not filtered), writes need READWRITE on every
  key (a lease revoke: every key attached; a time-to-live with keys: READ on
  them), admin requests need the root role. Status, Hello, Login and
  Authenticate need nobody. A member's node certificate (CN ``node-<id>``)
  may send RebuildFence for its own id, and anybody may while the cluster
  has no root user yet (a rebuilding node must fence itself; `may_fence`).
  Open watches are checked again whenever the store changes (`run` polls
  its revision): one whose range is no longer readable ends with the error.
* **Failed logins** are counted per source address over a sliding minute
  (`LoginLimiter`); beyond ``failed_logins_per_minute`` a login is refused
  at once, without checking the password, with AUTH_FAILED and
  ``retry_after_ms``. Refusals are logged once per address (or user) per
  minute (prkdb.security.tls.LogLimiter, with the count of lines held back).
* **Root at first start** (`AuthService.run`): while ``[auth] enabled``,
  the leader of partition 0 proposes the token secret if there is none and
  the user ``root`` (role root) with the first line of
  ``root_password_file`` if there is no root user.

Wall-clock time appears in one place, token expiry: tokens cross nodes, so
they carry Unix time, and nodes' clocks must agree within a small part of
``token_ttl_s`` (NTP). Everything else uses trio's clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from prkdb.config import NodeConfig
from prkdb.errors import (
    AuthFailed,
    InvalidRequest,
    NotLeader,
    PermissionDenied,
    PrkdbError,
    Unauthenticated,
    Unavailable,
)
from prkdb.logging import NodeLogger
from prkdb.security.tls import LogLimiter
from prkdb.server.pending import Callback, Waiter
from prkdb.state import ResultCode, WriteResult, encode_command
from prkdb.state.auth import (
    ROOT,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    SECRET_SIZE,
    AuthCommand,
    AuthRoleAdd,
    AuthRoleDelete,
    AuthRoleGrant,
    AuthRoleRevoke,
    AuthSetSecret,
    AuthStore,
    AuthUserAdd,
    AuthUserDelete,
    AuthUserGrant,
    AuthUserPasswd,
    AuthUserRevoke,
    PasswordHash,
    check_name,
)
from prkdb.wire.messages import (
    AdminOk,
    Authenticate,
    AuthOk,
    Login,
    PermInfo,
    RoleAdd,
    RoleDelete,
    RoleGrant,
    RoleInfo,
    RoleList,
    RoleListOk,
    RoleRevoke,
    UserAdd,
    UserDelete,
    UserGrant,
    UserInfo,
    UserList,
    UserListOk,
    UserPasswd,
    UserRevoke,
    WireMessage,
)

__all__ = [
    "AuthService",
    "ConnectionAuth",
    "LoginLimiter",
    "TokenError",
    "root_password",
    "sign_token",
    "unix_ms",
    "verify_token",
]

TOKEN_VERSION: Final = "v1"
BOOTSTRAP_POLL_S: Final = 0.5
# Logins checked at once per node (scrypt: ~50 ms of CPU and 16 MiB each).
LOGIN_THREADS: Final = 2
_NO_USER_SALT: Final = b"prkdb-no-such-user"


def unix_ms() -> int:
    """Wall-clock Unix time in ms: token expiry only (module doc)."""
    return time.time_ns() // 1_000_000  # noqa: TID251 - tokens cross nodes: wall clock


class TokenError(Exception):
    """Why a token is not accepted (the message goes to the client)."""


class AuthBehind(TokenError):
    """This node has not applied the auth state a token was issued with (yet).

    A node that restarted, or was cut off, may lag partition 0: the token's
    user, password change or the cluster's secret are not here yet. Not the
    client's fault: answered UNAVAILABLE (retry, here later or elsewhere),
    never UNAUTHENTICATED (which would make the client log in again, at a
    node that does not know the user either).
    """


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(secret: bytes, cluster_id: str, user: str, revision: int, expires_ms: int) -> str:
    """A token for `user` at its `revision`, valid until `expires_ms` (module doc)."""
    payload = _b64(json.dumps({"c": cluster_id, "u": user, "r": revision, "e": expires_ms},
                              separators=(",", ":"), sort_keys=True).encode())
    sig = hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()
    return f"{TOKEN_VERSION}.{payload}.{_b64(sig)}"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user: str
    revision: int
    expires_ms: int


def verify_token(token: str, *, secret: bytes, cluster_id: str, store: AuthStore,
                 now_ms: int) -> TokenClaims:
    """Check `token` against this cluster's secret and users; its claims.

    Raises:
        TokenError: malformed, another cluster's, badly signed, of a deleted
            user, older than the user's password, or expired (the message says).
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        raise TokenError("malformed token (expected v1.<payload>.<signature>)")
    try:
        claims = json.loads(_unb64(parts[1]))
        sig = _unb64(parts[2])
        cluster, user, revision, expires = claims["c"], claims["u"], claims["r"], claims["e"]
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed token payload") from None
    if not (isinstance(cluster, str) and isinstance(user, str) and type(revision) is int
            and type(expires) is int):
        raise TokenError("malformed token payload")
    if cluster != cluster_id:
        raise TokenError(f"token was issued by cluster {cluster!r}, this is {cluster_id!r}")
    if not secret:
        raise AuthBehind("this node has not applied the cluster's token secret yet")
    want = hmac.new(secret, parts[1].encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, want):
        raise TokenError("token signature is not valid (forged, or signed with another secret)")
    if store.revision < revision:  # the entry that made the token's user is not applied here
        raise AuthBehind(f"this node's auth state is at revision {store.revision}, before the "
                         f"token's ({revision}): it is catching up")
    u = store.user(user)
    if u is None:
        raise TokenError(f"token of user {user!r}, which was deleted")
    if u.revision != revision:
        raise TokenError(f"token of user {user!r} was issued before its password changed")
    if expires <= now_ms:
        raise TokenError(f"token of user {user!r} expired {now_ms - expires} ms ago")
    return TokenClaims(user, revision, expires)


class LoginLimiter:
    """Failed logins per source address over the last minute (module doc).

    At most `max_addresses` addresses are tracked (the oldest forgotten), so
    a flood from many addresses costs bounded memory.
    """

    WINDOW_S: Final = 60.0

    def __init__(self, per_minute: int, max_addresses: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after_ms(self, address: str, now: float) -> int | None:
        """None if `address` may try a login now, else how long until it may."""
        times = self._recent(address, now)
        if len(times) < self.per_minute:
            return None
        return max(1, int((times[0] + self.WINDOW_S - now) * 1000))

    def failed(self, address: str, now: float) -> None:
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def _recent(self, address: str, now: float) -> list[float]:
        times = self._failures.get(address)
        if not times:
            return []
        cut = now - self.WINDOW_S
        while times and times[0] <= cut:
            times.pop(0)
        return times


class ConnectionAuth:
    """Who is on one client connection (module doc)."""

    __slots__ = ("address", "cert_name", "expires_ms", "pending_token", "revision", "user")

    def __init__(self, address: str, cert_name: str | None = None) -> None:
        self.address = address
        #: The verified client certificate's CN (None: no certificate).
        self.cert_name = cert_name
        #: The bound user (None: nobody yet).
        self.user: str | None = None
        #: The user's revision when bound by a token or login (0: by certificate).
        self.revision = 0
        #: When the binding ends (0: never, for a certificate).
        self.expires_ms = 0
        #: A token this node could not check yet (`AuthBehind`): checked again per request.
        self.pending_token = ""

    def bind(self, user: str, revision: int, expires_ms: int) -> None:
        self.user, self.revision, self.expires_ms = user, revision, expires_ms


class AuthPartition(Protocol):
    """What the service needs of partition 0 (a `PartitionDriver`)."""

    partition: int

    @property
    def is_leader(self) -> bool: ...
    def auth_store(self) -> AuthStore: ...
    def auth_caught_up(self) -> bool: ...
    def not_leader_error(self) -> NotLeader: ...
    def submit_write(self, data: bytes, deadline: float, callback: Callback) -> None: ...


class AuthNode(Protocol):
    cfg: NodeConfig
    log: NodeLogger

    @property
    def drivers(self) -> Sequence[Any]: ...


def _node_id_of(cert_name: str | None) -> int | None:
    """The member id a node certificate names (``node-<id>``), else None."""
    if cert_name and cert_name.startswith("node-") and cert_name[5:].isdigit():
        return int(cert_name[5:])
    return None


class AuthService:
    """The node's authentication and authorization (module doc)."""

    def __init__(self, node: AuthNode) -> None:
        self.node = node
        self.cfg = node.cfg
        self.log = node.log
        settings = self.cfg.auth
        #: Whether requests are checked at all ([auth] enabled).
        self.enabled = settings.enabled
        self.limiter = LoginLimiter(settings.failed_logins_per_minute)
        self.log_limiter = LogLimiter()
        self._threads = trio.CapacityLimiter(LOGIN_THREADS)
        #: Called (from `run`) after users or roles changed; set by the client service.
        self.on_change: Callable[[], None] | None = None

    # -- the replicated state -------------------------------------------------------
    def _partition(self) -> AuthPartition:
        driver: AuthPartition = self.node.drivers[0]
        return driver

    @property
    def store(self) -> AuthStore:
        """Partition 0's users and roles as applied on this node now."""
        return self._partition().auth_store()

    def _deadline(self) -> float:
        return trio.current_time() + self.cfg.limits.request_timeout

    async def propose(self, cmd: AuthCommand, client_id: int | None = None,
                      seq: int | None = None) -> WriteResult:
        """Replicate `cmd` through partition 0 (this node must lead it); its applied result.

        With the client's session (`client_id`, `seq`) a retry of the same request is
        applied once: the state machine answers it the first result again.
        """
        driver = self._partition()
        if not driver.is_leader:
            raise driver.not_leader_error()
        w: Waiter[WriteResult] = Waiter()
        driver.submit_write(encode_command(cmd, client_id, seq), self._deadline(), w.set)
        result = await w.get()
        if not isinstance(result, WriteResult):
            raise Unavailable("auth command applied without a result")
        return result

    # -- identity ----------------------------------------------------------------------
    def new_connection(self, address: str, cert_name: str | None) -> ConnectionAuth:
        conn = ConnectionAuth(address, cert_name)
        if self.enabled and cert_name is not None and self.cfg.tls.client_cert_auth:
            conn.bind(cert_name, 0, 0)  # checked against the store at each request
        return conn

    def check_user(self, conn: ConnectionAuth) -> str:
        """The connection's user if it is (still) valid; else UNAUTHENTICATED saying why."""
        user = conn.user
        if user is None and conn.pending_token:
            self._check_token(conn, conn.pending_token)
            user = conn.user
        if user is None:
            raise Unauthenticated("authentication required: log in (Login) or present a "
                                  "token (Authenticate) first")
        u = self.store.user(user)
        if u is None:
            raise Unauthenticated(f"user {user!r} does not exist (deleted?)")
        if conn.expires_ms:
            if u.revision != conn.revision:
                raise Unauthenticated(f"the token of user {user!r} was issued before its "
                                      "password changed: log in again")
            if conn.expires_ms <= unix_ms():
                raise Unauthenticated(f"the token of user {user!r} expired: log in again")
        return user

    def require(self, conn: ConnectionAuth, start: bytes, end: bytes | None, write: bool,
                what: str) -> None:
        """PERMISSION_DENIED unless the user may read (write) all of ``[start, end)``."""
        user = self.check_user(conn)
        if self.store.allowed(user, start, end, write):
            return
        need = "READWRITE" if write else "READ"
        self._denied(conn, user, f"{what} needs {need} on {_describe_range(start, end)}")

    def require_key(self, conn: ConnectionAuth, key: bytes, write: bool, what: str) -> None:
        self.require(conn, key, key + b"\x00", write, what)

    def require_root(self, conn: ConnectionAuth, what: str) -> None:
        user = self.check_user(conn)
        if not self.store.is_root(user):
            self._denied(conn, user, f"{what} needs the root role")

    def may_fence(self, conn: ConnectionAuth, node_id: int) -> bool:
        """Whether `conn` may send RebuildFence for `node_id` without the root role.

        A member's node certificate may fence its own id (a rebuild). So may
        anybody while the cluster has no root user yet: at a cluster's first
        start a node that starts late rebuilds (fences) before the users exist,
        and nobody could log in to do it. Afterwards a rebuilding node without
        a node certificate logs in as root with its root_password_file.
        """
        if _node_id_of(conn.cert_name) == node_id and self.cfg.peer(node_id) is not None:
            return True
        return ROOT not in self.store.users

    def _denied(self, conn: ConnectionAuth, user: str, what: str) -> None:
        held = self.log_limiter.allow("permission_denied", user)
        if held is not None:
            self.log.warning("permission_denied", user=user, what=what, remote=conn.address,
                             suppressed=held)
        raise PermissionDenied(f"permission denied: user {user!r}: {what}",
                               details={"user": user, "what": what})

    def unauthenticated(self, conn: ConnectionAuth, error: PrkdbError) -> None:
        """Log (once a minute per address) a request refused for want of a user."""
        held = self.log_limiter.allow("request_unauthenticated", conn.address)
        if held is not None:
            self.log.info("request_unauthenticated", remote=conn.address, reason=error.message,
                          suppressed=held)

    def authenticate(self, conn: ConnectionAuth, req: Authenticate) -> AuthOk:
        """Bind the token's user to `conn` (synchronous: requests after it run as that user)."""
        if not self.enabled:
            return AuthOk(req.request_id, "", "", 0)
        claims = self._check_token(conn, req.token)
        return AuthOk(req.request_id, claims.user, req.token, claims.expires_ms)

    def _check_token(self, conn: ConnectionAuth, token: str) -> TokenClaims:
        """Bind `token`'s user to `conn`, or raise: UNAVAILABLE while this node is behind
        the token (kept, and checked again by the connection's next request), else
        UNAUTHENTICATED saying why."""
        store = self.store
        try:
            claims = verify_token(token, secret=store.secret, cluster_id=self.cfg.cluster_id,
                                  store=store, now_ms=unix_ms())
        except AuthBehind as e:
            conn.pending_token = token
            raise Unavailable(str(e)) from None
        except TokenError as e:
            conn.pending_token = ""
            held = self.log_limiter.allow("token_refused", conn.address)
            if held is not None:
                self.log.info("token_refused", remote=conn.address, reason=str(e),
                              suppressed=held)
            raise Unauthenticated(str(e)) from None
        conn.pending_token = ""
        conn.bind(claims.user, claims.revision, claims.expires_ms)
        return claims

    async def login(self, conn: ConnectionAuth, req: Login) -> AuthOk:
        """Check a password (rate limited per address); bind the user and issue a token."""
        if not self.enabled:
            return AuthOk(req.request_id, req.user, "", 0)
        now = trio.current_time()
        source = conn.address.rsplit(":", 1)[0]  # per address, whatever the port
        wait = self.limiter.retry_after_ms(source, now)
        if wait is not None:
            held = self.log_limiter.allow("logins_rate_limited", source)
            if held is not None:
                self.log.warning("logins_rate_limited", remote=conn.address, user=req.user,
                                 retry_after_ms=wait, suppressed=held)
            raise AuthFailed(f"too many failed logins from {source}: retry in {wait} ms",
                             details={"retry_after_ms": wait})
        store = self.store
        if not store.secret:
            raise Unavailable("auth is starting (no token secret replicated yet): retry")
        u = store.user(req.user)
        for _ in range(3):
            # No such user (or no password): check against a hash of the default cost all
            # the same, so a login's time does not tell which users exist.
            pw = (u.password if u is not None and u.password is not None
                  else PasswordHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, _NO_USER_SALT, bytes(32)))
            ok = await trio.to_thread.run_sync(pw.verify, req.password,
                                               limiter=self._threads)
            before, u = u, self.store.user(req.user)
            if u is before:  # else it changed while we hashed (a passwd applied): again
                break
        if not ok or u is None or u.password is None or u.password != pw:
            self.limiter.failed(source, trio.current_time())
            held = self.log_limiter.allow("login_failed", source)
            if held is not None:
                self.log.warning("login_failed", remote=conn.address, user=req.user,
                                 suppressed=held)
            if not self._partition().auth_caught_up():
                # The user or password may be newer than what this node applied:
                # UNAVAILABLE (retry elsewhere), for every failure alike so it tells
                # nothing of which users exist; it still counts against the limit.
                raise Unavailable("this node is catching up on users and roles (partition "
                                  "0) and could not check the login: retry, or ask another "
                                  "node")
            raise AuthFailed(f"login failed: wrong user or password for {req.user!r}")
        expires = unix_ms() + self.cfg.auth.token_ttl_s * 1000
        token = sign_token(self.store.secret, self.cfg.cluster_id, u.name, u.revision, expires)
        conn.bind(u.name, u.revision, expires)
        self.log.info("logged_in", user=u.name, remote=conn.address)
        return AuthOk(req.request_id, u.name, token, expires)

    # -- admin requests -----------------------------------------------------------------
    async def admin(self, req: WireMessage) -> WireMessage:
        """Serve a user or role request (the caller checked the root role)."""
        match req:
            case UserList():
                return UserListOk(req.request_id, tuple(
                    UserInfo(u.name, u.roles, u.password is not None)
                    for u in sorted(self.store.users.values(), key=lambda u: u.name)))
            case RoleList():
                roles = [RoleInfo(ROOT, ())] + [
                    RoleInfo(r.name, tuple(PermInfo(p.start, p.end, p.perm) for p in r.perms))
                    for r in sorted(self.store.roles.values(), key=lambda r: r.name)]
                return RoleListOk(req.request_id, tuple(roles))
        cmd = await self._command(req)
        await self.ensure_secret()
        result = await self.propose(cmd, getattr(req, "client_id", None),
                                    getattr(req, "seq", None))
        if result.code != ResultCode.OK:
            raise InvalidRequest(result.message or ResultCode(result.code).name)
        self.log.info("auth_changed", command=type(cmd).__name__, revision=result.revision)
        return AdminOk(getattr(req, "request_id", 0), {"revision": result.revision})

    async def _command(self, req: WireMessage) -> AuthCommand:
        for name in _names(req):
            problem = check_name(name)
            if problem is not None:
                raise InvalidRequest(problem)
        match req:
            case UserAdd():
                pw = None if req.password is None else await self.hash(req.password)
                return AuthUserAdd(req.name, pw, tuple(req.roles))
            case UserDelete():
                return AuthUserDelete(req.name)
            case UserPasswd():
                return AuthUserPasswd(req.name, await self.hash(req.password))
            case UserGrant():
                return AuthUserGrant(req.name, req.role)
            case UserRevoke():
                return AuthUserRevoke(req.name, req.role)
            case RoleAdd():
                return AuthRoleAdd(req.name)
            case RoleDelete():
                return AuthRoleDelete(req.name)
            case RoleGrant():
                return AuthRoleGrant(req.role, req.start, req.end, req.perm)
            case RoleRevoke():
                return AuthRoleRevoke(req.role, req.start, req.end)
        raise InvalidRequest(f"{type(req).__name__} is not an auth request")

    async def hash(self, password: str) -> PasswordHash:
        """Hash a new password with a fresh salt, in a worker thread."""
        if not password:
            raise InvalidRequest("password must not be empty")
        return await trio.to_thread.run_sync(PasswordHash.make, password, os.urandom(16),
                                             limiter=self._threads)

    async def ensure_secret(self) -> None:
        """Propose the token secret if partition 0 has none yet (proposed once: first wins)."""
        if not self.store.secret:
            await self.propose(AuthSetSecret(os.urandom(SECRET_SIZE)))

    # -- the root user at first start -------------------------------------------------------
    async def run(self) -> None:
        """While auth is on: as partition 0's leader, create the secret and root if missing.

        Also calls `on_change` whenever the store changed (polled every
        `BOOTSTRAP_POLL_S`): the client service checks open watches again.
        """
        if not self.enabled:
            return
        warned = False
        seen = -1
        while True:
            await trio.sleep(BOOTSTRAP_POLL_S)
            driver = self._partition()
            store = self.store
            if store.revision != seen:
                seen = store.revision
                if self.on_change is not None:
                    self.on_change()
            if not driver.is_leader or (store.secret and ROOT in store.users):
                continue
            try:
                await self.ensure_secret()
                if ROOT not in self.store.users:
                    password = root_password(self.cfg)
                    if password is None:
                        if not warned:
                            warned = True
                            self.log.error(
                                "auth_root_password_missing",
                                file=self.cfg.auth.root_password_file or "",
                                detail="auth is on and the cluster has no root user; write a "
                                "password to [auth] root_password_file (prkdb auth init)")
                        continue
                    result = await self.propose(
                        AuthUserAdd(ROOT, await self.hash(password), (ROOT,)))
                    if result.code == ResultCode.OK:
                        self.log.info("auth_root_created", revision=result.revision)
            except PrkdbError as e:  # lost leadership, timeout: try again next round
                self.log.info("auth_bootstrap_retry", error=e.message)



def root_password(cfg: NodeConfig) -> str | None:
    """The first line of ``[auth] root_password_file``; None if unset, unreadable or empty."""
    name = cfg.auth.root_password_file
    if not name:
        return None
    try:
        text = cfg.resolve(name).read_text(encoding="utf-8")
    except OSError:
        return None
    line = text.splitlines()[0] if text else ""
    return line or None


def _names(req: WireMessage) -> list[str]:
    """The user and role names a request carries (checked before anything is hashed)."""
    names = [getattr(req, f) for f in ("name", "role") if hasattr(req, f)]
    names += list(getattr(req, "roles", ()))
    return names


def _describe_range(start: bytes, end: bytes | None) -> str:
    if end == start + b"\x00":
        return f"key {start[:64]!r}"
    return f"[{start[:64]!r}, {'no end' if end is None else repr(end[:64])})"


def init_root_password(cfg: NodeConfig) -> tuple[str, bool]:
    """`prkdb auth init`: write a random root password to ``[auth] root_password_file``.

    Returns:
        ``(path, written)``: written is False when the file existed already
        (it is never overwritten: the cluster may use that password).

    Raises:
        InvalidRequest: the configuration names no root_password_file.
        OSError: the file cannot be written.
    """
    name = cfg.auth.root_password_file
    if not name:
        raise InvalidRequest(f"{cfg.source}: set [auth] root_password_file first")
    path = cfg.resolve(name)
    if path.exists():
        return str(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    return str(path), True
