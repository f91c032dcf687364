"""Authentication and authorization with real `prkdb` processes (issue 18).

One 3-node cluster with ``[auth] enabled`` for the module (the root user is
created at first start from the password file), spoken to with a raw wire
client (tests/integration/cluster.py) so every refusal is seen as the
server sends it; a second one-node cluster (another cluster id) issues a
token the first must refuse.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from prkctl.cli import cli as prkctl_cli
from prkdb.client import AuthFailed, Credentials, PermissionDenied, Unauthenticated
from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.state.kv import prefix_end
from prkdb.wire import PROTOCOL_VERSION, FrameDecoder, encode_frame
from prkdb.wire.messages import (
    AdminOk,
    Authenticate,
    AuthOk,
    Error,
    Get,
    GetOk,
    Hello,
    LeaseGrant,
    LeaseOk,
    LeaseRevoke,
    LeaseTimeToLive,
    Login,
    Perm,
    Put,
    ReadConsistency,
    RebuildFence,
    RoleAdd,
    RoleGrant,
    RoleList,
    RoleListOk,
    RoleRevoke,
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
    UserAdd,
    UserDelete,
    UserGrant,
    UserList,
    UserListOk,
    UserPasswd,
    Watch,
    WatchCancel,
    WatchEvents,
    WriteOk,
)
from tests.client.fronts import FRONTS, Front, fronts_fixture_iter
from tests.client.test_watch_fronts import close, take
from tests.integration.cluster import CLUSTER_ID, LocalCluster, WireConn

pytestmark = pytest.mark.slow

ROOT_PW = "root-pw-for-tests"
PARTITIONS = 4
_ids = itertools.count(1)
_seq = itertools.count(1)


def _session() -> tuple[int, int]:
    """(client_id, seq) for a write: one client id, increasing seqs (exactly-once table)."""
    return 77, next(_seq)


def auth_section(password_file: Path, per_minute: int = 20) -> str:
    return (f'\n[auth]\nenabled = true\nroot_password_file = "{password_file}"\n'
            f"token_ttl_s = 600\nfailed_logins_per_minute = {per_minute}\n")


def _start(root: Path, nodes: int, cluster_id: str = CLUSTER_ID) -> LocalCluster:
    pw = root / "root.pw"
    pw.write_text(ROOT_PW + "\nignored second line\n")
    c = LocalCluster(root, nodes, partitions=PARTITIONS, extra=auth_section(pw))
    if cluster_id != CLUSTER_ID:
        for i in c.ids:
            conf = root / f"node{i}.toml"
            conf.write_text(conf.read_text().replace(f'"{CLUSTER_ID}"', f'"{cluster_id}"'))
    c.start_all()
    return c


class Conn(WireConn):
    """A raw connection with request ids; `login` binds a user to it."""

    def __init__(self, port: int, cluster_id: str = CLUSTER_ID, source: str = "") -> None:
        if not source:
            super().__init__(port, cluster_id=cluster_id)
            return
        # From another loopback address (Linux routes all of 127/8 to lo): the
        # login rate limit counts per source address.
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0,
                                             source_address=(source, 0))
        self.decoder = FrameDecoder()
        self.hello = self.call(Hello(PROTOCOL_VERSION, cluster_id, "client", 0))

    def ask(self, build: Any) -> Any:
        rid = next(_ids)
        reply = self.call(build(rid))
        assert getattr(reply, "request_id", rid) == rid, reply
        return reply

    def login(self, user: str, password: str) -> Any:
        return self.ask(lambda rid: Login(rid, user, password))

    def put(self, key: bytes, value: bytes = b"v") -> Any:
        return self.ask(lambda rid: Put(rid, key, value, 77, next(_seq)))

    def get(self, key: bytes) -> Any:
        p = partition_for(key, PARTITIONS, "hashtag")
        return self.ask(lambda rid: Get(rid, key, ReadConsistency.FOLLOWER, p))

    def scan(self, partition: int, start: bytes, end: bytes | None) -> Any:
        return self.ask(lambda rid: Scan(rid, partition, start, end, 0, False, False,
                                         ReadConsistency.FOLLOWER))


def _until(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
        except (OSError, ConnectionError, AssertionError):
            if time.monotonic() > deadline:
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _poll(fn: Any, accept: Any, timeout: float = 15.0) -> Any:
    """The first result of `fn` that `accept` takes (polled as `_until`)."""
    return _until(lambda: (lambda r: r if accept(r) else None)(fn()), timeout)


def _code(reply: Any) -> int:
    assert isinstance(reply, Error), reply
    return reply.code


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    root = Path(tempfile.mkdtemp(prefix="prk-A-auth-"))
    c = _start(root, 3)
    try:
        c.wait_ready()
        # The leader of partition 0 creates root from the password file's first line
        # (polled in the logs: failed logins would count against the rate limit).
        _until(lambda: any("auth_root_created" in c.log(i) for i in c.ids))
        time.sleep(0.3)  # every node applies it
        admin = _until(lambda: Admin(c))
        for build in (
            lambda r: RoleAdd(r, "app", *_session()),
            lambda r: RoleGrant(r, "app", b"app/", prefix_end(b"app/"), Perm.READWRITE,
                                *_session()),
            lambda r: RoleAdd(r, "ro", *_session()),
            lambda r: RoleGrant(r, "ro", b"shared/", prefix_end(b"shared/"), Perm.READ,
                                *_session()),
            lambda r: UserAdd(r, "alice", "alice-pw", ("app", "ro"), *_session()),
        ):
            reply = admin.ask(build)
            assert isinstance(reply, AdminOk), reply
        admin.routed.close()
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


class Routed:
    """One logged-in connection per node; writes go to the key's partition leader."""

    def __init__(self, c: LocalCluster, user: str, pw: str) -> None:
        self.cluster = c
        self.conns = [Conn(port) for port in c.client_ports]
        for conn in self.conns:
            assert isinstance(conn.login(user, pw), AuthOk)

    def to_leader(self, partition: int) -> Conn:
        leader = _until(lambda: self.cluster.leaders().get(partition))
        return self.conns[leader - 1]

    def put(self, key: bytes) -> Any:
        p = partition_for(key, PARTITIONS, "hashtag")
        return _poll(lambda: self.to_leader(p).put(key),
                     lambda r: not (isinstance(r, Error) and r.code == ErrorCode.NOT_LEADER))

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


