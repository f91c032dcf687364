"""The node's auth pieces without a cluster: tokens, the login limiter, `prkdb auth init`."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from prkdb.config import NodeConfig
from prkdb.errors import AuthFailed, Unauthenticated, Unavailable
from prkdb.logging import get_logger
from prkdb.server.auth import (
    AuthBehind,
    AuthService,
    LoginLimiter,
    TokenError,
    _b64,
    init_root_password,
    root_password,
    sign_token,
    unix_ms,
    verify_token,
)
from prkdb.server.main import cli as prkdb_cli
from prkdb.state.auth import (
    AuthStore,
    AuthUserAdd,
    AuthUserDelete,
    AuthUserPasswd,
    PasswordHash,
)
from prkdb.wire.messages import Authenticate, AuthOk, Login

SECRET = b"s" * 32
NOW = 1_800_000_000_000
_PW = PasswordHash.make("x", b"t" * 16, n=16, r=1, p=1)


def _store() -> AuthStore:
    store = AuthStore()
    store.apply(5, AuthUserAdd("alice", _PW))
    return store


def _verify(token: str, store: AuthStore | None = None, *, secret: bytes = SECRET,
            cluster: str = "c1", now: int = NOW) -> object:
    return verify_token(token, secret=secret, cluster_id=cluster,
                        store=store if store is not None else _store(),
                        now_ms=now)


def test_a_token_round_trips() -> None:
    token = sign_token(SECRET, "c1", "alice", 5, NOW + 1000)
    assert token.startswith("v1.") and token.count(".") == 2
    claims = _verify(token)
    assert (claims.user, claims.revision, claims.expires_ms) == ("alice", 5, NOW + 1000)


@pytest.mark.parametrize(
    ("token", "kwargs", "message"),
    [
        ("nonsense", {}, "malformed token"),
        ("v2.a.b", {}, "malformed token"),
        ("v1.!!!.b", {}, "malformed token payload"),
        ("v1." + _b64(b'{"c":"c1"}') + ".x", {}, "malformed token payload"),
        (sign_token(SECRET, "other", "alice", 5, NOW + 1), {},
         "issued by cluster 'other', this is 'c1'"),
        (sign_token(b"k" * 32, "c1", "alice", 5, NOW + 1), {}, "signature is not valid"),
        (sign_token(SECRET, "c1", "alice", 5, NOW + 1), {"secret": b""}, "token secret yet"),
        (sign_token(SECRET, "c1", "bob", 5, NOW + 1), {}, "user 'bob', which was deleted"),
        (sign_token(SECRET, "c1", "alice", 4, NOW + 1), {}, "before its password changed"),
        (sign_token(SECRET, "c1", "alice", 5, NOW), {}, "expired 0 ms ago"),
    ],
)
def test_bad_tokens_say_why(token: str, kwargs: dict, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        _verify(token, **kwargs)


def test_a_forged_payload_fails_the_signature() -> None:
    token = sign_token(SECRET, "c1", "alice", 5, NOW + 1)
    _, payload, sig = token.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["e"] += 10**9
    forged = "v1." + _b64(json.dumps(claims).encode()) + "." + sig
    with pytest.raises(TokenError, match="signature"):
        _verify(forged)


def test_password_change_and_delete_void_tokens() -> None:
    store = _store()
    token = sign_token(SECRET, "c1", "alice", 5, NOW + 1)
    store.apply(9, AuthUserPasswd("alice", _PW))
    with pytest.raises(TokenError, match="password changed"):
        _verify(token, store)
    store.apply(10, AuthUserDelete("alice"))
    with pytest.raises(TokenError, match="deleted"):
        _verify(token, store)


def test_a_node_behind_the_token_says_so_instead_of_refusing_it() -> None:
    """A lagging node (restarted, cut off) must answer UNAVAILABLE, not UNAUTHENTICATED:
    the token is good, the node has not applied the entry that made it yet."""
    token = sign_token(SECRET, "c1", "alice", 9, NOW + 1)  # after a password change at 9
    store = _store()  # has alice from revision 5 only
    with pytest.raises(AuthBehind, match="revision 5, before the token's"):
        _verify(token, store)
    with pytest.raises(AuthBehind, match="token secret"):
        _verify(token, store, secret=b"")
    fresh = AuthStore()  # nothing applied: not even the user
    with pytest.raises(AuthBehind):
        _verify(sign_token(SECRET, "c1", "alice", 5, NOW + 1), fresh)
    store.apply(9, AuthUserPasswd("alice", _PW))  # caught up
    assert _verify(token, store).revision == 9
    store.apply(12, AuthUserDelete("alice"))
    with pytest.raises(TokenError, match="deleted") as info:  # and now really refused
        _verify(token, store)
    assert not isinstance(info.value, AuthBehind)


class _Node:
    """What AuthService reads of a node: the config, a logger, partition 0's store."""

    def __init__(self, store: AuthStore) -> None:
        self.cfg = NodeConfig.default().replace(cluster_id="c1")
        self.cfg = self.cfg.replace(auth=dataclasses.replace(self.cfg.auth, enabled=True))
        self.log = get_logger(node=1)
        store_ = store

        class _P0:
            partition = 0
            caught_up = True

            def auth_store(self) -> AuthStore:
                return store_

            def auth_caught_up(self) -> bool:
                return self.caught_up

        self.drivers = [_P0()]


