"""AuthStore: the cluster's users, roles and token secret, replicated in partition 0.

Theory of operation
-------------------
Authentication and authorization state lives in partition 0's state machine
(``KVStateMachine.auth``), outside the key space, so every node enforces the
same rules as soon as it has applied partition 0's entries. It changes only
through Raft commands (:data:`AuthCommand`), applied by :meth:`AuthStore.apply`.
Like the rest of the machine it is *pure*: no clock, no randomness, no I/O.
Whatever is random or timed is chosen by the proposer and carried in the
command: a password's salt and hash (:class:`PasswordHash`, made with
``hashlib.scrypt`` by the node that proposes), the token signing secret (32
random bytes the partition-0 leader proposes once, :class:`AuthSetSecret`).

State:

* ``users``: name -> :class:`User` (password hash or None for a user that
  only logs in with a client certificate, its roles sorted, and its
  ``revision``: the log index of the entry that created it or last set its
  password). A token names the revision it was issued for, so a password
  change or a delete + re-create voids every older token.
* ``roles``: name -> :class:`Role` (its permissions, sorted by range). The
  role ``root`` is built in: it always exists, holds no permission list and
  allows everything (admin requests included); it cannot be changed or
  deleted, and the user ``root`` cannot lose it or be deleted.
* ``secret``: the HMAC key tokens are signed with (b"" until set; the first
  :class:`AuthSetSecret` applied wins, later ones change nothing).
* ``revision``: the index of the last entry that changed anything here
  (caches of derived state compare it).

A permission is a key range ``[start, end)`` (end None = no end; a prefix
``p`` is ``[p, prefix_end(p))``) with READ or READWRITE. A user may do what
the union of its roles' ranges allows: reading ``[a, b)`` needs every key of
it covered by READ or READWRITE ranges, writing a key needs READWRITE.

Log encoding (tags continue prkdb/state/commands.py's ``OpTag``)::

    AuthUserAdd      [10, name, password | null, [role, ...]]
    AuthUserDelete   [11, name]
    AuthUserPasswd   [12, name, password]
    AuthUserGrant    [13, name, role]
    AuthUserRevoke   [14, name, role]
    AuthRoleAdd      [15, name]
    AuthRoleDelete   [16, name]
    AuthRoleGrant    [17, role, start, end | null, perm]    perm: 1 READ, 2 READWRITE
    AuthRoleRevoke   [18, role, start, end | null]
    AuthSetSecret    [19, secret]                           32 bytes
    password         [n, r, p, salt, hash]                  scrypt parameters, 16+ byte salt

A refused command (an unknown user, a role that exists already, ...) is a
``AUTH_REJECTED`` result and changes nothing, like every failed command.

Snapshot (the sixth element of a format 3 machine snapshot; kv.py)::

    [secret, [name, password | null, [role, ...], revision, ...],
     [name, [start, end | null, perm, ...], ...], revision]
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, final

from prkdb.state.errors import CommandDecodeError, SnapshotDecodeError
from prkdb.state.results import ResultCode, WriteResult

__all__ = [
    "AUTH_TAGS",
    "ROOT",
    "AuthCommand",
    "AuthRoleAdd",
    "AuthRoleDelete",
    "AuthRoleGrant",
    "AuthRoleRevoke",
    "AuthSetSecret",
    "AuthStore",
    "AuthUserAdd",
    "AuthUserDelete",
    "AuthUserGrant",
    "AuthUserPasswd",
    "AuthUserRevoke",
    "PasswordHash",
    "Perm",
    "Permission",
    "Role",
    "User",
    "auth_command_from_cbor",
    "auth_command_to_cbor",
    "check_name",
]

#: The built-in role that allows everything, and the user created at first start.
ROOT: Final = "root"
NAME_MAX: Final = 128
SECRET_SIZE: Final = 32
SALT_MIN: Final = 16
# scrypt cost: n = 2**14, r = 8, p = 1 (16 MiB, ~50 ms): the interactive-login
# parameters of the scrypt paper; stored with every hash so they can be raised.
SCRYPT_N: Final = 1 << 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SCRYPT_MAXMEM: Final = 256 * 1024 * 1024


class Perm(enum.IntEnum):
    """What a permission allows on its range. Values are on disk and on the wire."""

    READ = 1
    READWRITE = 2


def check_name(name: Any, what: str = "name") -> str | None:
    """Why ``name`` is not a valid user or role name, or None.

    1..128 characters, printable, no whitespace (names appear in logs and tokens).
    """
    if type(name) is not str:
        return f"{what} must be a string, got {type(name).__name__}"
    if not 0 < len(name) <= NAME_MAX:
        return f"{what} must be 1..{NAME_MAX} characters, got {len(name)}"
    if not name.isprintable() or any(c.isspace() for c in name):
        return f"{what} {name!r} must be printable and without spaces"
    return None


@final
@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash and the parameters it was made with."""

    n: int
    r: int
    p: int
    salt: bytes
    hash: bytes

    @classmethod
    def make(cls, password: str, salt: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
             p: int = SCRYPT_P) -> PasswordHash:
        """Hash ``password`` (the proposer draws ``salt``: 16 random bytes). Slow (~50 ms)."""
        return cls(n, r, p, salt, _scrypt(password, salt, n, r, p))

    def verify(self, password: str) -> bool:
        """Whether ``password`` is the one hashed (constant-time compare). Slow (~50 ms)."""
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p),
                                   self.hash)

    def to_cbor(self) -> list[Any]:
        return [self.n, self.r, self.p, self.salt, self.hash]

    @classmethod
    def from_cbor(cls, item: Any) -> PasswordHash:
        """Raises ValueError for anything but ``[n, r, p, salt, hash]`` with sane values."""
        if type(item) is not list or len(item) != 5:
            raise ValueError("password must be an array [n, r, p, salt, hash]")
        n, r, p, salt, digest = item
        for v, what in ((n, "n"), (r, "r"), (p, "p")):
            if type(v) is not int or not 0 < v < 2**32:
                raise ValueError(f"password scrypt {what} must be a positive 32-bit int")
        if n & (n - 1) or n < 2:
            raise ValueError(f"password scrypt n ({n}) must be a power of 2 >= 2")
        if type(salt) is not bytes or not SALT_MIN <= len(salt) <= 64:
            raise ValueError(f"password salt must be {SALT_MIN}..64 bytes")
        if type(digest) is not bytes or not 16 <= len(digest) <= 64:
            raise ValueError("password hash must be 16..64 bytes")
        return cls(n, r, p, salt, digest)

    def __repr__(self) -> str:  # never print the hash
        return f"PasswordHash(n={self.n}, r={self.r}, p={self.p})"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=_SCRYPT_MAXMEM, dklen=32)