class Admin:
    """root on every node; `ask` goes to partition 0's leader (and follows it if it moves)."""

    def __init__(self, c: LocalCluster) -> None:
        self.routed = Routed(c, "root", ROOT_PW)

    def ask(self, build: Any) -> Any:
        return _poll(lambda: self.routed.to_leader(0).ask(build),
                     lambda r: not (isinstance(r, Error) and r.code in (
                         ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE)))



def test_requests_need_a_user_but_status_does_not(cluster: LocalCluster) -> None:
    conn = Conn(cluster.client_ports[1])
    assert isinstance(conn.ask(Status), StatusOk)
    reply = conn.get(b"app/x")
    assert _code(reply) == ErrorCode.UNAUTHENTICATED and "log in" in reply.message
    assert _code(conn.put(b"app/x")) == ErrorCode.UNAUTHENTICATED
    assert _code(conn.ask(lambda r: Watch(r, 0, b"", None, 0, False))) == \
        ErrorCode.UNAUTHENTICATED
    assert _code(conn.ask(lambda r: Authenticate(r, "v1.bad.token"))) == \
        ErrorCode.UNAUTHENTICATED
    conn.close()
    assert cluster.wait_for_log(2, "request_unauthenticated")


def test_wrong_password_and_unknown_user(cluster: LocalCluster) -> None:
    conn = Conn(cluster.client_ports[0])
    reply = conn.login("alice", "wrong")
    assert _code(reply) == ErrorCode.AUTH_FAILED and "wrong user or password" in reply.message
    assert "retry_after_ms" not in reply.details
    assert _code(conn.login("mallory", "x")) == ErrorCode.AUTH_FAILED
    # Still nobody on the connection; the right password works.
    assert _code(conn.get(b"app/x")) == ErrorCode.UNAUTHENTICATED
    ok = conn.login("alice", "alice-pw")
    assert isinstance(ok, AuthOk) and ok.user == "alice" and ok.token.startswith("v1.")
    assert ok.expires_ms > time.time() * 1000 + 500_000
    assert cluster.wait_for_log(1, "login_failed")


