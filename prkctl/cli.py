"""prkctl's root: global options, the commands, `main`.

The layers, each importing only those below it: errors.py (exit codes) <-
output.py (encodings, tables, JSON) <- context.py (`CtlContext`, the SDK
connection, `translate_errors`) <- commands/* <- this module. The exit code
depends only on the error's class (prkctl/errors.py).
"""

from __future__ import annotations

import click

from prkctl.commands import (
    backup,
    bench,
    dev,
    kv,
    leader,
    lease,
    role,
    snapshot,
    status,
    user,
    wal,
    watch,
)
from prkctl.context import (
    DEFAULT_SEEDS,
    DEFAULT_TIMEOUT,
    CtlContext,
    auth_flags,
    pass_ctl,
    tls_flags,
)
from prkctl.errors import OutcomeUnknownError, PrkctlError
from prkctl.output import encoding_flags

__all__ = ["CtlContext", "OutcomeUnknownError", "PrkctlError", "cli", "main"]


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
@tls_flags
@auth_flags
@encoding_flags
@click.version_option(package_name="prkdb", prog_name="prkctl")
@pass_ctl
def cli(ctl: CtlContext, seeds: list[str], cluster_id: str | None, timeout: float,
        json_: bool, debug: bool, encoding: str | None) -> None:
    """Operate a PrkDB cluster: health, keys, scans, transactions, watches, leases, leaders,
    snapshots, backups, WAL, benchmarks.

    \b
    Examples:
      prkctl status                               # exit 0 iff healthy
      prkctl --seeds 10.0.0.1:8080 put greeting hello
      prkctl --json get greeting
      prkctl --hex put 00ff cafe                  # keys and values as hex
      prkctl get --prefix config/                 # every key under config/
      prkctl scan a b --limit 10 --keys-only
      prkctl txn < txn.json                       # compares, then ops (see txn --help)
      prkctl watch --prefix config/               # changes as they happen, until Ctrl-C
      prkctl lease grant 30                       # prints the lease id
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
    cli.add_command(status.status)
    for cmd in kv.COMMANDS:
        cli.add_command(cmd)
    cli.add_command(kv.kv)
    cli.add_command(watch.watch)
    cli.add_command(lease.lease)
    cli.add_command(leader.leader)
    cli.add_command(snapshot.snapshot)
    cli.add_command(backup.backup)
    cli.add_command(wal.wal)
    cli.add_command(bench.bench)
    cli.add_command(dev.dev)
    cli.add_command(user.user)
    cli.add_command(role.role)


_register()


def main() -> None:
    """Console entry point (`prkctl`)."""
    cli(prog_name="prkctl")
