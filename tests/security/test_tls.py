"""TLS pieces in one process: contexts, names, reload, the accept step, the dialer's check,
FramedStream over TLS (no byte around the TLS stream), the SDK's error classes.

Real sockets on 127.0.0.1 (TLS needs them), certificates from prkdb.security.certs.
"""

from __future__ import annotations

import datetime
import functools
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from prkdb.client.attempt import hello_node_id
from prkdb.client.connection import tls_handshake
from prkdb.client.security import TlsOptions
from prkdb.config import NodeConfig
from prkdb.errors import TlsError
from prkdb.netio import raw_fd
from prkdb.security.certs import CertAuthority, CertFiles
from prkdb.security.client_tls import ClientTls, tls_failure
from prkdb.security.tls import (
    LogLimiter,
    NodeTls,
    TlsSetupError,
    member_mismatch,
)
from prkdb.server.framed import FramedStream, ReplyOutbox
from prkdb.wire import NEED_DATA, FrameDecoder, RemoteProtocolError, encode_message, from_wire
from prkdb.wire.messages import Error, Status


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.lines.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._add("error", event, **kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for _, event, kw in self.lines if event == name]


@dataclass
class Pki:
    dir: Path
    ca: CertAuthority
    ca_file: Path
    nodes: dict[int, CertFiles]
    alice: CertFiles

    def config(self, node_id: int = 1, **tls: Any) -> NodeConfig:
        c = self.nodes[node_id]
        section = {"cert_file": str(c.cert_file), "key_file": str(c.key_file),
                   "ca_file": str(self.ca_file), **tls}
        peers = [{"id": i, "client": f"127.0.0.1:{7000 + i}", "peer": f"127.0.0.1:{7100 + i}"}
                 for i in (1, 2, 3)]
        return NodeConfig.from_dict({"node": {"id": node_id}, "peers": peers, "tls": section})


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    d = Path(tempfile.mkdtemp(prefix="prk-T-pki-"))
    ca = CertAuthority("test CA")
    yield Pki(d, ca, ca.write(d), {i: ca.issue_node(i).write(d, f"node{i}") for i in (1, 2, 3)},
              ca.issue_client("alice").write(d, "alice"))


def _cert_dict(files: CertFiles) -> dict[str, Any]:
    # getpeercert()'s dict form of a PEM file, by the stdlib's own decoder.
    return ssl._ssl._test_decode_cert(str(files.cert_file))  # type: ignore[attr-defined,no-any-return]


# -- names --------------------------------------------------------------------------

def test_a_certificate_names_its_member_only(pki: Pki) -> None:
    node2 = _cert_dict(pki.nodes[2])
    assert member_mismatch(node2, 2) is None
    why = member_mismatch(node2, 3)
    assert why is not None
    assert "claims to be node 3" in why and "member node-2" in why and "expected node-3" in why
    alice = member_mismatch(_cert_dict(pki.alice), 2)
    assert alice is not None and "no member (a client certificate?)" in alice
    assert "CN alice" in alice
    assert member_mismatch(None, 1) is not None


# -- contexts -----------------------------------------------------------------------

def test_contexts_follow_the_settings(pki: Pki) -> None:
    tls = NodeTls(pki.config(1), RecordingLog())
    assert tls.contexts.client.verify_mode == ssl.CERT_OPTIONAL
    assert tls.contexts.peer.verify_mode == ssl.CERT_REQUIRED
    assert tls.contexts.dial.verify_mode == ssl.CERT_REQUIRED
    assert tls.contexts.client.minimum_version == ssl.TLSVersion.TLSv1_2
    strict = NodeTls(pki.config(1, client_cert_auth=True, min_version="1.3"), RecordingLog())
    assert strict.contexts.client.verify_mode == ssl.CERT_REQUIRED
    assert strict.contexts.peer.minimum_version == ssl.TLSVersion.TLSv1_3


def test_unusable_files_are_named(pki: Pki, tmp_path: Path) -> None:
    cfg = pki.config(1)
    t = cfg.tls
    with pytest.raises(TlsSetupError, match="no such file"):
        NodeTls(cfg.replace(tls=type(t)(str(tmp_path / "nope.crt"), t.key_file, t.ca_file)),
                RecordingLog())
    with pytest.raises(TlsSetupError, match="the key does not match the certificate"):
        NodeTls(cfg.replace(tls=type(t)(t.cert_file, str(pki.nodes[2].key_file), t.ca_file)),
                RecordingLog())
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsSetupError, match=r"tls.ca_file = .*junk.pem"):
        NodeTls(cfg.replace(tls=type(t)(t.cert_file, t.key_file, str(junk))), RecordingLog())