def test_failed_logins_are_rate_limited_per_address(cluster: LocalCluster) -> None:
    port = cluster.client_ports[2]
    conn = Conn(port, source="127.0.0.2")  # failed_logins_per_minute = 20
    for i in range(20):
        assert _code(conn.login("alice" if i % 2 else "mallory", "wrong")) == \
            ErrorCode.AUTH_FAILED
    limited = conn.login("alice", "alice-pw")  # even the right password, for now
    assert _code(limited) == ErrorCode.AUTH_FAILED
    assert 0 < limited.details["retry_after_ms"] <= 60_000 and "too many" in limited.message
    # Another connection from the same address is limited too, and still served...
    again = Conn(port, source="127.0.0.2")
    assert _code(again.login("root", ROOT_PW)) == ErrorCode.AUTH_FAILED
    assert isinstance(again.ask(Status), StatusOk)
    # ... and other addresses are not limited.
    assert isinstance(Conn(port, source="127.0.0.3").login("alice", "alice-pw"), AuthOk)
    assert cluster.wait_for_log(3, "logins_rate_limited")


def test_permissions_on_get_put_scan_watch_and_txn(cluster: LocalCluster) -> None:
    routed = Routed(cluster, "alice", "alice-pw")
    alice = routed.conns[0]
    root = Routed(cluster, "root", ROOT_PW)
    for key in (b"shared/a", b"secret/a", b"app", b"apq", b"app/2", b"app/3"):
        assert isinstance(root.put(key), WriteOk)
    assert isinstance(routed.put(b"app/1"), WriteOk)

    assert isinstance(alice.get(b"app/1"), GetOk)
    assert isinstance(alice.get(b"shared/a"), GetOk)
    denied = alice.get(b"secret/a")
    assert _code(denied) == ErrorCode.PERMISSION_DENIED
    assert denied.details == {"user": "alice", "what": "get needs READ on key b'secret/a'"}
    assert _code(routed.put(b"shared/a")) == ErrorCode.PERMISSION_DENIED  # READ only
    assert _code(routed.put(b"secret/b")) == ErrorCode.PERMISSION_DENIED

    # A scan of the granted prefix, on every partition: only keys inside it.
    seen = []
    for p in range(PARTITIONS):
        page = alice.scan(p, b"app/", prefix_end(b"app/"))
        assert isinstance(page, ScanOk), page
        seen += [kv.key for kv in page.kvs]
        # A wider range is refused, not filtered.
        assert _code(alice.scan(p, b"app", prefix_end(b"app"))) == ErrorCode.PERMISSION_DENIED
        assert _code(alice.scan(p, b"", None)) == ErrorCode.PERMISSION_DENIED
    assert seen and all(k.startswith(b"app/") for k in seen)

    # Watches: the same rule.
    watch = alice.ask(lambda r: Watch(r, 0, b"app/", prefix_end(b"app/"), 0, False))
    assert isinstance(watch, WatchEvents), watch
    alice.send(WatchCancel(watch.request_id))
    assert _code(alice.ask(lambda r: Watch(r, 0, b"", None, 0, False))) == \
        ErrorCode.PERMISSION_DENIED

    # Txns: compares and gets need READ, puts and deletes READWRITE, on every key.
    a, s, x = b"app/{t}1", b"shared/{t}1", b"secret/{t}1"
    p = partition_for(a, PARTITIONS, "hashtag")
    assert p == partition_for(s, PARTITIONS, "hashtag") == partition_for(x, PARTITIONS,
                                                                         "hashtag")

    def txn(ops: tuple[TxnOp, ...]) -> Any:
        return routed.to_leader(p).ask(lambda r: Txn(r, p, (), ops, (), 77, next(_seq)))

    ok = _until(lambda: txn((TxnOp(TxnOpKind.PUT, a, b"1"), TxnOp(TxnOpKind.GET, s))))
    assert isinstance(ok, TxnOk), ok
    assert _code(txn((TxnOp(TxnOpKind.PUT, a, b"1"), TxnOp(TxnOpKind.GET, x)))) == \
        ErrorCode.PERMISSION_DENIED
    assert _code(txn((TxnOp(TxnOpKind.PUT, s, b"1"),))) == ErrorCode.PERMISSION_DENIED
    # Leases: revoking one deletes its keys (READWRITE on each); listing its keys needs READ.
    k = b"secret/{t}leased"
    grant = _poll(lambda: root.to_leader(p).ask(lambda r: LeaseGrant(r, p, 60_000, 77,
                                                                       next(_seq))),
                  lambda r: isinstance(r, LeaseOk))
    put = root.to_leader(p).ask(lambda r: Txn(r, p, (), (TxnOp(
        TxnOpKind.PUT, k, b"v", grant.lease_id),), (), 77, next(_seq)))
    assert isinstance(put, TxnOk), put
    leader = routed.to_leader(p)
    assert _code(leader.ask(lambda r: LeaseRevoke(r, grant.lease_id, 77, next(_seq)))) == \
        ErrorCode.PERMISSION_DENIED
    assert _code(leader.ask(lambda r: LeaseTimeToLive(r, grant.lease_id, True))) == \
        ErrorCode.PERMISSION_DENIED
    assert isinstance(leader.ask(lambda r: LeaseTimeToLive(r, grant.lease_id, False)), LeaseOk)
    routed.close()
    root.close()
    assert any("permission_denied" in cluster.log(i) for i in cluster.ids)


