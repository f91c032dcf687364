"""AuthStore (prkdb/state/auth.py): commands, their log encoding, permission checks, snapshots."""

from __future__ import annotations

import cbor2
import pytest

from prkdb.state import (
    CommandDecodeError,
    KVStateMachine,
    PutCommand,
    ResultCode,
    SnapshotDecodeError,
    decode_command,
    encode_command,
)
from prkdb.state.auth import (
    ROOT,
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
    Perm,
    Permission,
)
from prkdb.state.kv import prefix_end

# Cheap scrypt parameters: the tests check the logic, not the cost.
_PW = PasswordHash.make("secret", b"s" * 16, n=16, r=1, p=1)
_PW2 = PasswordHash.make("other", b"t" * 16, n=16, r=1, p=1)

COMMANDS = [
    AuthUserAdd("alice", _PW, ("readers",)),
    AuthUserAdd("certonly", None),
    AuthUserDelete("alice"),
    AuthUserPasswd("alice", _PW2),
    AuthUserGrant("alice", "writers"),
    AuthUserRevoke("alice", "writers"),
    AuthRoleAdd("readers"),
    AuthRoleDelete("readers"),
    AuthRoleGrant("readers", b"app/", b"app0", Perm.READ),
    AuthRoleGrant("readers", b"", None, Perm.READWRITE),
    AuthRoleRevoke("readers", b"app/", b"app0"),
    AuthSetSecret(bytes(range(32))),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: type(c).__name__)
def test_commands_round_trip(cmd) -> None:
    assert decode_command(encode_command(cmd)) == (cmd, None, None)
    assert decode_command(encode_command(cmd, 7, 3)) == (cmd, 7, 3)


def test_password_hash_verifies_and_hides() -> None:
    assert _PW.verify("secret") and not _PW.verify("Secret") and not _PW.verify("")
    assert "hash" not in repr(_PW).lower().replace("passwordhash", "")
    assert "secret=***" in repr(AuthSetSecret(b"x" * 32))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([10, "alice", None], "AuthUserAdd must be an array of 4 items, got 3"),
        ([10, "", None, []], "user name must be 1..128 characters"),
        ([10, "a b", None, []], "must be printable and without spaces"),
        ([10, b"alice", None, []], "user name must be a string"),
        ([10, "alice", None, "root"], "roles must be an array"),
        ([10, "alice", [15, 1, 1, b"s" * 16, b"h" * 32], []], "power of 2"),
        ([10, "alice", [16, 1, 1, b"s" * 3, b"h" * 32], []], "salt must be 16..64 bytes"),
        ([17, "r", b"b", b"a", 1], "end must be greater than start"),
        ([17, "r", b"a", None, 3], "perm must be 1 or 2"),
        ([17, "r", "a", None, 1], "start must be bytes"),
        ([19, b"short"], "secret must be 32 bytes"),
        ([18, "r", b"a"], "AuthRoleRevoke must be an array of 4 items"),
    ],
)
def test_bad_commands_are_refused_at_decode(item, message) -> None:
    with pytest.raises(CommandDecodeError, match=message):
        decode_command(cbor2.dumps(item))


def test_auth_commands_only_at_top_level() -> None:
    with pytest.raises(CommandDecodeError, match="batch ops must be"):
        decode_command(cbor2.dumps([4, [[15, "r"]]]))


def _store(*cmds) -> tuple[AuthStore, list]:
    store = AuthStore()
    results = [store.apply(i, c) for i, c in enumerate(cmds, 1)]
    return store, results