@final
@dataclass(frozen=True, slots=True)
class Permission:
    """READ or READWRITE on the keys in ``[start, end)`` (end None = to the last key)."""

    start: bytes
    end: bytes | None
    perm: Perm

    def to_cbor(self) -> list[Any]:
        return [self.start, self.end, int(self.perm)]


@final
@dataclass(frozen=True, slots=True)
class User:
    """A user: password (None = client certificate only), roles (sorted), revision."""

    name: str
    password: PasswordHash | None
    roles: tuple[str, ...]
    revision: int


@final
@dataclass(frozen=True, slots=True)
class Role:
    """A role and its permissions, sorted by (start, end)."""

    name: str
    perms: tuple[Permission, ...]


# -- commands ---------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class AuthUserAdd:
    """Create user ``name`` (refused if it exists); every role named must exist."""

    name: str
    password: PasswordHash | None
    roles: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class AuthUserDelete:
    name: str


@final
@dataclass(frozen=True, slots=True)
class AuthUserPasswd:
    """Set a user's password: its revision becomes this entry's index (old tokens die)."""

    name: str
    password: PasswordHash


@final
@dataclass(frozen=True, slots=True)
class AuthUserGrant:
    name: str
    role: str


@final
@dataclass(frozen=True, slots=True)
class AuthUserRevoke:
    name: str
    role: str


@final
@dataclass(frozen=True, slots=True)
class AuthRoleAdd:
    name: str


