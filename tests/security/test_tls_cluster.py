"""TLS with real `prkdb` processes: a 3-node cluster with [tls] on both listeners, and
one plaintext node. Each bad input gets a clear error on the client side, one log
line on the node, and the cluster keeps serving.

Log lines are limited to one per (event, remote host) per minute, and every
connection here comes from 127.0.0.1, so each test looks for its line on a
node no other test sent the same kind of refusal to.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from prkdb.client import PrkDbClient, SyncClient
from prkdb.client.aio import AsyncClient
from prkdb.client.security import TlsOptions
from prkdb.errors import TlsError
from prkdb.security.certs import CertAuthority, CertFiles
from prkdb.wire import NEED_DATA, PEER_PROTOCOL_VERSION, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import ROLE_PEER, Error, Hello
from tests.integration.cluster import CLUSTER_ID, LocalCluster
from tests.security.tlscluster import TlsCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    c = TlsCluster(Path(tempfile.mkdtemp(prefix="prk-T-cluster-")), 3)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def plain() -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tempfile.mkdtemp(prefix="prk-T-plain-")), 1)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()


def still_serves(c: TlsCluster, key: bytes = b"alive") -> None:
    with SyncClient(c.seeds, tls=c.options(), timeout=10) as db:
        db.put(key, b"yes")
        assert db.get(key) == b"yes"


def wait_log(c: LocalCluster, i: int, text: str, count: int = 1, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while c.log(i).count(text) < count:
        assert time.monotonic() < deadline, f"node {i} never logged {text!r}"
        time.sleep(0.05)
    return next(line for line in c.log(i).splitlines() if text in line)


def trio_run(fn: Any) -> Any:
    return trio.run(fn)


# -- what works -----------------------------------------------------------------------

def test_every_front_end_and_prkctl_over_tls(cluster: TlsCluster) -> None:
    async def trio_main() -> bytes | None:
        async with PrkDbClient.connect(cluster.seeds, tls=cluster.options()) as db:
            await db.put(b"tls/trio", b"1")
            return await db.get(b"tls/trio")

    assert trio.run(trio_main) == b"1"

    async def aio_main() -> bytes | None:
        async with AsyncClient.connect(cluster.seeds,
                                       tls=cluster.options(with_cert=False)) as db:
            await db.put(b"tls/aio", b"2")
            return await db.get(b"tls/aio")

    assert asyncio.run(aio_main()) == b"2"
    with SyncClient(cluster.seeds, tls=cluster.options()) as db:
        db.put(b"tls/sync", b"3")
        assert db.get(b"tls/sync") == b"3"
        big = b"v" * 100_000  # several TLS records per answer
        db.put(b"tls/big", big)
        assert db.get(b"tls/big") == big
        cursor = db.watch_cursor(b"tls/w/")
        with db.watch(b"tls/w/", cursor=cursor) as w:
            db.put(b"tls/w/a", big)
            db.put(b"tls/w/b", b"x")
            got = []
            for ev in w:
                got.append(ev.key)
                if len(got) == 2:
                    break
        assert sorted(got) == [b"tls/w/a", b"tls/w/b"]  # two partitions: any order
    env = dict(os.environ, PRKCTL_CACERT=str(cluster.ca_file),
               PRKCTL_CERT=str(cluster.client_cert.cert_file),
               PRKCTL_KEY=str(cluster.client_cert.key_file))
    seeds = ",".join(cluster.seeds)
    out = subprocess.run([sys.executable, "-m", "prkctl", "--seeds", seeds, "get", "tls/sync"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "3"), out.stderr
    for i in cluster.ids:  # peer links are TLS: nothing plaintext was refused
        assert "plaintext_on_tls_port" not in cluster.log(i)
        assert "peer_connected" in cluster.log(i)


# -- bad input ------------------------------------------------------------------------

def test_wrong_ca(cluster: TlsCluster, tmp_path: Path) -> None:
    other = CertAuthority("another CA").write(tmp_path, "other")

    async def main() -> None:
        async with PrkDbClient.connect(cluster.seeds[:1], tls=TlsOptions(str(other)),
                                       timeout=5):
            pass

    with pytest.raises(TlsError, match="the server's certificate was refused"):
        trio.run(main)
    line = wait_log(cluster, 1, "tls_handshake_failed")
    assert "unknown ca" in line  # the client's alert tells the node why
    still_serves(cluster, b"after-wrong-ca")


def test_expired_client_certificate(cluster: TlsCluster, tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = cluster.ca.issue_client("bob", not_before=past - datetime.timedelta(days=9),
                                      not_after=past).write(tmp_path, "bob")
    opts = TlsOptions(str(cluster.ca_file), str(expired.cert_file), str(expired.key_file))
    with pytest.raises(TlsError, match=r"refused the TLS handshake: .*certificate expired"):
        SyncClient(cluster.seeds[1:2], tls=opts, timeout=5)
    line = wait_log(cluster, 2, "tls_handshake_failed")
    assert "certificate has expired" in line
    still_serves(cluster, b"after-expired")


def _peer_hello(cluster: TlsCluster, i: int, cert: CertFiles | None, claim: int) -> Any:
    """Say a peer Hello claiming `claim` to node i's peer port, over TLS with `cert`."""
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    raw = socket.create_connection(("127.0.0.1", cluster.peer_ports[i - 1]), timeout=5)
    with ctx.wrap_socket(raw) as sock:
        sock.sendall(encode_message(Hello(PEER_PROTOCOL_VERSION, CLUSTER_ID, ROLE_PEER, claim)))
        decoder = FrameDecoder()
        while (item := decoder.next_frame()) is NEED_DATA:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            decoder.receive_data(data)
        return from_wire(item)


