"""The state every prkctl command shares (`CtlContext`, reached with `pass_ctl`),
and the one place SDK and storage exceptions become exit codes (`translate_errors`).

Every command is a sync click function that builds an async body and hands it
to `CtlContext.run_client`, which does `trio.run`, connects the SDK and closes
it. Commands import this module; the root group (prkctl/cli.py) imports the
commands, so nothing imports back up.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from prkctl.errors import OutcomeUnknownError, PrkctlError
from prkctl.output import print_json
from prkdb.client import (
    AuthFailed,
    InvalidRequest,
    LeaseNotFound,
    OutcomeUnknown,
    PermissionDenied,
    PrkDbClient,
    PrkdbError,
    Unauthenticated,
    Unavailable,
    WrongCluster,
)
from prkdb.client.security import Credentials, TlsOptions
from prkdb.errors import TlsError
from prkdb.storage import StorageError

__all__ = [
    "DEFAULT_SEEDS",
    "DEFAULT_TIMEOUT",
    "ClientFactory",
    "CtlContext",
    "auth_flags",
    "pass_ctl",
    "tls_flags",
    "translate_errors",
]

DEFAULT_SEEDS = "127.0.0.1:8080"
DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


ClientFactory = Callable[["CtlContext"], Awaitable[Any]]


@dataclass
class CtlContext:
    """State shared by every command (reached through `pass_ctl`).

    Tests build one with a fake `client_factory` and pass it as CliRunner's
    ``obj=``; the root group then only fills in the options.
    """

    seeds: list[str] = field(default_factory=lambda: [DEFAULT_SEEDS])
    # None: learn it from the first seed that answers (the node names its cluster).
    cluster_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT  # seconds per SDK call, retries included
    json: bool = False
    debug: bool = False
    # Root --utf8/--hex/--base64; None: the command's own flag or utf8 decides.
    encoding: str | None = None
    client_factory: ClientFactory | None = None
    # --cacert / --cert / --key (env PRKCTL_CACERT, ...): "" = not given.
    cacert: str = ""
    cert: str = ""
    key: str = ""
    # --user / --password-file (env PRKCTL_USER, PRKCTL_PASSWORD_FILE): "" = not given.
    user: str = ""
    password_file: str = ""

    @property
    def credentials(self) -> Credentials | None:
        """The user to log in as, from --user and --password-file (first line); None: none.

        Raises:
            click.UsageError: one flag without the other, or an unreadable or empty file.
        """
        if not self.user:
            if self.password_file:
                raise click.UsageError("--password-file needs --user")
            return None
        if not self.password_file:
            raise click.UsageError("--user needs --password-file (a file whose first line "
                                   "is the password)")
        try:
            text = Path(self.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.UsageError(f"--password-file {self.password_file}: {e}") from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise click.UsageError(f"--password-file {self.password_file}: the first line "
                                   "is empty")
        return Credentials(self.user, password)

    @property
    def tls(self) -> TlsOptions | None:
        """TLS settings from the flags; None (plaintext) without --cacert.

        Raises:
            click.UsageError: --cert without --key (or the reverse), or either without --cacert.
        """
        if bool(self.cert) != bool(self.key):
            raise click.UsageError("--cert and --key go together (a client certificate "
                                   "and its private key)")
        if not self.cacert:
            if self.cert:
                raise click.UsageError("--cert needs --cacert (the CA that signed the "
                                       "nodes' certificates)")
            return None
        return TlsOptions(self.cacert, self.cert, self.key)

    async def connect(self) -> Any:
        """A connected SDK client; learns the cluster id if none was given."""
        if self.client_factory is not None:
            return await self.client_factory(self)
        client = await PrkDbClient.connect(self.seeds, cluster_id=self.cluster_id,
                                           timeout=self.timeout, tls=self.tls,
                                           credentials=self.credentials)
        self.cluster_id = client.cluster_id  # as given, or as the first node named it
        return client

    def run_client(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`trio.run` `fn(client)` with a connected client, closed afterwards."""

        async def main() -> T:
            client = await self.connect()
            try:
                return await fn(client)
            finally:
                await client.aclose()

        return trio.run(main)

    def emit(self, data: Any, human: str | Callable[[], None]) -> None:
        """Print `data` as JSON with --json, else the human form (text or a printer)."""
        if self.json:
            print_json(data)
        elif callable(human):
            human()
        else:
            click.echo(human)

    def emit_line(self, data: Any, human: str) -> None:
        """One record of a stream: a compact JSON line with --json, else the text line."""
        click.echo(json.dumps(data, sort_keys=True, default=str) if self.json else human)