@final
@dataclass(frozen=True, slots=True)
class AuthRoleDelete:
    """Delete a role; users that had it lose it."""

    name: str


@final
@dataclass(frozen=True, slots=True)
class AuthRoleGrant:
    """Give ``role`` ``perm`` on ``[start, end)``; replaces the perm of the same range."""

    role: str
    start: bytes
    end: bytes | None
    perm: Perm


@final
@dataclass(frozen=True, slots=True)
class AuthRoleRevoke:
    """Take away the permission of exactly ``[start, end)`` from ``role``."""

    role: str
    start: bytes
    end: bytes | None


@final
@dataclass(frozen=True, slots=True)
class AuthSetSecret:
    """Set the token signing secret, if none is set yet (the first one applied wins)."""

    secret: bytes

    def __repr__(self) -> str:
        return "AuthSetSecret(secret=***)"


AuthCommand: TypeAlias = (
    AuthUserAdd | AuthUserDelete | AuthUserPasswd | AuthUserGrant | AuthUserRevoke
    | AuthRoleAdd | AuthRoleDelete | AuthRoleGrant | AuthRoleRevoke | AuthSetSecret
)

_TAG_OF: Final[dict[type, int]] = {
    AuthUserAdd: 10, AuthUserDelete: 11, AuthUserPasswd: 12, AuthUserGrant: 13,
    AuthUserRevoke: 14, AuthRoleAdd: 15, AuthRoleDelete: 16, AuthRoleGrant: 17,
    AuthRoleRevoke: 18, AuthSetSecret: 19,
}
#: The command tags of this module (commands.py hands these to auth_command_from_cbor).
AUTH_TAGS: Final = frozenset(_TAG_OF.values())
AUTH_COMMAND_TYPES: Final = frozenset(_TAG_OF)


def auth_command_to_cbor(cmd: AuthCommand) -> list[Any]:
    """The log array of ``cmd`` (module doc)."""
    tag = _TAG_OF[type(cmd)]
    match cmd:
        case AuthUserAdd():
            pw = None if cmd.password is None else cmd.password.to_cbor()
            return [tag, cmd.name, pw, list(cmd.roles)]
        case AuthUserDelete() | AuthRoleAdd() | AuthRoleDelete():
            return [tag, cmd.name]
        case AuthUserPasswd():
            return [tag, cmd.name, cmd.password.to_cbor()]
        case AuthUserGrant() | AuthUserRevoke():
            return [tag, cmd.name, cmd.role]
        case AuthRoleGrant():
            return [tag, cmd.role, cmd.start, cmd.end, int(cmd.perm)]
        case AuthRoleRevoke():
            return [tag, cmd.role, cmd.start, cmd.end]
        case AuthSetSecret():
            return [tag, cmd.secret]
    raise TypeError(f"not an auth command: {type(cmd).__name__}")


def _text(v: Any, what: str) -> str:
    problem = check_name(v, what)
    if problem is not None:
        raise CommandDecodeError(problem)
    return str(v)


def _range(start: Any, end: Any, what: str) -> tuple[bytes, bytes | None]:
    if type(start) is not bytes or (end is not None and type(end) is not bytes):
        raise CommandDecodeError(f"{what} range start must be bytes and end bytes or null")
    if end is not None and end <= start:
        raise CommandDecodeError(f"{what} range end must be greater than start (or null)")
    return start, end


def _password(v: Any) -> PasswordHash:
    try:
        return PasswordHash.from_cbor(v)
    except ValueError as e:
        raise CommandDecodeError(str(e)) from None


_LENGTHS: Final = {10: 4, 11: 2, 12: 3, 13: 3, 14: 3, 15: 2, 16: 2, 17: 5, 18: 4, 19: 2}
_NAMES: Final = {tag: cls.__name__ for cls, tag in _TAG_OF.items()}


