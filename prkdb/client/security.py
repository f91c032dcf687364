"""What a client needs to reach a secured cluster: TLS files and a user's credentials.

Every front end (`PrkDbClient.connect`, `AsyncClient.connect`, `SyncClient`)
takes ``tls=TlsOptions(...)`` and ``credentials=Credentials(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Connect with TLS, trusting `ca_file` (PEM); a client certificate if the server asks.

    ``server_name``: the name checked in the server's certificate ("" = the
    host of the address dialed).
    """

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user and password: the client logs in on each connection and again when a token expires."""

    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r}, password=***)"