def test_admin_requests_need_root(cluster: LocalCluster) -> None:
    alice = Conn(cluster.client_ports[0])
    assert isinstance(alice.login("alice", "alice-pw"), AuthOk)
    for build in (lambda r: TransferLeader(r, 0, 0), lambda r: Snapshot(r, None),
                  lambda r: RebuildFence(r, 2),
                  lambda r: UserAdd(r, "eve", "x", ("root",), *_session()),
                  lambda r: UserGrant(r, "alice", "root", *_session()), UserList, RoleList):
        reply = alice.ask(build)
        assert _code(reply) == ErrorCode.PERMISSION_DENIED, reply
        assert "needs the root role" in reply.message
    root = Conn(cluster.client_ports[0])
    assert isinstance(root.login("root", ROOT_PW), AuthOk)
    users = root.ask(UserList)
    assert isinstance(users, UserListOk)
    assert {u.name: u.roles for u in users.users}.items() >= {("root", ("root",)),
                                                              ("alice", ("app", "ro"))}
    roles = root.ask(RoleList)
    assert isinstance(roles, RoleListOk) and {r.name for r in roles.roles} >= {"root", "app"}
    assert isinstance(root.ask(lambda r: Snapshot(r, 1)), AdminOk)
    # A change is applied once per session: the same (client_id, seq) again (a retry
    # after a lost answer) gets the first answer, not "already exists".
    admin = Admin(cluster)
    cid, seq = _session()
    first = admin.ask(lambda r: RoleAdd(r, "twice", cid, seq))
    again = admin.ask(lambda r: RoleAdd(r, "twice", cid, seq))
    assert isinstance(first, AdminOk) and isinstance(again, AdminOk), (first, again)
    assert again.details == first.details
    other = admin.ask(lambda r: RoleAdd(r, "twice", *_session()))
    assert _code(other) == ErrorCode.BAD_REQUEST and "already exists" in other.message


def test_a_role_change_takes_effect_on_every_node(cluster: LocalCluster) -> None:
    conns = []
    for port in cluster.client_ports:
        conn = Conn(port)
        assert isinstance(conn.login("alice", "alice-pw"), AuthOk)
        conns.append(conn)
    admin = Admin(cluster)
    grant = (b"app/", prefix_end(b"app/"))
    assert all(isinstance(c.get(b"app/1"), GetOk) for c in conns)
    # A watch on each node, on its own connection (its frames would mix with the gets).
    watchers = []
    for port in cluster.client_ports:
        w = Conn(port)
        assert isinstance(w.login("alice", "alice-pw"), AuthOk)
        first = w.ask(lambda r: Watch(r, 0, *grant, 0, False))
        assert isinstance(first, WatchEvents)
        watchers.append((w, first.request_id))
    t0 = time.monotonic()
    assert isinstance(admin.ask(
        lambda r: RoleRevoke(r, "app", *grant, *_session())), AdminOk)
    for c in conns:
        _until(lambda c=c: _code(c.get(b"app/1")) == ErrorCode.PERMISSION_DENIED, 10)
    # Open watches end too, with the error, once their node applied the change.
    for w, rid in watchers:
        frame = w.recv()
        while isinstance(frame, WatchEvents):
            frame = w.recv()
        assert isinstance(frame, Error) and frame.request_id == rid, frame
        assert frame.code == ErrorCode.PERMISSION_DENIED and "watch needs READ" in frame.message
        w.close()
    assert time.monotonic() - t0 < 10  # (within a second when the machine is idle)
    assert isinstance(admin.ask(
        lambda r: RoleGrant(r, "app", *grant, Perm.READWRITE, *_session())), AdminOk)
    for c in conns:
        _until(lambda c=c: isinstance(c.get(b"app/1"), GetOk), 10)