async def test_a_connection_whose_token_this_node_is_behind_waits_for_it() -> None:
    """Authenticate on a lagging node: UNAVAILABLE, and the connection's requests say
    UNAVAILABLE until the node catches up; then they run as the token's user."""
    store = _store()
    store.secret = SECRET
    service = AuthService(_Node(store))
    conn = service.new_connection("127.0.0.1:5", None)
    token = sign_token(SECRET, "c1", "alice", 9, unix_ms() + 60_000)
    with pytest.raises(Unavailable, match="catching up"):
        service.authenticate(conn, Authenticate(1, token))
    with pytest.raises(Unavailable):
        service.check_user(conn)
    store.apply(9, AuthUserPasswd("alice", _PW))
    assert service.check_user(conn) == "alice"
    other = service.new_connection("127.0.0.1:6", None)
    with pytest.raises(Unauthenticated, match="signature"):
        service.authenticate(other, Authenticate(2, token[:-3] + "AAA"))
    with pytest.raises(Unauthenticated, match="authentication required"):
        service.check_user(other)


async def test_a_failed_login_on_a_node_catching_up_is_unavailable_not_a_wrong_password(
        ) -> None:
    """A lagging node may not know the user or its new password yet: UNAVAILABLE (the
    SDK asks another node), for unknown users and wrong passwords alike (it tells
    nothing of which users exist), still counted by the limiter."""
    store = AuthStore()
    store.secret = SECRET
    store.apply(5, AuthUserAdd("alice", PasswordHash.make("right", b"t" * 16, n=16, r=1, p=1)))
    node = _Node(store)
    service = AuthService(node)
    conn = service.new_connection("127.0.0.9:5", None)
    node.drivers[0].caught_up = False
    for user, password in (("alice", "wrong"), ("bob", "any")):
        with pytest.raises(Unavailable, match="catching up"):
            await service.login(conn, Login(1, user, password))
    assert isinstance(await service.login(conn, Login(2, "alice", "right")), AuthOk)
    node.drivers[0].caught_up = True
    with pytest.raises(AuthFailed, match="wrong user or password"):
        await service.login(conn, Login(3, "bob", "any"))
    assert len(service.limiter._recent("127.0.0.9", trio.current_time())) == 3


def test_login_limiter_counts_a_sliding_minute_per_address() -> None:
    lim = LoginLimiter(3, max_addresses=2)
    for t in (0.0, 10.0, 20.0):
        assert lim.retry_after_ms("a", t) is None
        lim.failed("a", t)
    assert lim.retry_after_ms("a", 30.0) == 30_000  # the first failure leaves at 60 s
    assert lim.retry_after_ms("b", 30.0) is None
    assert lim.retry_after_ms("a", 60.0) is None  # one failure left the window
    lim.failed("b", 61.0)
    lim.failed("c", 62.0)  # bounded: the oldest address is forgotten
    assert lim.retry_after_ms("a", 62.0) is None


def _config(tmp_path: Path, password_file: str) -> Path:
    conf = tmp_path / "node.toml"
    conf.write_text(f'[auth]\nenabled = true\nroot_password_file = "{password_file}"\n')
    return conf


def test_auth_init_writes_a_private_password_once(tmp_path: Path) -> None:
    conf = _config(tmp_path, "secrets/root.pw")  # relative to the config's directory
    runner = CliRunner()
    first = runner.invoke(prkdb_cli, ["auth", "init", "--config", str(conf)])
    path = tmp_path / "secrets" / "root.pw"
    assert first.exit_code == 0 and f"wrote a random root password to {path}" in first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = root_password(NodeConfig.from_toml(conf))
    assert password and len(password) >= 24
    again = runner.invoke(prkdb_cli, ["auth", "init", "--config", str(conf)])
    assert again.exit_code == 0 and "exists already: kept" in again.output
    assert root_password(NodeConfig.from_toml(conf)) == password


def test_auth_init_needs_the_setting(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text("[auth]\nenabled = false\n")
    res = CliRunner().invoke(prkdb_cli, ["auth", "init", "--config", str(conf)])
    assert res.exit_code == 1 and "set [auth] root_password_file first" in res.output
    assert init_root_password(NodeConfig.from_toml(_config(tmp_path, "x.pw")))[1] is True