def auth_command_from_cbor(item: list[Any]) -> AuthCommand:
    """Decode an auth command array (tag in :data:`AUTH_TAGS`); strict like commands.py.

    Raises:
        CommandDecodeError: wrong length, types or values.
    """
    tag = item[0]
    name = _NAMES[tag]
    if len(item) != _LENGTHS[tag]:
        raise CommandDecodeError(
            f"{name} must be an array of {_LENGTHS[tag]} items, got {len(item)}")
    if tag == 10:
        pw = None if item[2] is None else _password(item[2])
        roles = item[3]
        if type(roles) is not list:
            raise CommandDecodeError("AuthUserAdd roles must be an array")
        return AuthUserAdd(_text(item[1], "user name"), pw,
                           tuple(_text(r, "role name") for r in roles))
    if tag == 11:
        return AuthUserDelete(_text(item[1], "user name"))
    if tag == 12:
        return AuthUserPasswd(_text(item[1], "user name"), _password(item[2]))
    if tag == 13:
        return AuthUserGrant(_text(item[1], "user name"), _text(item[2], "role name"))
    if tag == 14:
        return AuthUserRevoke(_text(item[1], "user name"), _text(item[2], "role name"))
    if tag == 15:
        return AuthRoleAdd(_text(item[1], "role name"))
    if tag == 16:
        return AuthRoleDelete(_text(item[1], "role name"))
    if tag == 17:
        start, end = _range(item[2], item[3], "AuthRoleGrant")
        perm = item[4]
        if type(perm) is not int or perm not in (1, 2):
            raise CommandDecodeError(f"AuthRoleGrant perm must be 1 or 2, got {perm!r:.20}")
        return AuthRoleGrant(_text(item[1], "role name"), start, end, Perm(perm))
    if tag == 18:
        start, end = _range(item[2], item[3], "AuthRoleRevoke")
        return AuthRoleRevoke(_text(item[1], "role name"), start, end)
    secret = item[1]
    if type(secret) is not bytes or len(secret) != SECRET_SIZE:
        raise CommandDecodeError(f"AuthSetSecret secret must be {SECRET_SIZE} bytes")
    return AuthSetSecret(secret)


# -- the store ----------------------------------------------------------------------------


def _range_key(p: Permission) -> tuple[bytes, bool, bytes]:
    return (p.start, p.end is None, p.end or b"")


@final
class _Access:
    """A user's permissions merged into disjoint sorted ranges: (starts, ends), READ and WRITE."""

    __slots__ = ("read", "root", "write")

    def __init__(self, perms: list[Permission], root: bool) -> None:
        self.root = root
        self.read = _merge([(p.start, p.end) for p in perms])
        self.write = _merge([(p.start, p.end) for p in perms if p.perm == Perm.READWRITE])


def _merge(ranges: list[tuple[bytes, bytes | None]]) -> tuple[list[bytes], list[bytes | None]]:
    """Disjoint, sorted ranges covering the union of ``ranges`` (touching ones joined)."""
    starts: list[bytes] = []
    ends: list[bytes | None] = []
    for start, end in sorted(ranges, key=lambda r: r[0]):
        if ends and (ends[-1] is None or start <= ends[-1]):  # overlaps or touches the last
            last = ends[-1]
            if last is not None and (end is None or end > last):
                ends[-1] = end
            continue
        starts.append(start)
        ends.append(end)
    return starts, ends


def _covers(merged: tuple[list[bytes], list[bytes | None]], start: bytes,
            end: bytes | None) -> bool:
    """Whether one merged range holds all of ``[start, end)``."""
    starts, ends = merged
    i = bisect.bisect_right(starts, start) - 1
    if i < 0:
        return False
    last = ends[i]
    if last is None:
        return True
    if end is None:
        return False
    return start < last and end <= last