def test_tokens_die_with_a_password_change_or_a_delete(cluster: LocalCluster) -> None:
    admin = Admin(cluster)
    assert isinstance(admin.ask(
        lambda r: UserAdd(r, "bob", "bob-1", ("app",), *_session())), AdminOk)
    bob = Conn(cluster.client_ports[1])
    token = _poll(lambda: bob.login("bob", "bob-1"), lambda r: isinstance(r, AuthOk)).token
    other = Conn(cluster.client_ports[2])
    assert isinstance(other.ask(lambda r: Authenticate(r, token)), AuthOk)
    assert isinstance(other.get(b"app/1"), GetOk)
    assert isinstance(admin.ask(lambda r: UserPasswd(r, "bob", "bob-2", *_session())), AdminOk)
    reply = _poll(lambda: other.get(b"app/1"), lambda r: isinstance(r, Error) and r.code in (
        ErrorCode.UNAUTHENTICATED, ErrorCode.PERMISSION_DENIED), 10)  # (not a read timeout)
    assert reply.code == ErrorCode.UNAUTHENTICATED and "password changed" in reply.message
    fresh = Conn(cluster.client_ports[0])
    reply = fresh.ask(lambda r: Authenticate(r, token))
    assert _code(reply) == ErrorCode.UNAUTHENTICATED and "password changed" in reply.message
    assert isinstance(fresh.login("bob", "bob-2"), AuthOk)
    assert isinstance(admin.ask(lambda r: UserDelete(r, "bob", *_session())), AdminOk)
    reply = _poll(lambda: fresh.get(b"app/1"), lambda r: isinstance(r, Error) and r.code in (
        ErrorCode.UNAUTHENTICATED, ErrorCode.PERMISSION_DENIED), 10)  # (not a read timeout)
    assert reply.code == ErrorCode.UNAUTHENTICATED and "does not exist" in reply.message


def test_a_token_of_another_cluster_is_refused(cluster: LocalCluster) -> None:
    root = Path(tempfile.mkdtemp(prefix="prk-A-other-"))
    other = _start(root, 1, cluster_id="prkdb-other")
    try:
        conn = _until(lambda: Conn(other.client_ports[0], cluster_id="prkdb-other"))
        login = _poll(lambda: conn.login("root", ROOT_PW), lambda r: isinstance(r, AuthOk))
        mine = Conn(cluster.client_ports[0])
        reply = mine.ask(lambda r: Authenticate(r, login.token))
        assert _code(reply) == ErrorCode.UNAUTHENTICATED
        assert "issued by cluster 'prkdb-other'" in reply.message
        assert _code(mine.get(b"app/1")) == ErrorCode.UNAUTHENTICATED
    finally:
        other.close()
        shutil.rmtree(root, ignore_errors=True)


# -- the SDKs: login at connect, the token on every connection, login again once ------------


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    yield from fronts_fixture_iter(request.param)


def test_sdk_logs_in_and_logs_in_again(cluster: LocalCluster, front: Front) -> None:
    admin = Admin(cluster)
    user = f"sdk-{front.kind}"
    assert isinstance(admin.ask(
        lambda r: UserAdd(r, user, "pw1", ("app",), *_session())), AdminOk)
    with pytest.raises(AuthFailed, match="wrong user or password"):
        front.connect(cluster.seeds, credentials=Credentials(user, "nope"), timeout=10)
    with pytest.raises(Unauthenticated, match="authentication required"):
        front.connect(cluster.seeds, timeout=10).get(b"app/1")
    db = front.connect(cluster.seeds, credentials=Credentials(user, "pw1"), timeout=10)
    assert db.core.token.startswith("v1.")
    keys = [f"app/{front.kind}/{i}".encode() for i in range(8)]
    for k in keys:  # every partition's leader: connections that presented the token
        db.put(k, b"v")
    assert {kv.key for kv in db.scan(f"app/{front.kind}/".encode())} == set(keys)
    with pytest.raises(PermissionDenied, match="put needs READWRITE on key b'secret/x'"):
        db.put(b"secret/x", b"v")
    # The password is set again (to the same one): every token of the user dies; the
    # SDK's next request on each connection gets UNAUTHENTICATED and logs in once more.
    old = db.core.token
    assert isinstance(admin.ask(lambda r: UserPasswd(r, user, "pw1", *_session())), AdminOk)
    time.sleep(0.3)  # every node applies it
    for k in keys:
        assert db.get(k) == b"v"
    assert db.core.token != old
    # A password the client no longer has: the login again fails, and says why.
    assert isinstance(admin.ask(lambda r: UserPasswd(r, user, "pw2", *_session())), AdminOk)
    time.sleep(0.3)
    with pytest.raises(AuthFailed):
        db.get(keys[0])


