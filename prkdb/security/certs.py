"""A throwaway certificate authority: node and client certificates (tests, `prkdb dev --secure`).

Not a tool for production certificates (docs/security.md shows openssl for
those): keys are EC P-256, kept in memory until written, and every
certificate is signed by one self-made CA.

A node's certificate names its member the way the peer check wants it
(prkdb/security/tls.py): subject CN and a DNS SAN ``node-<id>``, plus the
host names and IP addresses clients dial (``localhost``, ``127.0.0.1`` by
default), so a client can check the server by the address it dialed.
A client certificate has the user as its CN and no ``node-`` name, so it can
never pass as a peer.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertAuthority", "CertFiles", "IssuedCert", "node_name"]

_DAY = datetime.timedelta(days=1)


def node_name(node_id: int) -> str:
    """The name a certificate must carry (CN or DNS SAN) to act as member `node_id`."""
    return f"node-{node_id}"


def _now() -> datetime.datetime:
    # Certificate validity is wall-clock by nature (not the daemon's trio clock).
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Where `IssuedCert.write` put a certificate and its key."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate (PEM) and its private key (PEM, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> CertFiles:
        """Write ``<stem>.crt`` and ``<stem>.key`` (mode 0600) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_file.write_bytes(self.cert_pem)
        _write_private(key_file, self.key_pem)
        return CertFiles(cert_file, key_file)


class CertAuthority:
    """A self-signed CA that issues node and client certificates."""

    def __init__(self, common_name: str = "PrkDB CA", *, days: int = 3650) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """Write the CA certificate (not its key) as ``<stem>.crt``; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        days: float = 825,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCert:
        """A certificate for `common_name`, usable as TLS server and client.

        Args:
            dns_names / ip_addresses: subject alternative names.
            days: validity from now (ignored when `not_after` is given).
            not_before / not_after: explicit validity (tests: an expired one).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_node(self, node_id: int, *,
                   hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"), days: float = 825,
                   not_before: datetime.datetime | None = None,
                   not_after: datetime.datetime | None = None) -> IssuedCert:
        """A node's certificate: CN and DNS SAN ``node-<id>`` plus the `hosts` clients dial."""
        dns, ips = [node_name(node_id)], []
        for h in hosts:
            try:
                ipaddress.ip_address(h)
            except ValueError:
                dns.append(h)
            else:
                ips.append(h)
        return self.issue(node_name(node_id), dns_names=dns, ip_addresses=ips, days=days,
                          not_before=not_before, not_after=not_after)

    def issue_client(self, user: str, *, days: float = 825,
                     not_before: datetime.datetime | None = None,
                     not_after: datetime.datetime | None = None) -> IssuedCert:
        """A client certificate whose CN is `user` (the connection's user with auth)."""
        return self.issue(user, days=days, not_before=not_before, not_after=not_after)