def test_reload_takes_new_files_and_keeps_the_old_on_failure(pki: Pki, tmp_path: Path) -> None:
    ca = CertAuthority("reload CA")
    files = ca.issue_node(1).write(tmp_path, "n1")
    ca_file = ca.write(tmp_path)
    cfg = NodeConfig.from_dict({"tls": {"cert_file": str(files.cert_file),
                                        "key_file": str(files.key_file),
                                        "ca_file": str(ca_file)}})
    log = RecordingLog()
    tls = NodeTls(cfg, log)
    first = tls.contexts
    ca.issue_node(1).write(tmp_path, "n1")  # rotated in place
    assert tls.reload() and tls.contexts is not first and log.events("tls_reloaded")
    second = tls.contexts
    files.cert_file.write_text("garbage\n")
    assert not tls.reload()
    assert tls.contexts is second  # new connections keep using the last good ones
    (failed,) = log.events("tls_reload_failed")
    assert "n1.crt" in failed["error"]


async def test_log_limiter_once_a_minute_per_key(autojump_clock: trio.testing.MockClock) -> None:
    lim = LogLimiter(60)
    assert lim.allow("ev", "10.0.0.1") == 0
    assert lim.allow("ev", "10.0.0.1") is None
    assert lim.allow("ev", "10.0.0.2") == 0  # another host
    assert lim.allow("other", "10.0.0.1") == 0  # another event
    await trio.sleep(61)
    assert lim.allow("ev", "10.0.0.1") == 1  # one suppressed since


# -- over real sockets ----------------------------------------------------------------

async def _serve(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_framed_stream_over_tls_never_writes_around_it(pki: Pki) -> None:
    """Replies flushed by the outbox (the direct-write path) reach a TLS client intact."""
    log = RecordingLog()
    tls = NodeTls(pki.config(1), log)
    outbox = ReplyOutbox()
    seen: dict[str, Any] = {}

    async def handler(stream: trio.abc.Stream) -> None:
        framed = FramedStream(stream, 1 << 20, outbox=outbox)
        seen["fd"] = raw_fd(stream)
        seen["cn"] = framed.peer_common_name
        seen["remote"] = framed.remote_address
        async with trio.open_nursery() as n:
            n.start_soon(framed.run_writer)
            await framed.receive()
            for i in range(200):  # more than a socket buffer, flushed as the RaftLoop does
                framed.send_nowait(Error(i, 4, "x" * 1000))
                if i % 50 == 49:
                    outbox.flush()
            outbox.flush()
            await framed.aclose(flush_timeout=5)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, tls.wrap(handler, "client"))
        for opts, cn in ((TlsOptions(str(pki.ca_file), str(pki.alice.cert_file),
                                     str(pki.alice.key_file)), "alice"),
                         (TlsOptions(str(pki.ca_file)), None)):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            client = await tls_handshake(raw, ClientTls(opts), "node1", "127.0.0.1")
            await client.send_all(encode_message(Status(1)))
            decoder, got = FrameDecoder(), 0
            while got < 200:
                if decoder.next_frame() is NEED_DATA:
                    data = await client.receive_some(65536)
                    assert data, f"closed after {got} replies"
                    decoder.receive_data(data)
                    continue
                got += 1
            await client.aclose()
            assert seen["fd"] == -1 and seen["cn"] == cn
            assert seen["remote"].startswith("127.0.0.1:")
        nursery.cancel_scope.cancel()


async def test_the_dialer_refuses_a_node_that_names_another_member(pki: Pki) -> None:
    """Dialing node 3, node 2's certificate answers: refused, logged once a minute."""
    server_log, dial_log = RecordingLog(), RecordingLog()
    node2 = NodeTls(pki.config(2), server_log)
    dialer = NodeTls(pki.config(1), dial_log)

    async def handler(stream: trio.abc.Stream) -> None:
        await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, node2.wrap(handler, "peer"))
        for _ in range(2):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            with pytest.raises(TlsError) as info:
                await dialer.dial(raw, 3, f"127.0.0.1:{port}")
            assert "claims to be node 3" in info.value.message
            assert "member node-2" in info.value.message
        (line,) = dial_log.events("peer_certificate_refused")  # the second was not logged
        assert line["peer"] == 3 and "node-2" in line["reason"]
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        ok = await dialer.dial(raw, 2, f"127.0.0.1:{port}")  # the id it names: fine
        await ok.aclose()
        nursery.cancel_scope.cancel()


