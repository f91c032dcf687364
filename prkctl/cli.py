"""prkctl's root: global options, the context object, error translation, `main`.

Every command is a sync click function that builds an async body and hands it
to `CtlContext.run_client`, which does `trio.run`, connects the SDK and closes
it. SDK exceptions become `PrkctlError`s in one place (`translate_errors`), so
the exit code depends only on the error's class:

    0  success
    1  the operation failed (cluster unreachable, no leader, cas mismatch, ...)
    2  bad usage (click)
    3  OutcomeUnknown: a write may or may not have been applied
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
import trio

from prkctl.output import encoding_flags
from prkdb.client import (
    InvalidRequest,
    OutcomeUnknown,
    PrkDbClient,
    PrkdbError,
    Unavailable,
    WrongCluster,
)
from prkdb.storage import StorageError

DEFAULT_SEEDS = "127.0.0.1:8080"
DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class PrkctlError(click.ClickException):
    """An operation failed; exits 1 with one line on stderr."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"prkctl: {self.format_message()}", err=True)


class OutcomeUnknownError(PrkctlError):
    """A write's fate is unknown (it may have been applied); exits 3."""

    exit_code = 3


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

    async def connect(self) -> Any:
        """A connected SDK client; learns the cluster id if none was given."""
        if self.client_factory is not None:
            return await self.client_factory(self)
        client = await PrkDbClient.connect(self.seeds, cluster_id=self.cluster_id,
                                           timeout=self.timeout)
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
        from prkctl.output import print_json

        if self.json:
            print_json(data)
        elif callable(human):
            human()
        else:
            click.echo(human)


pass_ctl = click.make_pass_decorator(CtlContext, ensure=True)


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
        except InvalidRequest as e:
            _trace(debug)
            raise PrkctlError(f"rejected: {e.message or e}") from e
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


def _parse_seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    seeds = [s.strip() for s in value.split(",") if s.strip()]
    if not seeds:
        raise click.BadParameter("at least one host:port is needed", ctx, param)
    for s in seeds:
        host, sep, port = s.removeprefix("http://").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{s!r} is not host:port", ctx, param)
    return seeds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seeds", envvar="PRKDB_SEEDS", default=DEFAULT_SEEDS, show_default=True,
              callback=_parse_seeds, help="Comma-separated host:port of any nodes "
              "(env PRKDB_SEEDS).")
@click.option("--cluster-id", envvar="PRKDB_CLUSTER_ID", default=None,
              help="Expected cluster id (env PRKDB_CLUSTER_ID). Default: learn it from the "
              "seeds (`prkdb dev` clusters are 'prkdb-dev').")
@click.option("--timeout", type=click.FloatRange(min=0.01), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds per request, retries included.")
@click.option("--json", "json_", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks of failures.")
@encoding_flags
@click.version_option(package_name="prkdb", prog_name="prkctl")
@pass_ctl
def cli(ctl: CtlContext, seeds: list[str], cluster_id: str | None, timeout: float,
        json_: bool, debug: bool, encoding: str | None) -> None:
    """Operate a PrkDB cluster: health, keys, leaders, snapshots, backups, WAL, benchmarks.

    \b
    Examples:
      prkctl status                               # exit 0 iff healthy
      prkctl --seeds 10.0.0.1:8080 put greeting hello
      prkctl --json get greeting
      prkctl --hex put 00ff cafe                  # keys and values as hex
      prkctl leader balance
      prkctl wal verify /var/lib/prkdb
      prkctl backup /backups/prkdb.tar           # online; restore: prkdb restore
    """
    ctl.seeds = seeds
    ctl.cluster_id = cluster_id or None
    ctl.timeout = timeout
    ctl.json = json_
    ctl.debug = debug
    ctl.encoding = encoding


def _register() -> None:
    from prkctl.commands import backup, bench, dev, kv, leader, snapshot, status, wal

    cli.add_command(status.status)
    for cmd in kv.COMMANDS:
        cli.add_command(cmd)
    cli.add_command(kv.kv)
    cli.add_command(leader.leader)
    cli.add_command(snapshot.snapshot)
    cli.add_command(backup.backup)
    cli.add_command(wal.wal)
    cli.add_command(bench.bench)
    cli.add_command(dev.dev)


_register()


def main() -> None:
    """Console entry point (`prkctl`)."""
    cli(prog_name="prkctl")
