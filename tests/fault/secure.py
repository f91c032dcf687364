"""A namespaced cluster with TLS on both listeners and auth on (issue 18: the nemesis, secured).

`SecureNetnsCluster` is a `NetnsCluster` whose nodes get ``[tls]`` (a
throwaway CA; each node's certificate names ``node-<id>`` and its private
address) and ``[auth]`` (the root user from a password file, made at first
start). Its `wire` connections speak TLS, and those that read keys present
root's token; `client_kwargs` are what an SDK client needs.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from prkdb.client.security import Credentials, TlsOptions
from prkdb.security.certs import CertAuthority
from prkdb.wire.messages import Authenticate, AuthOk, Login, Status, StatusOk
from tests.fault.netns import CLIENT_PORT, CLUSTER_ID, NetnsCluster
from tests.security.tlscluster import TlsWireConn

ROOT = "root"


def secure_wire(host: str, ca: Path, *, timeout: float, token: str = "") -> TlsWireConn:
    """A TLS test connection to `host`'s client port that said hello and, given a
    token, presented it (tests/security/tlscluster.py's connection)."""
    conn = TlsWireConn(CLIENT_PORT, ca, timeout=timeout, cluster_id=CLUSTER_ID, host=host)
    if token:
        reply = conn.call(Authenticate(1, token))
        if not isinstance(reply, AuthOk):
            conn.close()
            raise ConnectionError(f"Authenticate refused: {reply}")
    return conn


class SecureNetnsCluster(NetnsCluster):
    """A NetnsCluster with [tls] and [auth] on every node (module doc)."""

    def __init__(self, root: Path, nodes: int = 3, **kw: Any) -> None:
        super().__init__(root, nodes, **kw)  # network up, plain configs written
        self.secure = root / "secure"
        ca = CertAuthority("PrkDB fault-test CA")
        self.ca_file = ca.write(self.secure)
        self.password = secrets.token_urlsafe(16)
        password_file = self.secure / "root.password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        self._token = ""
        for i in self.ids:
            cert = ca.issue_node(i, hosts=(self.addr(i),)).write(self.secure, f"node{i}")
            path = root / f"node{i}.toml"
            path.write_text(path.read_text() + (
                f'\n[tls]\ncert_file = "{cert.cert_file}"\nkey_file = "{cert.key_file}"\n'
                f'ca_file = "{self.ca_file}"\n'
                f'\n[auth]\nenabled = true\nroot_password_file = "{password_file}"\n'
                "failed_logins_per_minute = 1000\n"))

    def client_kwargs(self) -> dict[str, Any]:
        return {"tls": TlsOptions(str(self.ca_file)),
                "credentials": Credentials(ROOT, self.password)}

    def wire(self, i: int, timeout: float = 1.0) -> Any:
        # A token (HMAC-checked, cheap) lets the connection read keys; logging
        # in per connection would cost a scrypt.
        return secure_wire(self.addr(i), self.ca_file, timeout=timeout, token=self._token)

    def status(self, i: int, timeout: float = 1.0) -> StatusOk:
        conn = secure_wire(self.addr(i), self.ca_file, timeout=timeout)
        try:
            reply = conn.call(Status(1))  # free: no token needed (or checked)
            assert isinstance(reply, StatusOk), reply
            return reply
        finally:
            conn.close()

    def wait_ready(self, nodes: Any = None, timeout: float = 30.0) -> Any:
        """Ready as a NetnsCluster is, and root can log in (made at first start)."""
        try:
            leaders = super().wait_ready(nodes, timeout)
        except AssertionError as e:  # say why each node did not answer
            why = []
            for i in self.ids:
                try:
                    st = self.status(i, timeout=2)
                    why.append(f"node {i}: " + ", ".join(
                        f"p{p.partition} leader {p.leader} term {p.term} commit {p.commit} "
                        f"applied {p.applied}" for p in st.partitions))
                except Exception as exc:
                    why.append(f"node {i}: {exc!r}; log tail:\n{self.log(i)[-1500:]}")
            raise AssertionError(f"{e}\n" + "\n".join(why)) from None
        deadline = time.monotonic() + timeout
        while not self._token:
            for i in self.ids:
                if not self.alive(i) or i in self.paused:
                    continue
                try:
                    conn = secure_wire(self.addr(i), self.ca_file, timeout=5)
                    try:
                        reply = conn.call(Login(1, ROOT, self.password))
                    finally:
                        conn.close()
                except (OSError, ConnectionError):
                    continue
                if isinstance(reply, AuthOk) and reply.token:
                    self._token = reply.token
                    break
            else:
                assert time.monotonic() < deadline, "root could not log in"
                time.sleep(0.2)
        return leaders