async def test_the_accept_step_answers_plaintext_in_words(pki: Pki) -> None:
    """A PrkDB frame on a TLS port gets an Error saying so; the SDK makes it a TlsError."""
    log = RecordingLog()
    tls = NodeTls(pki.config(1), log)
    served = []

    async def handler(stream: trio.abc.Stream) -> None:
        served.append(stream)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, tls.wrap(handler, "client"))
        for _ in range(3):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            await raw.send_all(encode_message(Status(1)))
            decoder = FrameDecoder()
            while (item := decoder.next_frame()) is NEED_DATA:
                decoder.receive_data(await raw.receive_some(4096))
            await raw.aclose()
        err = from_wire(item)
        assert isinstance(err, Error) and err.details == {"tls": "required"}
        assert "the server expects TLS" in err.message
        with pytest.raises(TlsError, match="the server expects TLS"):
            hello_node_id(f"127.0.0.1:{port}", err)
        assert not served
        assert len(log.events("plaintext_on_tls_port")) == 1  # once a minute per host
        nursery.cancel_scope.cancel()


async def test_tls_to_a_plaintext_port_is_named_on_both_sides(pki: Pki) -> None:
    """The server's decoder says 'TLS handshake'; the client's TLS says 'does not speak TLS'."""

    async def plaintext_server(stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder()
        decoder.receive_data(await stream.receive_some(4096))
        try:
            decoder.next_frame()
        except RemoteProtocolError as e:
            assert e.details == {"tls": "client_hello"}
            await stream.send_all(encode_message(Error(0, int(e.code), e.message)))

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, plaintext_server)
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(TlsError, match="the server does not speak TLS"):
            await tls_handshake(raw, ClientTls(TlsOptions(str(pki.ca_file))), "n", "127.0.0.1")
        nursery.cancel_scope.cancel()


async def test_a_wrong_ca_and_an_expired_certificate_are_told_apart(pki: Pki,
                                                                    tmp_path: Path) -> None:
    other = CertAuthority("another CA")
    other_ca = other.write(tmp_path, "other")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    expired = pki.ca.issue_client("bob", not_before=past - datetime.timedelta(days=1),
                                  not_after=past).write(tmp_path, "bob")
    log = RecordingLog()
    tls = NodeTls(pki.config(1), log)

    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some(1)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, tls.wrap(handler, "client"))
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(TlsError, match=r"the server's certificate was refused: self-signed"):
            await tls_handshake(raw, ClientTls(TlsOptions(str(other_ca))), "n", "127.0.0.1")
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        bob = ClientTls(TlsOptions(str(pki.ca_file), str(expired.cert_file),
                                   str(expired.key_file)))
        client = await tls_handshake(raw, bob, "n", "127.0.0.1")
        with pytest.raises(trio.BrokenResourceError) as info:  # TLS 1.3: the alert comes now
            await client.send_all(b"\0\0\0\1\0")
            await client.receive_some(10)
        refused = tls_failure("n", info.value)
        assert refused is not None and "certificate expired" in refused.message
        await trio.sleep(0.1)
        reasons = [kw["reason"] for kw in log.events("tls_handshake_failed")]
        assert any("unknown ca" in r for r in reasons), reasons  # the client's alert
        nursery.cancel_scope.cancel()


def test_frames_name_tls_records() -> None:
    for head, kind in ((b"\x16\x03\x01\x02\x00", "client_hello"),
                       (b"\x15\x03\x03\x00\x02", "record")):
        d = FrameDecoder(max_frame=1 << 20)
        d.receive_data(head)
        with pytest.raises(RemoteProtocolError) as info:
            d.next_frame()
        assert info.value.details == {"tls": kind}


async def test_the_sdk_checks_the_name_it_dialed_or_server_name(pki: Pki) -> None:
    """Node certificates name node-<id>, localhost and 127.0.0.1; anything else is refused."""
    tls = NodeTls(pki.config(1), RecordingLog())

    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some(1)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, tls.wrap(handler, "client"))
        for name, ok in (("", True), ("node-1", True), ("localhost", True),
                         ("node-2", False), ("db.example.net", False)):
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            client = ClientTls(TlsOptions(str(pki.ca_file), server_name=name))
            if ok:
                stream = await tls_handshake(raw, client, "n", "127.0.0.1")
                await stream.aclose()
            else:
                with pytest.raises(TlsError, match="certificate was refused: Hostname mismatch"):
                    await tls_handshake(raw, client, "n", "127.0.0.1")
        nursery.cancel_scope.cancel()
