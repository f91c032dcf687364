"""The node's listen addresses, bound before anything else happens.

`prkdb serve` binds its client and peer addresses first, before it logs,
creates the data dir or preallocates a WAL segment: a taken port is then one
line naming the address and the setting, and nothing is left behind.

The sockets are bound here but `listen()` is called only when the node is
ready to serve (`open_listeners`), so a client that connects while the WAL
is replayed is refused at once (and tries another seed) instead of waiting
in the kernel's accept queue. With SO_REUSEADDR (needed to restart next to
the old process's TIME_WAIT connections) Linux lets two sockets bind one
address while neither listens, so two nodes started at the same instant
can both get past the bind; the second then fails at `listen()` with the
same message.

Safe defaults (issue 18): `exposure` names the listen addresses that are not
loopback. `prkdb serve` refuses to listen there unless ``[tls]`` and
``[auth] enabled`` are both set (anyone who reaches the port could
otherwise read and write every key and send admin requests), or the
config says ``[node] insecure = true`` in so many words (then it logs
``insecure_listeners`` at start).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

import trio

from prkdb.config import NodeConfig, parse_addr

__all__ = ["BoundAddresses", "ListenError", "bind_addresses", "exposure", "exposure_refusal",
           "open_listeners"]

_BACKLOG = 0xFFFF  # as trio.open_tcp_listeners; the kernel caps it at somaxconn


class ListenError(Exception):
    """A listen address cannot be used (taken, not local, no permission); one line."""


@dataclass
class BoundAddresses:
    """The node's bound (not yet listening) sockets; `what` names the setting of each."""

    client: list[socket.socket]
    peer: list[socket.socket]
    client_what: str
    peer_what: str

    def close(self) -> None:
        for s in (*self.client, *self.peer):
            s.close()


def _setting(cfg: NodeConfig, kind: str) -> str:
    """Where the address of `kind` ("client", "peer") comes from, for messages."""
    where = "" if cfg.source.startswith("<") else f" in {cfg.source}"
    return f"peers[id={cfg.node_id}].{kind}{where} / --{kind}-listen"


def _reason(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host: {e.strerror or e}"
    match e.errno:
        case errno.EADDRINUSE:
            return "address already in use; is another prkdb running?"
        case errno.EADDRNOTAVAIL:
            return "not an address of this machine"
        case errno.EACCES:
            return "permission denied (ports below 1024 need privileges)"
    return e.strerror or str(e)


def _fail(addr: str, what: str, e: OSError) -> ListenError:
    return ListenError(f"cannot listen on {addr} ({what}): {_reason(e)}")


def _bind(addr: str, what: str) -> list[socket.socket]:
    """Bind one socket per local address `addr` resolves to (as trio does)."""
    host, port = parse_addr(addr)
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        seen = set()
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(sockaddr)
    except OSError as e:
        for s in socks:
            s.close()
        raise _fail(addr, what, e) from None
    return socks


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) means this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False  # unresolvable: the bind says so
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def exposure(cfg: NodeConfig) -> list[str]:
    """This node's listen addresses reachable from other machines, as "addr (setting)"."""
    me = cfg.me
    return [f"{addr} ({_setting(cfg, kind)})"
            for kind, addr in (("client", me.client_addr), ("peer", me.peer_addr))
            if not _is_loopback(parse_addr(addr)[0])]


def exposure_refusal(cfg: NodeConfig) -> str | None:
    """Why `prkdb serve` must not start with `cfg` (module doc), or None."""
    if cfg.insecure or (cfg.tls.enabled and cfg.auth.enabled):
        return None
    exposed = exposure(cfg)
    if not exposed:
        return None
    missing = " and ".join(what for what, on in (("TLS ([tls])", cfg.tls.enabled),
                                                 ("auth ([auth] enabled)", cfg.auth.enabled))
                           if not on)
    return (f"it would listen on {', '.join(exposed)} without {missing}: anyone who reaches "
            "it could read and write every key. Set [tls] and [auth] enabled = true, or "
            "[node] insecure = true to accept that (a trusted network only)")


def bind_addresses(cfg: NodeConfig) -> BoundAddresses:
    """Bind this node's client and peer addresses (peer first, as the node opens them).

    Raises:
        ListenError: naming the address, the setting and the reason.
    """
    me = cfg.me
    peer_what = _setting(cfg, "peer")
    client_what = _setting(cfg, "client")
    peer = _bind(me.peer_addr, peer_what)
    try:
        client = _bind(me.client_addr, client_what)
    except ListenError:
        for s in peer:
            s.close()
        raise
    return BoundAddresses(client, peer, client_what, peer_what)


def open_listeners(socks: list[socket.socket], what: str) -> list[trio.SocketListener]:
    """`listen()` on bound sockets and hand them to trio (call inside `trio.run`).

    Raises:
        ListenError: another socket started listening on the address first.
    """
    listeners = []
    for s in socks:
        try:
            s.listen(_BACKLOG)
        except OSError as e:
            host, port = s.getsockname()[:2]
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise _fail(shown, what, e) from None
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(s)))
    return listeners