@final
class AuthStore:
    """Users, roles and the token secret (module doc). Not thread-safe: one owner."""

    __slots__ = ("_access", "_access_revision", "revision", "roles", "secret", "users")

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        self.secret = b""
        #: Index of the last entry that changed this store (0 = never).
        self.revision = 0
        # name -> merged permissions, valid for `_access_revision` (derived, not in snapshots).
        self._access: dict[str, _Access] = {}
        self._access_revision = -1

    def __bool__(self) -> bool:
        """True once anything was set (an empty store is not written to snapshots)."""
        return bool(self.users or self.roles or self.secret)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthStore):
            return NotImplemented
        return (self.users == other.users and self.roles == other.roles
                and self.secret == other.secret and self.revision == other.revision)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"AuthStore(users={len(self.users)}, roles={len(self.roles)}, "
                f"secret={'set' if self.secret else 'unset'}, revision={self.revision})")

    # -- queries ---------------------------------------------------------------

    def user(self, name: str) -> User | None:
        return self.users.get(name)

    def is_root(self, name: str) -> bool:
        """Whether user ``name`` exists and has the root role."""
        u = self.users.get(name)
        return u is not None and ROOT in u.roles

    def allowed(self, name: str, start: bytes, end: bytes | None, write: bool) -> bool:
        """Whether user ``name`` may read (or write) every key of ``[start, end)``.

        A single key ``k`` is ``[k, k + b"\\x00")``. O(log r) for r ranges once
        the user's merged ranges are cached (rebuilt after any change).
        """
        if self._access_revision != self.revision:
            self._access.clear()
            self._access_revision = self.revision
        access = self._access.get(name)
        if access is None:
            u = self.users.get(name)
            if u is None:
                return False
            perms = [p for r in u.roles if (role := self.roles.get(r)) for p in role.perms]
            access = self._access[name] = _Access(perms, ROOT in u.roles)
        if access.root:
            return True
        return _covers(access.write if write else access.read, start, end)

    # -- apply -------------------------------------------------------------------

    def apply(self, index: int, cmd: AuthCommand) -> WriteResult:
        """Apply one committed auth command at log ``index``; deterministic."""
        problem = self._apply(index, cmd)
        if problem is not None:
            return WriteResult(ResultCode.AUTH_REJECTED, index, message=problem)
        self.revision = index
        return WriteResult(ResultCode.OK, index)

    def _apply(self, index: int, cmd: AuthCommand) -> str | None:
        users, roles = self.users, self.roles
        match cmd:
            case AuthSetSecret(secret=secret):
                if not self.secret:
                    self.secret = secret
                return None
            case AuthUserAdd(name=name, password=password, roles=names):
                if name in users:
                    return f"user {name!r} already exists"
                for role_name in names:
                    if role_name != ROOT and role_name not in roles:
                        return f"role {role_name!r} does not exist"
                users[name] = User(name, password, tuple(sorted(set(names))), index)
                return None
            case AuthRoleAdd(name=name):
                if name == ROOT or name in roles:
                    return f"role {name!r} already exists"
                roles[name] = Role(name, ())
                return None
        # Everything else names an existing user or role.
        match cmd:
            case AuthUserDelete(name=name):
                if name == ROOT:
                    return "the root user cannot be deleted"
                if users.pop(name, None) is None:
                    return f"user {name!r} does not exist"
            case AuthUserPasswd(name=name, password=password):
                u = users.get(name)
                if u is None:
                    return f"user {name!r} does not exist"
                users[name] = User(name, password, u.roles, index)
            case AuthUserGrant(name=name, role=role):
                u = users.get(name)
                if u is None:
                    return f"user {name!r} does not exist"
                if role != ROOT and role not in roles:
                    return f"role {role!r} does not exist"
                users[name] = User(name, u.password, tuple(sorted({*u.roles, role})),
                                   u.revision)
            case AuthUserRevoke(name=name, role=role):
                u = users.get(name)
                if u is None:
                    return f"user {name!r} does not exist"
                if role not in u.roles:
                    return f"user {name!r} does not have role {role!r}"
                if name == ROOT and role == ROOT:
                    return "the root user cannot lose the root role"
                users[name] = User(name, u.password, tuple(r for r in u.roles if r != role),
                                   u.revision)
            case AuthRoleDelete(name=name):
                if name == ROOT:
                    return "the root role cannot be deleted"
                if roles.pop(name, None) is None:
                    return f"role {name!r} does not exist"
                for uname, u in list(users.items()):
                    if name in u.roles:
                        users[uname] = User(uname, u.password,
                                            tuple(r for r in u.roles if r != name), u.revision)
            case AuthRoleGrant(role=name, start=start, end=end, perm=perm):
                r = roles.get(name)
                if r is None:
                    return ("the root role allows everything already" if name == ROOT
                            else f"role {name!r} does not exist")
                kept = [p for p in r.perms if (p.start, p.end) != (start, end)]
                kept.append(Permission(start, end, perm))
                roles[name] = Role(name, tuple(sorted(kept, key=_range_key)))
            case AuthRoleRevoke(role=name, start=start, end=end):
                r = roles.get(name)
                if r is None:
                    return f"role {name!r} does not exist"
                kept = [p for p in r.perms if (p.start, p.end) != (start, end)]
                if len(kept) == len(r.perms):
                    return f"role {name!r} has no permission on exactly [{start!r}, {end!r})"
                roles[name] = Role(name, tuple(kept))
            case _:
                raise TypeError(f"not an auth command: {type(cmd).__name__}")
        return None

    # -- snapshots -----------------------------------------------------------------

    def to_cbor(self) -> list[Any]:
        """The store as a CBOR-ready array (module doc); deterministic (insertion order)."""
        users: list[Any] = []
        for u in self.users.values():
            pw = None if u.password is None else u.password.to_cbor()
            users += [u.name, pw, list(u.roles), u.revision]
        roles: list[Any] = []
        for r in self.roles.values():
            flat: list[Any] = []
            for p in r.perms:
                flat += p.to_cbor()
            roles += [r.name, flat]
        return [self.secret, users, roles, self.revision]

    @classmethod
    def from_cbor(cls, item: Any, applied: int) -> AuthStore:
        """Rebuild a store from :meth:`to_cbor`'s array, checking every field.

        Raises:
            SnapshotDecodeError: anything malformed (names, hashes, ranges, a
                revision after ``applied``, a user with an unknown role).
        """
        try:
            return cls._from_cbor(item, applied)
        except (CommandDecodeError, ValueError) as e:
            raise SnapshotDecodeError(f"snapshot has a malformed auth store: {e}") from None

    @classmethod
    def _from_cbor(cls, item: Any, applied: int) -> AuthStore:
        if type(item) is not list or len(item) != 4:
            raise ValueError("must be an array [secret, users, roles, revision]")
        secret, users, roles, revision = item
        if type(secret) is not bytes or len(secret) not in (0, SECRET_SIZE):
            raise ValueError(f"secret must be empty or {SECRET_SIZE} bytes")
        if type(revision) is not int or not 0 <= revision <= applied:
            raise ValueError(f"revision {revision!r:.20} must be in [0, applied]")
        store = cls()
        store.secret, store.revision = secret, revision
        if type(roles) is not list or len(roles) % 2:
            raise ValueError("roles must be an array of (name, perms) pairs")
        it = iter(roles)
        for name, flat in zip(it, it):
            _text(name, "role name")
            if name == ROOT or name in store.roles:
                raise ValueError(f"role {name!r} is reserved or repeated")
            if type(flat) is not list or len(flat) % 3:
                raise ValueError(f"role {name!r} perms must be (start, end, perm) triples")
            perms = []
            pit = iter(flat)
            for start, end, perm in zip(pit, pit, pit):
                s, e = _range(start, end, f"role {name!r}")
                if type(perm) is not int or perm not in (1, 2):
                    raise ValueError(f"role {name!r} perm must be 1 or 2")
                perms.append(Permission(s, e, Perm(perm)))
            store.roles[name] = Role(name, tuple(perms))
        if type(users) is not list or len(users) % 4:
            raise ValueError("users must be an array of (name, password, roles, revision)")
        it = iter(users)
        for name, pw, uroles, rev in zip(it, it, it, it):
            _text(name, "user name")
            if name in store.users:
                raise ValueError(f"user {name!r} is repeated")
            if type(uroles) is not list:
                raise ValueError(f"user {name!r} roles must be an array")
            for r in uroles:
                _text(r, "role name")
                if r != ROOT and r not in store.roles:
                    raise ValueError(f"user {name!r} has unknown role {r!r}")
            if type(rev) is not int or not 0 < rev <= applied:
                raise ValueError(f"user {name!r} revision must be in [1, applied]")
            password = None if pw is None else PasswordHash.from_cbor(pw)
            store.users[name] = User(name, password, tuple(uroles), rev)
        return store
