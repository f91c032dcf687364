"""Client-certificate identity (issue 18): with [tls] client_cert_auth and [auth] on, the
verified certificate's common name is the connection's user, no login needed."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prkdb.client import PermissionDenied, PrkDbClient
from prkdb.errors import ErrorCode
from prkdb.partitioning import partition_for
from prkdb.state.kv import prefix_end
from prkdb.wire.messages import (
    AdminOk,
    AuthOk,
    Error,
    Get,
    GetOk,
    Login,
    Perm,
    Put,
    ReadConsistency,
    RebuildFence,
    RoleAdd,
    RoleGrant,
    UserAdd,
    WriteOk,
)
from tests.security.test_auth_cluster import ROOT_PW, _poll, _until, auth_section
from tests.security.tlscluster import TlsCluster, TlsWireConn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    root = Path(tempfile.mkdtemp(prefix="prk-A-authtls-"))
    pw = root / "root.pw"
    pw.write_text(ROOT_PW + "\n")
    c = TlsCluster(root, 1, client_cert_auth=True, partitions=2, extra=auth_section(pw))
    try:
        c.start_all()
        c.wait_ready()
        _until(lambda: "auth_root_created" in c.log(1))
        # root logs in with its password over TLS (its certificate says alice: the login
        # binds root instead).
        admin = TlsWireConn(c.client_ports[0], c.ca_file, cert=c.client_cert)
        assert isinstance(admin.call(Login(1, "root", ROOT_PW)), AuthOk)
        for i, msg in enumerate((RoleAdd(0, "app", 77, 1),
                                 RoleGrant(0, "app", b"app/", prefix_end(b"app/"),
                                           Perm.READWRITE, 77, 2),
                                 UserAdd(0, "alice", None, ("app",), 77, 3)), 2):
            reply = admin.call(_with_id(msg, i))
            assert isinstance(reply, AdminOk), reply
        admin.close()
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def _with_id(msg: Any, rid: int) -> Any:
    return dataclasses.replace(msg, request_id=rid)


def test_the_certificate_names_the_user(cluster: TlsCluster) -> None:
    conn = TlsWireConn(cluster.client_ports[0], cluster.ca_file, cert=cluster.client_cert)
    assert isinstance(_poll(lambda: conn.call(Put(1, b"app/1", b"v", 9, 1)),
                            lambda r: not isinstance(r, Error) or r.code != 1), WriteOk)
    got = conn.call(Get(2, b"app/1", ReadConsistency.STALE, _part(b"app/1")))
    assert isinstance(got, GetOk) and got.value == b"v"
    denied = conn.call(Put(3, b"other", b"v", 9, 2))
    assert isinstance(denied, Error) and denied.code == ErrorCode.PERMISSION_DENIED
    assert "user 'alice'" in denied.message
    # alice has no password: a login as alice fails, the certificate still counts.
    assert isinstance(conn.call(Login(4, "alice", "")), Error)
    conn.close()


def test_a_certificate_of_an_unknown_user_is_unauthenticated(cluster: TlsCluster) -> None:
    cert = cluster.ca.issue_client("mallory").write(cluster.certs, "mallory")
    conn = TlsWireConn(cluster.client_ports[0], cluster.ca_file, cert=cert)
    reply = conn.call(Get(1, b"app/1", ReadConsistency.STALE, _part(b"app/1")))
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNAUTHENTICATED
    assert "user 'mallory' does not exist" in reply.message
    conn.close()


def test_a_node_certificate_may_fence_itself_only(cluster: TlsCluster) -> None:
    conn = TlsWireConn(cluster.client_ports[0], cluster.ca_file, cert=cluster.node_certs[1])
    reply = conn.call(RebuildFence(1, 1))  # auth lets it through; the service refuses it
    assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST, reply
    assert "not another member" in reply.message
    conn.close()


async def test_the_sdk_with_a_certificate_and_no_credentials(cluster: TlsCluster) -> None:
    async with PrkDbClient.connect(cluster.seeds, tls=cluster.options(), timeout=10) as db:
        await db.put(b"app/sdk", b"1")
        assert await db.get(b"app/sdk") == b"1"
        with pytest.raises(PermissionDenied):
            await db.get(b"secret")


def _part(key: bytes) -> int:
    return partition_for(key, 2, "hashtag")
