"""`prkctl dev cluster`: a local cluster in the foreground (runs `prkdb dev`)."""

from __future__ import annotations

import os
import sys

import click


@click.group()
def dev() -> None:
    """Development helpers.

    \b
    Example:
      prkctl dev cluster --nodes 3
    """


@dev.command()
@click.option("--nodes", type=click.Choice(["1", "3", "5", "7"]), default="3", show_default=True)
@click.option("--port", type=click.IntRange(1, 65000), default=8080, show_default=True,
              help="Client port of node 1; node i listens on PORT+i-1 (peers PORT+100+i-1).")
@click.option("--data-dir", default="prkdb-data", show_default=True)
@click.option("--partitions", type=click.IntRange(1, 1024), default=8, show_default=True)
def cluster(nodes: str, port: int, data_dir: str, partitions: int) -> None:
    """Run a local N-node cluster until Ctrl-C (the same as `prkdb dev`).

    Its cluster id is "prkdb-dev"; prkctl learns it from the seeds.

    \b
    Example:
      prkctl dev cluster --nodes 3 --port 8080 &
      prkctl --seeds 127.0.0.1:8080 status
    """
    argv = [sys.executable, "-m", "prkdb", "dev", "--nodes", nodes, "--port", str(port),
            "--data-dir", data_dir, "--partitions", str(partitions)]
    # A separate program, not an import: prkctl only depends on the SDK and storage.
    os.execv(sys.executable, argv)
