"""TLS for PrkDB: contexts from ``[tls]``, the accept step of both listeners,
the peer name check, reload on SIGHUP, and the client side of the SDKs.

Theory of operation
-------------------
Server. `NodeTls` builds three `ssl.SSLContext`s from ``[tls]`` at start
(`node_contexts`): the client listener's (a client certificate is optional,
or required with ``client_cert_auth``, and verified against ``ca_file``), the
peer listener's (a certificate signed by ``ca_file`` is required) and the one
this node dials its peers with (it presents the node's certificate and
requires the peer's, signed by ``ca_file``). OpenSSL checks no host name on
peer links: a peer is known by its node id, not by the address it dials
from. Instead `member_mismatch` checks, after the handshake, that the
certificate names the member (subject CN or DNS SAN ``node-<id>``): the id
of the peer's Hello on the listening side, the id dialed on the dialing
side. So a client certificate (CN = a user) can never join as a peer.

Every accepted connection goes through `NodeTls.accept` first: it peeks at
the first byte without consuming it. 0x16 opens a TLS handshake, which runs
(bounded by `HANDSHAKE_TIMEOUT`) before the connection's handler gets a
`TlsStream` (prkdb/security/stream.py: TLS over the socket at the cost of
plaintext, where `trio.SSLStream` doubled the CPU of a request). Anything
else is someone speaking plaintext to a TLS port:
a PrkDB frame (first byte 0: a length under 16 MiB) gets a plaintext
`Error` frame with ``details={"tls": "required"}`` so the client can say
"the server expects TLS"; anything else is closed. Every refusal is logged
once per (event, remote host) per minute (`LogLimiter`), with how many
were not logged since.

SIGHUP: `NodeTls.reload` builds new contexts from the same files; new
connections use them, open ones keep the ones they were made with. A file
that does not load logs ``tls_reload_failed`` and keeps the old contexts.

The raw-socket fast paths (FramedStream's and the peer link's ``os.write``,
`prkdb.netio.SocketReader`'s ``os.read``) touch the fd only of a bare
`trio.SocketStream` (`prkdb.netio.raw_fd`), so never a byte goes around
TLS; on a `TlsStream` the direct writes are its own (`TlsStream.write_nowait`:
encrypt, then ``os.write`` what the socket takes) and reads go through it.

The SDKs' side is prkdb/security/client_tls.py (no trio: the asyncio and
blocking clients use it too).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from prkdb.errors import ErrorCode, TlsError
from prkdb.security.stream import TlsStream
from prkdb.wire import encode_message
from prkdb.wire.messages import Error

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "LogLimiter",
    "NodeContexts",
    "NodeTls",
    "TlsSetupError",
    "cert_names",
    "member_mismatch",
    "node_contexts",
    "peer_common_name",
    "watch_reload_signal",
]

HANDSHAKE_TIMEOUT = 5.0  # seconds from accept (or dial) to a finished handshake (both sides)
LOG_EVERY_S = 60.0  # one log line per (event, remote host) per this many seconds
_TLS_HANDSHAKE = 0x16  # the content type of the first TLS record (a ClientHello)
_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_NODE_NAME = re.compile(r"node-(\d+)\Z")
TLS_REQUIRED_MESSAGE = ("the server expects TLS on this {port} port: connect with TLS "
                        "(prkctl --cacert FILE; tls=TlsOptions(...) in the SDKs)")


class Logger(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


class TlsSetupError(Exception):
    """A ``[tls]`` file cannot be used (missing, unreadable, not PEM, wrong key); one line."""


# -- certificates -------------------------------------------------------------------

def cert_names(cert: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    """``(subject CN, DNS SANs)`` of a certificate as `ssl.SSLSocket.getpeercert` returns it."""
    if not cert:
        return None, []
    cn = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    dns = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return cn, dns


def _describe(cert: dict[str, Any] | None) -> str:
    cn, dns = cert_names(cert)
    if cn is None and not dns:
        return "no certificate" if not cert else "a certificate naming nobody"
    members = sorted({n for n in [cn or "", *dns] if _NODE_NAME.match(n)})
    sans = f", DNS {', '.join(dns)}" if dns else ""
    who = f"member {', '.join(members)}" if members else "no member (a client certificate?)"
    return f"a certificate for {who} (CN {cn}{sans})"


def member_mismatch(cert: dict[str, Any] | None, node_id: int) -> str | None:
    """Why `cert` does not name member `node_id` (CN or DNS SAN ``node-<id>``); None if it does."""
    cn, dns = cert_names(cert)
    want = f"node-{node_id}"
    if cn == want or want in dns:
        return None
    return f"claims to be node {node_id} but presented {_describe(cert)}; expected {want}"


def peer_common_name(stream: trio.abc.Stream) -> str | None:
    """The subject CN of the other end's *verified* certificate; None without TLS or certificate.

    Unverified certificates never count: with ``verify_mode`` CERT_NONE
    `getpeercert()` is empty, and with CERT_OPTIONAL/REQUIRED a certificate
    that fails verification fails the handshake.
    """
    if not isinstance(stream, TlsStream | trio.SSLStream):
        return None
    try:
        cert = stream.getpeercert()
    except (ValueError, trio.NeedHandshakeError):
        return None
    return cert_names(cert)[0]


# -- server contexts ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeContexts:
    """What one load of ``[tls]`` made: one context per use."""

    client: ssl.SSLContext  # the client listener
    peer: ssl.SSLContext  # the peer listener (mutual TLS)
    dial: ssl.SSLContext  # this node dialing its peers (mutual TLS)


def _load(ctx: ssl.SSLContext, cert: str, key: str, ca: str, where: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TlsSetupError(f"{where}: tls.cert_file / tls.key_file: no such file: "
                            f"{e.filename or cert}") from None
    except ssl.SSLError as e:
        why = ("the key does not match the certificate" if e.reason == "KEY_VALUES_MISMATCH"
               else f"not a PEM certificate and key ({e.reason or e})")
        raise TlsSetupError(f"{where}: tls.cert_file = {cert}, tls.key_file = {key}: "
                            f"{why}") from None
    except OSError as e:
        raise TlsSetupError(f"{where}: tls.cert_file = {cert}: cannot read: {e}") from None
    if not ca:
        return
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsSetupError(f"{where}: tls.ca_file = {ca}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsSetupError(f"{where}: tls.ca_file = {ca}: not PEM certificates "
                            f"({getattr(e, 'reason', None) or e})") from None


def node_contexts(cfg: Any) -> NodeContexts:
    """Build a node's contexts from its `prkdb.config.NodeConfig` (``[tls]`` enabled).

    Raises:
        TlsSetupError: naming the config file, the setting, the file and why.
    """
    t = cfg.tls
    cert, key = str(cfg.resolve(t.cert_file)), str(cfg.resolve(t.key_file))
    ca = str(cfg.resolve(t.ca_file)) if t.ca_file else ""
    minimum = _MIN_VERSIONS[t.min_version]

    def make(protocol: int, verify: ssl.VerifyMode) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = minimum
        ctx.options |= ssl.OP_NO_RENEGOTIATION  # TlsStream relies on it (stream.py)
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False  # peers are checked by member id (module doc)
        _load(ctx, cert, key, ca, cfg.source)
        ctx.verify_mode = verify
        return ctx

    if ca:
        client_verify = ssl.CERT_REQUIRED if t.client_cert_auth else ssl.CERT_OPTIONAL
    else:
        client_verify = ssl.CERT_NONE
    return NodeContexts(
        client=make(ssl.PROTOCOL_TLS_SERVER, client_verify),
        peer=make(ssl.PROTOCOL_TLS_SERVER, ssl.CERT_REQUIRED if ca else ssl.CERT_NONE),
        dial=make(ssl.PROTOCOL_TLS_CLIENT, ssl.CERT_REQUIRED if ca else ssl.CERT_NONE),
    )


def _reason(exc: BaseException) -> str:
    """The OpenSSL reason behind a failed handshake, as a short phrase."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return (cause.reason or str(cause)).lower().replace("_", " ")
    if isinstance(exc, trio.TooSlowError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


def _remote(stream: trio.SocketStream) -> tuple[str, str]:
    """(host, host:port) of the other end of a raw stream ("?" if unknown)."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, ValueError, TypeError):
        return "?", "?"
    return host, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


class LogLimiter:
    """Allows one log line per (event, key) per `period` seconds (trio time); counts the rest."""

    def __init__(self, period: float = LOG_EVERY_S) -> None:
        self.period = period
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def allow(self, event: str, key: str) -> int | None:
        """None: do not log; else log, with this many lines suppressed since the last one."""
        now = trio.current_time()
        k = (event, key)
        last = self._last.get(k)
        if last is not None and now - last < self.period:
            self._suppressed[k] = self._suppressed.get(k, 0) + 1
            return None
        if len(self._last) > 4096:  # bounded: forget keys quiet for a period
            for old in [x for x, t in self._last.items() if now - t >= self.period]:
                del self._last[old]
                self._suppressed.pop(old, None)
        self._last[k] = now
        return self._suppressed.pop(k, 0)


Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class NodeTls:
    """A node's TLS: current contexts, the accept step, peer dialing and checks, reload."""

    def __init__(self, cfg: Any, log: Logger) -> None:
        """Load ``[tls]`` of `cfg` (a `prkdb.config.NodeConfig`).

        Raises:
            TlsSetupError: a file cannot be used.
        """
        self.cfg = cfg
        self.log = log
        self.contexts = node_contexts(cfg)
        self.limiter = LogLimiter()
        self.reloads = 0

    def reload(self) -> bool:
        """Load the files again for new connections; on failure log and keep the old contexts."""
        try:
            contexts = node_contexts(self.cfg)
        except TlsSetupError as e:
            self.log.error("tls_reload_failed", error=str(e),
                           detail="kept the certificates loaded before")
            return False
        self.contexts = contexts
        self.reloads += 1
        self.log.info("tls_reloaded", cert_file=self.cfg.tls.cert_file,
                      ca_file=self.cfg.tls.ca_file)
        return True

    def warn(self, event: str, host: str, **kw: Any) -> None:
        """Log `event` as a warning unless it was logged for `host` within the last minute."""
        suppressed = self.limiter.allow(event, host)
        if suppressed is not None:
            if suppressed:
                kw["suppressed"] = suppressed
            self.log.warning(event, **kw)

    # -- listening side -------------------------------------------------------------

    def wrap(self, handler: Handler, port: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
        """`handler` behind the accept step of `port` ("client" or "peer")."""

        async def handle(stream: trio.SocketStream) -> None:
            tls = await self.accept(stream, port)
            if tls is not None:
                await handler(tls)

        return handle

    async def accept(self, stream: trio.SocketStream, port: str) -> TlsStream | None:
        """TLS-handshaken `stream`, or None (refused, logged and closed): see the module doc."""
        host, remote = _remote(stream)
        first = b""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                first = await stream.socket.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
        if not first:  # closed, reset or silent: nothing worth a line
            await trio.aclose_forcefully(stream)
            return None
        if first[0] != _TLS_HANDSHAKE:
            self.warn("plaintext_on_tls_port", host, port=port, remote=remote,
                      reason=f"a client spoke plaintext to the TLS {port} port; closed")
            if first == b"\x00":  # a PrkDB frame: tell it in words it can read
                err = Error(0, ErrorCode.BAD_REQUEST, TLS_REQUIRED_MESSAGE.format(port=port),
                            {"tls": "required"})
                with trio.move_on_after(1), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await stream.send_all(encode_message(err))
            await trio.aclose_forcefully(stream)
            return None
        ctx = self.contexts.peer if port == "peer" else self.contexts.client
        tls = TlsStream(stream, ctx, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()  # sends the alert if it fails
        except (trio.BrokenResourceError, trio.TooSlowError, trio.ClosedResourceError,
                OSError) as e:
            self.warn("tls_handshake_failed", host, port=port, remote=remote,
                      reason=_reason(e))
            await trio.aclose_forcefully(tls)
            return None
        return tls

    def member_refusal(self, stream: trio.abc.Stream, node_id: int, remote: str) -> str | None:
        """Peer listener: why `stream`'s certificate does not name `node_id` (logged)."""
        if not isinstance(stream, TlsStream):
            return "the peer did not use TLS"
        why = member_mismatch(stream.getpeercert(), node_id)
        if why is not None:
            self.warn("peer_certificate_refused", remote.rsplit(":", 1)[0], remote=remote,
                      claimed=node_id, reason=f"the peer at {remote} {why}")
        return why

    # -- dialing side ---------------------------------------------------------------

    async def dial(self, stream: trio.SocketStream, peer_id: int,
                   addr: str) -> TlsStream:
        """Handshake as a client on a dialed `stream` to member `peer_id`, and check its name.

        Raises:
            TlsError: the handshake failed, or the certificate names another member
                (logged; `stream` is closed).
        """
        tls = TlsStream(stream, self.contexts.dial, server_side=False)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, trio.ClosedResourceError,
                OSError) as e:
            await trio.aclose_forcefully(tls)
            failed = _reason(e)
            self.warn("peer_tls_failed", addr, peer=peer_id, addr=addr, reason=failed)
            raise TlsError(f"TLS with node {peer_id} at {addr} failed: {failed}") from None
        mismatch = member_mismatch(tls.getpeercert(), peer_id)
        if mismatch is not None:
            await trio.aclose_forcefully(tls)
            self.warn("peer_certificate_refused", addr, peer=peer_id, addr=addr,
                      reason=f"the node at {addr} {mismatch}")
            raise TlsError(f"the node at {addr} {mismatch}")
        return tls


async def watch_reload_signal(tls: NodeTls | None, log: Logger) -> None:
    """Reload the certificates on every SIGHUP (logged and ignored without ``[tls]``)."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("received_signal", signal="SIGHUP")
            if tls is None:
                log.info("tls_reload_skipped", reason="no [tls] in the configuration")
            else:
                tls.reload()