pass_ctl = click.make_pass_decorator(CtlContext, ensure=True)


def _tls_flag(name: str, attr: str, env: str, help_: str) -> Callable[[F], F]:
    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        setattr(ctx.ensure_object(CtlContext), attr, value or "")

    return click.option(name, envvar=env, default=None, metavar="FILE", expose_value=False,
                        callback=store, type=click.Path(dir_okay=False),
                        help=f"{help_} (env {env}).")


def tls_flags(fn: F) -> F:
    """The root group's TLS options; they land in `CtlContext` (cacert, cert, key)."""
    fn = _tls_flag("--key", "key", "PRKCTL_KEY", "The client certificate's private key (PEM)")(fn)
    fn = _tls_flag("--cert", "cert", "PRKCTL_CERT",
                   "A client certificate (PEM) for nodes that ask for one")(fn)
    return _tls_flag("--cacert", "cacert", "PRKCTL_CACERT",
                     "Connect with TLS, trusting the CA certificates in FILE (PEM)")(fn)


def auth_flags(fn: F) -> F:
    """The root group's --user and --password-file; they land in `CtlContext`."""

    def store(attr: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
        def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
            setattr(ctx.ensure_object(CtlContext), attr, value or "")
        return callback

    fn = click.option("--password-file", envvar="PRKCTL_PASSWORD_FILE", default=None,
                      metavar="FILE", expose_value=False, callback=store("password_file"),
                      type=click.Path(dir_okay=False),
                      help="The --user's password: the first line of FILE "
                      "(env PRKCTL_PASSWORD_FILE).")(fn)
    return click.option("--user", envvar="PRKCTL_USER", default=None, expose_value=False,
                        callback=store("user"),
                        help="Log in as this user (a cluster with auth on; env "
                        "PRKCTL_USER).")(fn)


def translate_errors(fn: F) -> F:
    """Map SDK and storage exceptions to PrkctlError (exit 1) / OutcomeUnknownError (3)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        ctl = ctx.find_object(CtlContext)
        debug = ctl.debug if ctl is not None else False
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OutcomeUnknown as e:
            _trace(debug)
            raise OutcomeUnknownError(
                f"outcome unknown: {e.message or e} (the write may or may not have been applied)"
            ) from e
        except WrongCluster as e:
            _trace(debug)
            raise PrkctlError(f"{e.message or e} (pass --cluster-id or PRKDB_CLUSTER_ID)") from e
        except Unavailable as e:
            _trace(debug)
            raise PrkctlError(f"cluster unavailable: {e.message or e}") from e
        except TlsError as e:
            _trace(debug)
            raise PrkctlError(f"TLS: {e.message or e}") from e
        except Unauthenticated as e:
            _trace(debug)
            raise PrkctlError(f"{e.message or e} (pass --user and --password-file)") from e
        except (AuthFailed, PermissionDenied) as e:
            _trace(debug)
            raise PrkctlError(e.message or str(e)) from e
        except InvalidRequest as e:
            _trace(debug)
            raise PrkctlError(f"rejected: {e.message or e}") from e
        except LeaseNotFound as e:
            # Its messages name the lease ("lease 7340035 not found (expired or revoked)").
            _trace(debug)
            raise PrkctlError(e.message or str(e)) from e
        except PrkdbError as e:
            _trace(debug)
            raise PrkctlError(f"{type(e).__name__}: {e.message or e}") from e
        except BrokenPipeError:
            # `prkctl wal dump ... | head`: the reader left; not an error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except StorageError as e:
            _trace(debug)
            raise PrkctlError(str(e)) from e
        except OSError as e:
            _trace(debug)
            raise PrkctlError(str(e)) from e
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:
            # A bug in prkctl or the SDK: still one line unless --debug.
            _trace(debug)
            hint = "" if debug else " (rerun with --debug for the traceback)"
            raise PrkctlError(f"internal error: {type(e).__name__}: {e}{hint}") from e

    return wrapper  # type: ignore[return-value]


def _trace(debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
