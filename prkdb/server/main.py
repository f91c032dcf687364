"""`prkdb`: run a node (`serve`) or a local N-node cluster for development (`dev`)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import click

from prkdb import __version__
from prkdb.config import ConfigError, NodeConfig, PeerConfig, parse_addr
from prkdb.server.clusterconf import local_peers, write_cluster_configs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prkdb")
def cli() -> None:
    """PrkDB: a partitioned, Raft-replicated key-value database.

    \b
    Examples:
      prkdb dev --nodes 3                 # a local 3-node cluster on 127.0.0.1:8080-8082
      prkdb serve                         # one single-node cluster on 127.0.0.1:8080
      prkdb serve --config conf/cluster-3/node1.toml
      prkdb restore backup.tar --config new/node1.toml   # from `prkctl backup`
    """


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (see conf/prkdb.toml). Without it: a single-node cluster.")
@click.option("--id", "node_id", type=click.IntRange(min=1), help="Override node.id.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Override node.data_dir.")
@click.option("--client-listen", help="Override this node's client address (host:port).")
@click.option("--peer-listen", help="Override this node's peer address (host:port).")
@click.option("--log-format", type=click.Choice(["json", "console"]), help="Log format.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--rebuild", is_flag=True,
              help="This node lost its data dir: start from an empty one, get the data "
                   "back from the other nodes, and vote only once it has it "
                   "(docs/operations.md). Needs every other node up.")
@click.option("--seed", type=click.IntRange(min=0), metavar="N",
              help="Seed of the node's randomness (election timeouts, tick phase, "
                   "jitter); default: random, logged in node_ready. For replaying a "
                   "run while debugging; never needed in production.")
def serve(config_path: Path | None, node_id: int | None, data_dir: Path | None,
          client_listen: str | None, peer_listen: str | None, log_format: str | None,
          log_level: str | None, rebuild: bool, seed: int | None) -> None:
    """Run one node until SIGTERM/SIGINT (then hand off leadership and exit 0)."""
    try:
        cfg = NodeConfig.from_toml(config_path) if config_path else NodeConfig.default()
        cfg = apply_overrides(cfg, node_id, data_dir, client_listen, peer_listen,
                              log_format, log_level)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if rebuild:
        check_rebuild_dir(cfg)
    run_node(cfg, rebuild=rebuild, seed=seed)


def check_rebuild_dir(cfg: NodeConfig) -> None:
    """--rebuild starts from nothing: refuse (exit 2) a data dir that holds data."""
    from prkdb.server.rebuild import MARKER, data_dir_is_empty

    d = cfg.data_dir
    if data_dir_is_empty(d) or (d / MARKER).exists():  # empty, or resuming a rebuild
        return
    click.echo(
        f"prkdb: --rebuild needs an empty data dir, and {d} is not empty. If this "
        f"node's data is really lost, move {d} away (keep it until the rebuild is "
        f"done) and start again; if it is intact, start without --rebuild.",
        err=True,
    )
    sys.exit(2)


def apply_overrides(cfg: NodeConfig, node_id: int | None, data_dir: Path | None,
                    client_listen: str | None, peer_listen: str | None,
                    log_format: str | None, log_level: str | None) -> NodeConfig:
    changes: dict = {}
    if node_id is not None:
        changes["node_id"] = node_id
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if log_format:
        changes["log_format"] = log_format
    if log_level:
        changes["log_level"] = log_level
    cfg = cfg.replace(**changes)
    if client_listen or peer_listen:
        for addr, flag in ((client_listen, "--client-listen"), (peer_listen, "--peer-listen")):
            if addr:
                parse_addr(addr, flag)
        me = cfg.me
        new = PeerConfig(me.id, client_listen or me.client_addr, peer_listen or me.peer_addr)
        cfg = cfg.replace(peers=tuple(new if p.id == me.id else p for p in cfg.peers))
    return cfg.validate()


def run_node(cfg: NodeConfig, *, rebuild: bool = False, seed: int | None = None) -> None:
    import trio

    from prkdb.logging import configure_logging, get_logger
    from prkdb.security.tls import TlsSetupError
    from prkdb.server.listen import ListenError, bind_addresses, exposure, exposure_refusal
    from prkdb.server.node import FatalStorageError, Node
    from prkdb.server.rebuild import RebuildError
    from prkdb.server.recovery import RecoveryError
    from prkdb.storage import StorageError
    from prkdb.storage.identity import IdentityMismatch

    exposed_why = exposure_refusal(cfg)  # safe defaults (listen.py)
    if exposed_why is not None:
        click.echo(f"prkdb: node {cfg.node_id} refused to start: {exposed_why}", err=True)
        sys.exit(2)
    try:
        # First of all: a taken port is one line, before any log line, data dir or WAL.
        bound = bind_addresses(cfg)
    except ListenError as e:
        click.echo(f"prkdb: node {cfg.node_id} refused to start: {e}", err=True)
        sys.exit(2)
    configure_logging(cfg.log_format, cfg.log_level)
    exposed = exposure(cfg) if cfg.insecure and not (cfg.tls.enabled and cfg.auth.enabled) \
        else []
    if exposed:
        get_logger(node=cfg.node_id).warning(
            "insecure_listeners", addresses=exposed, tls=cfg.tls.enabled, auth=cfg.auth.enabled,
            detail="[node] insecure = true: anyone who reaches these addresses can read and "
                   "write every key")
    # The server allocates many short-lived objects per request and few
    # cycles: collecting the youngest generation every 700 allocations costs
    # more than it frees. Collect less often (memory stays bounded: the
    # collector still runs, and reference counting frees almost everything).
    gc.set_threshold(50_000, 20, 100)
    try:
        trio.run(Node(cfg, rebuild=rebuild, bound=bound, seed=seed).run)
    except* (IdentityMismatch, ListenError, TlsSetupError) as eg:
        # The configuration does not fit the data dir, a [tls] file cannot be
        # used, or the port is taken (two nodes started at once both bound
        # it; see listen.py): exit 2.
        for refusal in eg.exceptions:
            click.echo(f"prkdb: node {cfg.node_id} refused to start: {refusal}", err=True)
        sys.exit(2)
    except* (FatalStorageError, StorageError, RecoveryError, RebuildError, OSError) as eg:
        for failure in eg.exceptions:
            click.echo(f"prkdb: node {cfg.node_id} stopped: {failure}", err=True)
        sys.exit(1)


# -- restore -------------------------------------------------------------------------

@cli.command()
@click.argument("backup_file", metavar="FILE",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="The TOML config of the node to restore (of the NEW cluster).")
@click.option("--id", "node_id", type=click.IntRange(min=1), help="Override node.id.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Override node.data_dir (must be empty or absent).")
@click.option("--client-listen", help="Override this node's client address (host:port).")
@click.option("--peer-listen", help="Override this node's peer address (host:port).")
@click.option("--keep-cluster-id", is_flag=True,
              help="Allow the backup's own cluster id (only if that cluster is gone for good).")
def restore(backup_file: Path, config_path: Path, node_id: int | None, data_dir: Path | None,
            client_listen: str | None, peer_listen: str | None, keep_cluster_id: bool) -> None:
    """Build one node's data dir of a new cluster from a `prkctl backup` FILE.

    Run it for every node of the new cluster, each with its own config, from
    the same FILE; then start the nodes with `prkdb serve`. The whole backup
    is verified first (exit 1 if damaged); a non-empty data dir, another
    partition count, or the backup's own cluster id (without
    --keep-cluster-id) are refused with exit 2.

    \b
    Example:
      prkdb restore prkdb.tar --config conf/restored/node1.toml
      prkdb serve --config conf/restored/node1.toml
    """
    from prkdb.server.restore import RestoreRefused
    from prkdb.server.restore import restore as do_restore

    try:
        cfg = NodeConfig.from_toml(config_path)
        cfg = apply_overrides(cfg, node_id, data_dir, client_listen, peer_listen, None, None)
    except (ConfigError, OSError) as e:
        click.echo(f"prkdb: {e}", err=True)
        sys.exit(2)
    try:
        report = do_restore(backup_file, cfg, keep_cluster_id=keep_cluster_id,
                            log=lambda msg: click.echo(f"prkdb: {msg}", err=True))
    except RestoreRefused as e:
        click.echo(f"prkdb: restore refused: {e}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:
        click.echo(f"prkdb: restore failed: {type(e).__name__}: {e} (empty "
                   f"{cfg.data_dir} before trying again)", err=True)
        sys.exit(1)
    m = report.manifest
    click.echo(f"restored node {cfg.node_id} of cluster {cfg.cluster_id!r} into "
               f"{report.data_dir}: {m.partitions} partitions from backup of cluster "
               f"{m.cluster_id!r} taken {m.created}")


# -- dev cluster ---------------------------------------------------------------------

def dev_configs(nodes: int, port: int, data_dir: Path, partitions: int) -> list[Path]:
    """Write one TOML per node for a local cluster; returns their paths."""
    paths = write_cluster_configs(data_dir, local_peers(nodes, port), cluster_id="prkdb-dev",
                                  partitions=partitions)
    return [paths[i] for i in sorted(paths)]


@cli.command()
@click.option("--nodes", type=click.Choice(["1", "3", "5", "7"]), default="3", show_default=True,
              help="How many nodes.")
@click.option("--port", type=click.IntRange(1, 65000), default=8080, show_default=True,
              help="Client port of node 1; node i listens on PORT+i-1 (peers on PORT+100+i-1).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("prkdb-data"), show_default=True, help="Where the nodes keep data.")
@click.option("--partitions", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Raft groups the keys are spread over (fixed for the cluster's life).")
@click.option("--restart-delay", type=click.FloatRange(min=0), default=5.0, show_default=True,
              metavar="SECONDS",
              help="Start a node that died again after this long (doubled while it keeps "
                   "failing at start; left down after 3 such failures). 0: never restart.")
@click.option("--secure", is_flag=True,
              help="TLS and auth on: a throwaway CA, node certificates and a root password "
                   "under DATA_DIR/secure; prints a prkctl command line that works.")
def dev(nodes: str, port: int, data_dir: Path, partitions: int, restart_delay: float,
        secure: bool) -> None:
    """Run a local cluster as child processes until Ctrl-C, then stop them cleanly.

    Node i's PID is in DATA_DIR/node<i>.pid and its output in DATA_DIR/node<i>.log.
    Kill one (kill -9) to watch the others elect new leaders: the rest keep
    serving, and the dead node is started again after --restart-delay.

    \b
    Example:
      prkdb dev --nodes 3 --port 8080
      prkctl --seeds 127.0.0.1:8080 put hello world
      kill -9 $(cat prkdb-data/node1.pid); prkctl --seeds 127.0.0.1:8081 status
      prkdb dev --secure                  # TLS + auth; prints the prkctl flags to use
    """
    from prkdb.security.devsecure import secure_dev_cluster
    from prkdb.server.devcluster import DevCluster, RestartPolicy

    n = int(nodes)
    paths = dev_configs(n, port, data_dir, partitions)
    addrs = [f"127.0.0.1:{port + i}" for i in range(n)]
    seeds = ",".join(addrs)
    prkctl = f"prkctl --seeds {seeds}"
    if secure:
        made = secure_dev_cluster(data_dir, dict(enumerate(paths, start=1)))
        prkctl = made.prkctl_command(seeds).removesuffix(" status")

    def banner() -> None:
        click.echo(f"PrkDB dev cluster: {n} nodes, {partitions} partitions, data in {data_dir}")
        click.echo(f"seeds: {seeds}")
        if secure:
            click.echo(f"TLS and auth on: CA, node certificates and the root password in "
                       f"{data_dir / 'secure'}")
        click.echo(f"try:   {prkctl} put hello world")
        click.echo(f"       kill -9 $(cat {data_dir}/node1.pid)   # a failover: see "
                   f"`{prkctl} status`")
        click.echo("Ctrl-C stops the cluster.")

    cluster = DevCluster(paths, addrs, data_dir, RestartPolicy(delay=restart_delay))
    sys.exit(cluster.run(banner))


@cli.group()
def auth() -> None:
    """Authentication: the root user's password file."""


@auth.command("init")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node's TOML config.")
def auth_init(config_path: Path) -> None:
    """Write a random root password to [auth] root_password_file (mode 0600), if absent.

    The first node to lead partition 0 with [auth] enabled creates the user
    root with it. An existing file is kept as it is.
    """
    from prkdb.errors import InvalidRequest
    from prkdb.server.auth import init_root_password

    try:
        path, written = init_root_password(NodeConfig.from_toml(config_path))
    except (ConfigError, InvalidRequest) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write the root password file: {e}") from None
    if written:
        click.echo(f"wrote a random root password to {path}")
    else:
        click.echo(f"{path} exists already: kept (the root password is its first line)")


def main() -> None:
    cli(prog_name="prkdb")