def test_users_roles_and_access() -> None:
    store, results = _store(
        AuthRoleAdd("app"),
        AuthRoleGrant("app", b"app/", prefix_end(b"app/"), Perm.READWRITE),
        AuthRoleGrant("app", b"shared/", prefix_end(b"shared/"), Perm.READ),
        AuthRoleAdd("tail"),
        AuthRoleGrant("tail", b"z", None, Perm.READ),
        AuthUserAdd("alice", _PW, ("app",)),
        AuthUserAdd("root", _PW2, (ROOT,)),
        AuthUserAdd("bob", _PW, ("tail",)),
    )
    assert all(r.code == ResultCode.OK for r in results)
    assert store.revision == 8 and store.user("alice").revision == 6

    def can(user, start, end=None, write=False, *, key=False):
        return store.allowed(user, start, start + b"\x00" if key else end, write)

    assert can("alice", b"app/x", key=True, write=True)
    assert can("alice", b"app/", prefix_end(b"app/"))  # the whole prefix
    assert can("alice", b"app/a", b"app/b", write=True)
    assert not can("alice", b"app", prefix_end(b"app"))  # wider than granted: refused
    assert not can("alice", b"app/", None)  # no end: wider
    assert can("alice", b"shared/k", key=True)
    assert not can("alice", b"shared/k", key=True, write=True)  # READ only
    assert not can("alice", b"other", key=True)
    assert not can("alice", b"", None)
    assert can("bob", b"z", None) and can("bob", b"zz", None) and not can("bob", b"y", None)
    assert can("root", b"", None, write=True)  # the root role allows everything
    assert not can("nobody", b"app/x", key=True)
    assert store.is_root("root") and not store.is_root("alice")

    # Touching ranges of two roles join: [a, m) + [m, z) covers [c, q).
    store.apply(9, AuthRoleAdd("am"))
    store.apply(10, AuthRoleGrant("am", b"a", b"m", Perm.READ))
    store.apply(11, AuthRoleAdd("mz"))
    store.apply(12, AuthRoleGrant("mz", b"m", b"z", Perm.READ))
    store.apply(13, AuthUserAdd("carol", None, ("am", "mz")))
    assert can("carol", b"c", b"q") and not can("carol", b"c", b"zz")

    # Changes take effect at once (the cache follows the store's revision).
    store.apply(14, AuthUserRevoke("alice", "app"))
    assert not can("alice", b"app/x", key=True)
    store.apply(15, AuthUserGrant("alice", "app"))
    assert can("alice", b"app/x", key=True, write=True)
    store.apply(16, AuthRoleRevoke("app", b"app/", prefix_end(b"app/")))
    assert not can("alice", b"app/x", key=True)
    store.apply(17, AuthRoleGrant("app", b"app/", prefix_end(b"app/"), Perm.READ))
    assert can("alice", b"app/x", key=True) and not can("alice", b"app/x", key=True, write=True)
    store.apply(18, AuthRoleDelete("app"))
    assert store.user("alice").roles == ()
    assert not can("alice", b"app/x", key=True)


def test_passwd_bumps_the_revision_and_delete_removes() -> None:
    store, _ = _store(AuthUserAdd("alice", _PW))
    assert store.apply(5, AuthUserPasswd("alice", _PW2)).code == ResultCode.OK
    assert store.user("alice").revision == 5 and store.user("alice").password == _PW2
    assert store.apply(6, AuthUserDelete("alice")).code == ResultCode.OK
    assert store.user("alice") is None


@pytest.mark.parametrize(
    ("cmds", "bad", "message"),
    [
        ([AuthUserAdd("a", None)], AuthUserAdd("a", _PW), "user 'a' already exists"),
        ([], AuthUserAdd("a", None, ("ghost",)), "role 'ghost' does not exist"),
        ([], AuthUserDelete("a"), "user 'a' does not exist"),
        ([], AuthUserPasswd("a", _PW), "user 'a' does not exist"),
        ([AuthUserAdd("a", None)], AuthUserGrant("a", "ghost"), "role 'ghost' does not exist"),
        ([AuthUserAdd("a", None)], AuthUserRevoke("a", "r"), "does not have role 'r'"),
        ([AuthUserAdd(ROOT, _PW, (ROOT,))], AuthUserDelete(ROOT), "root user cannot be deleted"),
        ([AuthUserAdd(ROOT, _PW, (ROOT,))], AuthUserRevoke(ROOT, ROOT), "cannot lose the root"),
        ([], AuthRoleAdd(ROOT), "role 'root' already exists"),
        ([AuthRoleAdd("r")], AuthRoleAdd("r"), "role 'r' already exists"),
        ([], AuthRoleDelete(ROOT), "root role cannot be deleted"),
        ([], AuthRoleDelete("r"), "role 'r' does not exist"),
        ([], AuthRoleGrant(ROOT, b"a", None, Perm.READ), "allows everything already"),
        ([], AuthRoleGrant("r", b"a", None, Perm.READ), "role 'r' does not exist"),
        ([AuthRoleAdd("r")], AuthRoleRevoke("r", b"a", None), "no permission on exactly"),
    ],
)
def test_refused_commands_change_nothing(cmds, bad, message) -> None:
    store, _ = _store(*cmds)
    before = store.to_cbor()
    result = store.apply(100, bad)
    assert result.code == ResultCode.AUTH_REJECTED and message in result.message
    assert store.to_cbor() == before


