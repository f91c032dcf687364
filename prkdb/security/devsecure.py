"""`prkdb dev --secure`: a local cluster with TLS and auth on, and one prkctl line that works.

Under ``DATA_DIR/secure`` it keeps a throwaway CA certificate (``ca.crt``;
its key is never written: the CA signs once, at creation), a certificate and
key per node (``node<i>.crt``/``.key``: CN and DNS SAN ``node-<i>``, plus
localhost and 127.0.0.1 so clients can check the name they dial), and the
root user's password (``root-password``, mode 0600). They are made once and
kept across restarts of the dev cluster (the prkctl line stays valid); if a
file is missing they are all made again. Each node's config gets ``[tls]``
(TLS on both listeners, mutual between peers) and ``[auth] enabled`` with
that password file.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prkdb.security.certs import CertAuthority, CertFiles

__all__ = ["SecureDev", "secure_dev_cluster"]

SECURE_DIR = "secure"
PASSWORD_FILE = "root-password"


@dataclass(frozen=True, slots=True)
class SecureDev:
    """What `secure_dev_cluster` made: the files a client needs."""

    ca_file: Path
    password_file: Path
    node_certs: dict[int, CertFiles]

    def prkctl_command(self, seeds: str) -> str:
        """A ready-to-paste prkctl command line (status) against the secure cluster."""
        return shlex.join(["prkctl", "--seeds", seeds, "--cacert", str(self.ca_file),
                           "--user", "root", "--password-file", str(self.password_file),
                           "status"])


def _ensure_pki(directory: Path, node_ids: Sequence[int]) -> tuple[Path, dict[int, CertFiles]]:
    ca_file = directory / "ca.crt"
    nodes = {i: CertFiles(directory / f"node{i}.crt", directory / f"node{i}.key")
             for i in node_ids}
    wanted = [ca_file, *(p for c in nodes.values() for p in (c.cert_file, c.key_file))]
    if all(p.exists() for p in wanted):
        return ca_file, nodes
    ca = CertAuthority("PrkDB dev CA (throwaway)")
    ca_file = ca.write(directory)
    return ca_file, {i: ca.issue_node(i).write(directory, f"node{i}") for i in node_ids}


def _ensure_password(path: Path) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(24) + "\n")


def secure_dev_cluster(data_dir: Path, configs: dict[int, Path]) -> SecureDev:
    """Make (or keep) the secure files under `data_dir` and turn TLS and auth on in `configs`.

    Args:
        configs: node id -> its TOML config, as just written by ``prkdb dev`` (no
            ``[tls]`` or ``[auth]`` table yet): both are appended.
    """
    directory = (data_dir / SECURE_DIR).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, nodes = _ensure_pki(directory, sorted(configs))
    password = directory / PASSWORD_FILE
    _ensure_password(password)
    for i, path in configs.items():
        c = nodes[i]
        with path.open("a", encoding="utf-8") as f:
            f.write(f'\n# prkdb dev --secure\n[tls]\ncert_file = "{c.cert_file}"\n'
                    f'key_file = "{c.key_file}"\nca_file = "{ca_file}"\n'
                    f'\n[auth]\nenabled = true\nroot_password_file = "{password}"\n')
    return SecureDev(ca_file, password, nodes)