def test_a_peer_certificate_naming_another_id(cluster: TlsCluster) -> None:
    reply = _peer_hello(cluster, 1, cluster.node_certs[2], claim=3)
    assert isinstance(reply, Error)
    assert "claims to be node 3" in reply.message and "node-2" in reply.message
    line = wait_log(cluster, 1, "peer_certificate_refused")
    assert "claimed=3" in line and "node-2" in line and "expected node-3" in line
    still_serves(cluster, b"after-wrong-peer")


def test_a_client_certificate_cannot_join_as_a_peer(cluster: TlsCluster) -> None:
    reply = _peer_hello(cluster, 2, cluster.client_cert, claim=3)
    assert isinstance(reply, Error)
    assert "no member (a client certificate?)" in reply.message
    assert "CN alice" in wait_log(cluster, 2, "peer_certificate_refused")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # and none at all: no handshake
        _peer_hello(cluster, 3, None, claim=1)
    assert "certificate" in wait_log(cluster, 3, "tls_handshake_failed")
    still_serves(cluster, b"after-client-as-peer")


def test_plaintext_to_a_tls_port(cluster: TlsCluster) -> None:
    for _ in range(3):
        with pytest.raises(TlsError, match="the server expects TLS"):
            SyncClient(cluster.seeds[2:], timeout=5)
    line = wait_log(cluster, 3, "plaintext_on_tls_port")
    assert "port=client" in line
    time.sleep(0.2)
    assert cluster.log(3).count("plaintext_on_tls_port") == 1  # once a minute per host
    still_serves(cluster, b"after-plaintext")


def test_tls_to_a_plaintext_port(plain: LocalCluster, cluster: TlsCluster) -> None:
    async def main() -> None:
        async with AsyncClient.connect(plain.seeds, tls=cluster.options(), timeout=5):
            pass

    with pytest.raises(TlsError, match="the server does not speak TLS"):
        asyncio.run(main())
    assert "tls_on_plaintext_port" in wait_log(plain, 1, "tls_on_plaintext_port")
    with SyncClient(plain.seeds) as db:  # and it still serves plaintext
        db.put(b"k", b"v")