def test_the_first_secret_wins() -> None:
    store, _ = _store(AuthSetSecret(b"a" * 32), AuthSetSecret(b"b" * 32))
    assert store.secret == b"a" * 32


def test_role_grant_replaces_the_same_range() -> None:
    store, _ = _store(AuthRoleAdd("r"), AuthRoleGrant("r", b"b", b"c", Perm.READ),
                      AuthRoleGrant("r", b"a", None, Perm.READ),
                      AuthRoleGrant("r", b"b", b"c", Perm.READWRITE))
    assert store.roles["r"].perms == (Permission(b"a", None, Perm.READ),
                                      Permission(b"b", b"c", Perm.READWRITE))


def _machine_with_auth() -> KVStateMachine:
    m = KVStateMachine()
    cmds = [AuthSetSecret(b"k" * 32), AuthRoleAdd("app"),
            AuthRoleGrant("app", b"app/", b"app0", Perm.READWRITE),
            AuthUserAdd("alice", _PW, ("app",)), AuthUserAdd(ROOT, _PW2, (ROOT,)),
            AuthUserAdd("cert", None)]
    for i, c in enumerate(cmds, 1):
        assert m.apply(i, encode_command(c)).code == ResultCode.OK
    m.apply(len(cmds) + 1, encode_command(PutCommand(b"app/x", b"v")))
    return m


def test_machine_applies_auth_commands_and_snapshots_them() -> None:
    m = _machine_with_auth()
    assert m.auth.allowed("alice", b"app/x", b"app/x\x00", True)
    assert len(m) == 1  # the auth state is outside the key space
    snap = m.snapshot()
    item = cbor2.loads(snap)
    assert item[0] == 3 and len(item) == 6 and item[5][0] == b"k" * 32
    restored = KVStateMachine()
    restored.restore(snap)
    assert restored == m and restored.snapshot() == snap
    assert restored.auth.user("alice").password.verify("secret")
    # A machine whose store is empty still writes format 2 (readable by older builds).
    assert cbor2.loads(KVStateMachine().snapshot())[0] == 2
    # Equality sees the auth store.
    restored.apply(100, encode_command(AuthUserDelete("alice")))
    assert restored != m


def test_refused_auth_command_is_a_failed_result_in_the_machine() -> None:
    m = KVStateMachine()
    r = m.apply(1, encode_command(AuthUserDelete("ghost"), 9, 1))
    assert r.code == ResultCode.AUTH_REJECTED
    # The session table caches it like any result (a retry sees the same answer).
    assert m.apply(2, encode_command(AuthUserDelete("ghost"), 9, 1)) == r


def _snap_with(change) -> bytes:
    item = cbor2.loads(_machine_with_auth().snapshot())
    change(item[5])
    return cbor2.dumps(item)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__(0, b"short"), "secret must be empty or 32 bytes"),
        (lambda a: a.__setitem__(3, 999), "revision 999 must be in"),
        (lambda a: a[1].__setitem__(2, ["ghost"]), "unknown role 'ghost'"),
        (lambda a: a[1].__setitem__(3, 0), "revision must be in"),
        (lambda a: a[1].__setitem__(0, ""), "user name must be 1..128"),
        (lambda a: a[1].extend(a[1][:4]), "user 'alice' is repeated"),
        (lambda a: a[2].extend(["root", []]), "role 'root' is reserved"),
        (lambda a: a[2][1].__setitem__(2, 7), "perm must be 1 or 2"),
        (lambda a: a[1].__setitem__(1, [3, 1, 1, b"s" * 16, b"h" * 32]), "power of 2"),
        (lambda a: a.pop(), "must be an array"),
    ],
)
def test_malformed_auth_snapshot_is_refused(change, message) -> None:
    with pytest.raises(SnapshotDecodeError, match=message):
        KVStateMachine().restore(_snap_with(change))
