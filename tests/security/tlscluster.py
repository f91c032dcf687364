"""Real `prkdb` processes with ``[tls]``: certificates from a throwaway CA, a TLS status probe.

`TlsCluster` is a `LocalCluster` whose nodes get ``[tls]`` in their config
(certificates under ``root/certs``, made by prkdb.security.certs) and whose
`status` speaks TLS, so `wait_ready` and `leaders` work as for plaintext.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from prkdb.client.security import TlsOptions
from prkdb.security.certs import CertAuthority, CertFiles
from prkdb.wire import NEED_DATA, PROTOCOL_VERSION, FrameDecoder, encode_message, from_wire
from prkdb.wire.messages import Hello, Status, StatusOk
from tests.integration.cluster import CLUSTER_ID, LocalCluster


def tls_section(cert: CertFiles, ca: Path, *, client_cert_auth: bool = False,
                min_version: str = "1.2") -> str:
    return (f'\n[tls]\ncert_file = "{cert.cert_file}"\nkey_file = "{cert.key_file}"\n'
            f'ca_file = "{ca}"\nclient_cert_auth = {"true" if client_cert_auth else "false"}\n'
            f'min_version = "{min_version}"\n')


class TlsWireConn:
    """A blocking TLS connection that said hello (independent of the SDK)."""

    def __init__(self, port: int, ca: Path, *, cert: CertFiles | None = None,
                 timeout: float = 5.0, cluster_id: str = CLUSTER_ID,
                 host: str = "127.0.0.1") -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.decoder = FrameDecoder()
        self.hello = self.call(Hello(PROTOCOL_VERSION, cluster_id, "client", 0))

    def call(self, msg: Any) -> Any:
        self.sock.sendall(encode_message(msg))
        while True:
            f = self.decoder.next_frame()
            if f is not NEED_DATA:
                return from_wire(f)
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.decoder.receive_data(data)

    def close(self) -> None:
        self.sock.close()


class TlsCluster(LocalCluster):
    """A LocalCluster with TLS on both listeners of every node."""

    def __init__(self, root: Path, nodes: int = 3, *, client_cert_auth: bool = False,
                 **kw: Any) -> None:
        super().__init__(root, nodes, **kw)
        self.certs = root / "certs"
        self.ca = CertAuthority("PrkDB test CA")
        self.ca_file = self.ca.write(self.certs)
        self.node_certs = {i: self.ca.issue_node(i).write(self.certs, f"node{i}")
                           for i in self.ids}
        self.client_cert = self.ca.issue_client("alice").write(self.certs, "alice")
        self.client_cert_auth = client_cert_auth
        for i in self.ids:
            self.set_tls(i, self.node_certs[i])

    def set_tls(self, i: int, cert: CertFiles, ca: Path | None = None) -> None:
        """(Re)write node i's ``[tls]`` with `cert` (and `ca`, default the cluster's CA)."""
        path = self.root / f"node{i}.toml"
        text = path.read_text().split("\n[tls]\n")[0]
        path.write_text(text + tls_section(cert, ca or self.ca_file,
                                           client_cert_auth=self.client_cert_auth))

    def options(self, *, with_cert: bool = True) -> TlsOptions:
        c = self.client_cert
        return TlsOptions(str(self.ca_file), str(c.cert_file) if with_cert else "",
                          str(c.key_file) if with_cert else "")

    def status(self, i: int, timeout: float = 2.0) -> StatusOk:
        conn = TlsWireConn(self.client_ports[i - 1], self.ca_file, cert=self.client_cert,
                           timeout=timeout)
        try:
            reply = conn.call(Status(1))
            assert isinstance(reply, StatusOk), reply
            return reply
        finally:
            conn.close()