# -- prkctl: --user/--password-file (and their env), user and role commands -----------------


def _prkctl(cluster: LocalCluster, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(prkctl_cli, ["--seeds", ",".join(cluster.seeds), "--timeout", "10",
                                           *args], env=env or {}, catch_exceptions=False)


def test_prkctl_users_and_roles(cluster: LocalCluster, tmp_path: Path) -> None:
    root_pw = tmp_path / "root.pw"
    root_pw.write_text(ROOT_PW + "\n")
    carol_pw = tmp_path / "carol.pw"
    carol_pw.write_text("carol-pw\n")
    as_root = ("--user", "root", "--password-file", str(root_pw))
    for args in (("role", "add", "ops"), ("role", "grant", "ops", "readwrite", "ops/", "--prefix"),
                 ("role", "grant", "ops", "read", "conf/a", "conf/m"),
                 ("user", "add", "carol", "--new-password-file", str(carol_pw), "--roles", "ops")):
        r = _prkctl(cluster, *as_root, *args)
        assert r.exit_code == 0, (args, r.output)
    r = _prkctl(cluster, *as_root, "--json", "user", "list")
    assert r.exit_code == 0 and {"user": "carol", "roles": ["ops"], "password": True} in \
        json.loads(r.output)
    r = _prkctl(cluster, *as_root, "role", "list")
    assert r.exit_code == 0 and "read [conf/a, conf/m); readwrite ops/*" in r.output
    env = {"PRKCTL_USER": "carol", "PRKCTL_PASSWORD_FILE": str(carol_pw)}
    assert _prkctl(cluster, "put", "ops/x", "1", env=env).exit_code == 0
    r = _prkctl(cluster, "get", "ops/x", env=env)
    assert r.exit_code == 0 and r.output.strip() == "1"
    r = _prkctl(cluster, "put", "conf/b", "1", env=env)
    assert r.exit_code == 1 and "permission denied: user 'carol': put needs READWRITE" in \
        r.output
    r = _prkctl(cluster, "user", "list", env=env)
    assert r.exit_code == 1 and "needs the root role" in r.output
    r = _prkctl(cluster, "get", "ops/x")
    assert r.exit_code == 1 and "pass --user and --password-file" in r.output
    r = _prkctl(cluster, "--user", "carol", "--password-file", str(root_pw), "get", "ops/x")
    assert r.exit_code == 1 and "login failed" in r.output
    assert _prkctl(cluster, "--user", "carol", "get", "ops/x").exit_code == 2
    assert _prkctl(cluster, *as_root, "role", "grant", "ops", "read", "b", "a").exit_code == 2
    # Revoking exactly what was granted; deleting the user.
    assert _prkctl(cluster, *as_root, "role", "revoke", "ops", "ops/", "--prefix").exit_code == 0
    r = _prkctl(cluster, "get", "ops/x", env=env)
    assert r.exit_code == 1 and "permission denied" in r.output
    assert _prkctl(cluster, *as_root, "user", "delete", "carol").exit_code == 0
    r = _prkctl(cluster, "get", "ops/x", env=env)
    assert r.exit_code == 1 and "login failed" in r.output


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_login_handshake_fuzz_keeps_the_node_serving(cluster: LocalCluster) -> None:
    """Random Logins and Authenticates (junk tokens, forged payloads, huge names) and
    garbage frames after the hello: every one answered or the connection closed, no crash,
    no memory growth, and the node still serves everyone else."""
    rng = random.Random(18)
    port = cluster.client_ports[1]
    pid = cluster.procs[2].pid

    def junk(n: int) -> str:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)]))
                       for _ in range(n))

    conn = Conn(port, source="127.0.0.4")
    before = 0
    for i in range(400):
        if i == 100:
            # After a warm-up: scrypt's 16 MiB per login thread (LOGIN_THREADS) stay with
            # the allocator; what matters is that nothing grows with the number of logins.
            before = _rss_kb(pid)
        kind = i % 4
        if kind == 0:
            msg: Any = Login(i + 1, junk(rng.randrange(1, 128)), junk(rng.randrange(0, 300)))
        elif kind == 1:
            msg = Authenticate(i + 1, junk(rng.randrange(0, 4000)))
        elif kind == 2:
            forged = base64.urlsafe_b64encode(json.dumps(
                {"c": CLUSTER_ID, "u": "root", "r": rng.randrange(10**6),
                 "e": rng.randrange(2**60)}).encode()).decode().rstrip("=")
            msg = Authenticate(i + 1, f"v1.{forged}.{junk(43)}")
        else:
            msg = Login(i + 1, "root", junk(rng.randrange(0, 1024)))
        reply = conn.call(msg)
        assert isinstance(reply, Error) and reply.code in (
            ErrorCode.AUTH_FAILED, ErrorCode.UNAUTHENTICATED), reply
    # Oversized fields and garbage are protocol errors: the connection closes, the node lives.
    for payload in (encode_frame([60, 1, "x" * 200, "pw"]), b"\x00\x00\x00\x03\xff\xff\xff"):
        bad = Conn(port, source="127.0.0.4")
        bad.sock.sendall(payload)
        with contextlib.suppress(ConnectionError, OSError):
            reply = bad.recv()
            assert isinstance(reply, Error)
        bad.close()
    assert isinstance(Conn(port).ask(Status), StatusOk)
    ok = Conn(port, source="127.0.0.5").login("alice", "alice-pw")
    assert isinstance(ok, AuthOk)
    assert _rss_kb(pid) - before < 8_000, "the node's memory grew by more than 8 MB"


