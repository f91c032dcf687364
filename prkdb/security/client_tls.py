"""The SDKs' side of TLS: a context from `TlsOptions`, and what a failed handshake means.

No trio here: the asyncio and blocking clients use it and must not import
trio (tests/client/test_aio.py). The trio client's handshake is in
prkdb/client/connection.py (`tls_stream_factory`).

`ClientTls` holds the context made from the SDK's `TlsOptions` (trust
``ca_file``, present ``cert_file`` if given, check the server's name:
``server_name`` or the host dialed). `tls_failure` turns what a failed
handshake (or, with TLS 1.3, the first read after it) raised into a
`TlsError` that says whose certificate was refused and why, or that one side
does not speak TLS; None means a plain network failure, which the caller
retries as any connect failure.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from prkdb.errors import TlsError

if TYPE_CHECKING:  # prkdb.client imports this module
    from prkdb.client.security import TlsOptions

__all__ = ["HANDSHAKE_TIMEOUT", "ClientTls", "tls_failure"]

HANDSHAKE_TIMEOUT = 5.0  # seconds from dial to a finished handshake
# OpenSSL reasons meaning "what came back is not TLS" (the other end speaks plaintext).
_NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE",
    "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNEXPECTED_RECORD",
    "RECORD_TOO_LARGE", "UNEXPECTED_MESSAGE",
})


class ClientTls:
    """An SDK's TLS: the context made from `TlsOptions` and the name to check."""

    __slots__ = ("context", "options")

    def __init__(self, options: TlsOptions) -> None:
        """Raises `TlsError` if a file cannot be used (naming it)."""
        self.options = options
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_RENEGOTIATION  # the trio client's TlsStream relies on it
        try:
            ctx.load_verify_locations(cafile=options.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"cannot use the CA file {options.ca_file!r}: "
                           f"{getattr(e, 'strerror', None) or e}") from None
        if options.cert_file or options.key_file:
            if not (options.cert_file and options.key_file):
                raise TlsError("a client certificate needs both cert_file and key_file")
            try:
                ctx.load_cert_chain(options.cert_file, options.key_file)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"cannot use the client certificate {options.cert_file!r} / "
                               f"key {options.key_file!r}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        self.context = ctx

    def server_name(self, host: str) -> str:
        """The name the server's certificate must carry when dialed at `host`."""
        return self.options.server_name or host


def tls_failure(address: str, exc: BaseException) -> TlsError | None:
    """A `TlsError` for a handshake (or first read) that failed for good, else None (retry)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, ssl.SSLError) or isinstance(
            cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None  # closed mid-handshake: a network failure, not a refusal
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TlsError(f"{address}: the server's certificate was refused: "
                        f"{cause.verify_message} (check the CA file and the server's "
                        "name and dates)")
    reason = cause.reason or ""
    if reason in _NOT_TLS_REASONS:
        return TlsError(f"{address}: the server does not speak TLS (its answer is not TLS: "
                        f"{reason.lower().replace('_', ' ')}); is [tls] set on the node, "
                        "or is this the right port?")
    if "ALERT" in reason or "CERTIFICATE" in reason:
        return TlsError(f"{address}: the server refused the TLS handshake: "
                        f"{reason.lower().replace('_', ' ')} (does it want a client "
                        "certificate signed by its CA, valid today?)")
    return TlsError(f"{address}: TLS failed: {reason.lower().replace('_', ' ') or cause}")
