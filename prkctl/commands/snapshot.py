"""`prkctl snapshot [PARTITION]`: take a snapshot now (and compact the log)."""

from __future__ import annotations

from typing import Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors


@click.command()
@click.argument("partition", type=click.IntRange(min=0), required=False)
@click.option("--node", type=click.IntRange(min=1),
              help="The node that snapshots (default: the partition's leader; without "
              "PARTITION, the lowest-numbered node). Snapshots are per node.")
@pass_ctl
@translate_errors
def snapshot(ctl: CtlContext, partition: int | None, node: int | None) -> None:
    """Snapshot PARTITION (default: every partition) on one node now.

    \b
    Example:
      prkctl snapshot            # every partition on node 1
      prkctl snapshot 3          # partition 3 on its leader
      prkctl snapshot 3 --node 2
    """

    async def body(client: Any) -> Any:
        st = await client.status()
        if partition is not None and partition >= len(st.partitions):
            raise click.BadParameter(
                f"partition {partition} is not in 0..{len(st.partitions) - 1}",
                param_hint="PARTITION")
        if node is not None and node not in {n.node_id for n in st.nodes}:
            raise click.BadParameter(f"node {node} is not a member", param_hint="--node")
        return await client.snapshot(partition, node_id=node)

    reply = ctl.run_client(body)
    taken = reply.details.get("snapshots", {})

    def human() -> None:
        for p, index in sorted(taken.items(), key=lambda kv: int(kv[0])):
            click.echo(f"partition {p}: snapshot at index {index}")

    ctl.emit({"node": node, "partition": partition, "snapshots": taken}, human)