def test_sdk_watch_logs_in_again_when_its_token_dies(cluster: LocalCluster,
                                                     front: Front) -> None:
    """A watch ended UNAUTHENTICATED (the user's tokens voided: the node checks open
    watches again) reopens with a Login pipelined before it, and misses nothing."""
    admin = Admin(cluster)
    user = f"watcher-{front.kind}"
    assert isinstance(admin.ask(
        lambda r: UserAdd(r, user, "pw", ("app",), *_session())), AdminOk)
    db = front.connect(cluster.seeds, credentials=Credentials(user, "pw"), timeout=10)
    prefix = f"app/w-{front.kind}/".encode()
    watch = db.inner.watch(prefix, cursor=db.watch_cursor(prefix))
    db.put(prefix + b"1", b"a")
    got = take(front, watch, 1)
    assert isinstance(admin.ask(lambda r: UserPasswd(r, user, "pw", *_session())), AdminOk)
    time.sleep(1.2)  # every node applies it and ends the watch streams (polled, 0.5 s)
    db.put(prefix + b"2", b"b")  # (logs in again too)
    got += take(front, watch, 1)
    assert [(e.key, e.value) for e in got] == [(prefix + b"1", b"a"), (prefix + b"2", b"b")]
    close(front, watch)


def test_a_wiped_node_fences_itself_as_root_and_rejoins(cluster: LocalCluster) -> None:
    """Last in the module (it restarts node 3): a node that lost its disk after the root
    user exists logs in as root (its root_password_file) to send RebuildFence, rebuilds
    from its peers, and serves again with the cluster's users."""
    cluster.kill(3)
    shutil.rmtree(cluster.root / "data3")
    cluster.start(3)
    assert cluster.wait_for_log(3, "rebuild_prepared", timeout=30), cluster.log(3)[-3000:]
    assert "refused RebuildFence" not in cluster.log(3)
    cluster.wait_ready()
    conn = _poll(lambda: Conn(cluster.client_ports[2]), lambda r: r is not None)
    assert isinstance(_poll(lambda: conn.login("alice", "alice-pw"),
                            lambda r: isinstance(r, AuthOk)), AuthOk)
    assert isinstance(_poll(lambda: conn.get(b"app/1"), lambda r: isinstance(r, GetOk)), GetOk)