def test_sighup_reloads_and_keeps_the_old_certificate_on_a_bad_file(cluster: TlsCluster) -> None:
    files = cluster.node_certs[3]
    good_cert, good_key = files.cert_file.read_bytes(), files.key_file.read_bytes()
    node3 = cluster.seeds[2:]
    pid = cluster.procs[3].pid
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    try:
        expired = cluster.ca.issue_node(3, not_before=past - datetime.timedelta(days=9),
                                        not_after=past)
        files.cert_file.write_bytes(expired.cert_pem)
        files.key_file.write_bytes(expired.key_pem)
        os.kill(pid, signal.SIGHUP)
        wait_log(cluster, 3, "tls_reloaded")
        with pytest.raises(TlsError, match="certificate has expired"):
            SyncClient(node3, tls=cluster.options(), timeout=5)
        files.cert_file.write_text("garbage\n")
        os.kill(pid, signal.SIGHUP)
        assert "node3.crt" in wait_log(cluster, 3, "tls_reload_failed")
        with pytest.raises(TlsError, match="certificate has expired"):  # kept the last good
            SyncClient(node3, tls=cluster.options(), timeout=5)
    finally:
        files.cert_file.write_bytes(good_cert)
        files.key_file.write_bytes(good_key)
        os.kill(pid, signal.SIGHUP)
    wait_log(cluster, 3, "tls_reloaded", count=2)
    with SyncClient(node3, tls=cluster.options(), timeout=10) as db:
        db.put(b"after-reload", b"1")
    assert cluster.alive(3)
    still_serves(cluster, b"after-reload-all")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_fuzzed_handshakes_leave_the_node_serving(cluster: TlsCluster) -> None:
    """Damaged ClientHellos and random records on both TLS ports: no crash, bounded memory."""
    import random

    rng = random.Random(18)
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(bio_in, bio_out, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = bio_out.read()  # a real ClientHello to damage
    pid = cluster.procs[1].pid
    before = _rss_mb(pid)
    for i in range(300):
        port = (cluster.client_ports if i % 2 else cluster.peer_ports)[0]
        data = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 5 == 0:
            data = data[:rng.randint(1, len(data))]  # cut short
        if i % 7 == 0:  # a record header announcing a huge body
            data = bytearray(b"\x16\x03\x03\xff\xff") + rng.randbytes(rng.randint(0, 2000))
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(bytes(data))
            s.shutdown(socket.SHUT_WR)
            s.settimeout(2)
            with contextlib.suppress(OSError):
                while s.recv(65536):
                    pass
    assert cluster.alive(1)
    still_serves(cluster, b"after-fuzz")
    assert _rss_mb(pid) - before < 50


def test_a_restarted_node_catches_up_over_tls(cluster: TlsCluster) -> None:
    """kill -9 a node, write without it, start it again: its peers' TLS links come back."""
    cluster.kill(2)
    with SyncClient([cluster.seeds[0], cluster.seeds[2]], tls=cluster.options(),
                    timeout=15) as db:
        for i in range(50):
            db.put(b"while-down/%d" % i, b"v")
        target = {p.partition: p.commit for p in cluster.status(1).partitions}
    cluster.start(2)
    deadline = time.monotonic() + 20
    while True:
        try:
            mine = {p.partition: p.applied for p in cluster.status(2).partitions}
        except (OSError, ConnectionError, AssertionError):
            mine = {}
        if mine and all(mine[p] >= c for p, c in target.items()):
            break
        assert time.monotonic() < deadline, f"node 2 applied {mine}, wanted {target}"
        time.sleep(0.1)
    assert "peer_connected" in cluster.log(2)
    with SyncClient(cluster.seeds[1:2], tls=cluster.options(), timeout=10) as db:
        db.put(b"after-restart", b"1")
