"""`prkctl leader transfer|balance`: move partition leadership between nodes."""

from __future__ import annotations

import math
from typing import Any

import click
import trio

from prkctl.commands.status import NODE_TIMEOUT_CAP, ClusterView, gather
from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import table

SETTLE_TIMEOUT = 2.0  # seconds to wait for the new leader to show in status
BALANCE_ROUNDS = 3  # re-plan this often if transfers land elsewhere (elections)


@click.group()
def leader() -> None:
    """Partition leadership.

    \b
    Example:
      prkctl leader transfer 3 2     # node 2 leads partition 3
      prkctl leader balance          # spread leaders evenly over live nodes
    """


@leader.command()
@click.argument("partition", type=click.IntRange(min=0))
@click.argument("node", type=click.IntRange(min=0))
@pass_ctl
@translate_errors
def transfer(ctl: CtlContext, partition: int, node: int) -> None:
    """Make NODE the leader of PARTITION (NODE 0: let the leader pick).

    Returns once leadership has left the old leader.

    \b
    Example:
      prkctl leader transfer 0 3
    """

    async def body(client: Any) -> Any:
        view = await gather(client, min(ctl.timeout, NODE_TIMEOUT_CAP))
        if partition >= len(view.partitions):
            raise click.BadParameter(
                f"partition {partition} is not in 0..{len(view.partitions) - 1}",
                param_hint="PARTITION")
        if node and node not in {n["id"] for n in view.nodes}:
            raise click.BadParameter(f"node {node} is not a member", param_hint="NODE")
        before = view.leaders().get(partition, 0)
        if node and before == node:
            return before, {"partition": partition, "leader": node}
        reply = await client.transfer_leader(partition, node)
        return before, {"leader": await settled_leader(client, partition, before,
                                                       reply.details.get("leader", 0))}

    before, details = ctl.run_client(body)
    after = details.get("leader", 0)
    ctl.emit({"partition": partition, "from": before, "to": node, "leader": after},
             f"partition {partition}: leader {before or 'none'} -> {after or 'unknown'}")
    if node and after and after != node:
        raise PrkctlError(f"partition {partition}: node {after} took over, not node {node}")


async def settled_leader(client: Any, partition: int, old: int, hint: int) -> int:
    """The partition's new leader once one is known (0 if none within ~2 s)."""
    if hint and hint != old:
        return hint
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            view = await gather(client, NODE_TIMEOUT_CAP)
            lead = view.leaders().get(partition, 0)
            if lead and lead != old:
                return lead
            await trio.sleep(0.05)
    return 0


def plan_moves(view: ClusterView) -> list[tuple[int, int, int]]:
    """(partition, from, to) moves so no live node leads more than ceil(P/N_live)."""
    live = sorted(n["id"] for n in view.nodes if n["up"])
    if not live:
        return []
    cap = math.ceil(len(view.partitions) / len(live))
    counts = {n: 0 for n in live}
    led: dict[int, list[int]] = {n: [] for n in live}
    for p, lead in sorted(view.leaders().items()):
        if lead in counts:
            counts[lead] += 1
            led[lead].append(p)
    moves = []
    while True:
        src = max(live, key=lambda n: (counts[n], -n))
        dst = min(live, key=lambda n: (counts[n], n))
        # max - min <= 1 implies max <= ceil(P/N): evenly spread.
        if counts[src] - counts[dst] <= 1 and counts[src] <= cap:
            break
        p = led[src].pop()
        moves.append((p, src, dst))
        counts[src] -= 1
        counts[dst] += 1
    return moves


def _counts_table(view: ClusterView) -> str:
    return table(["NODE", "STATE", "LEADS", "PARTITIONS"], [
        [n["id"], "up" if n["up"] else "DOWN", n["leading"],
         ",".join(str(p) for p, lead in sorted(view.leaders().items()) if lead == n["id"])]
        for n in view.nodes
    ])


@leader.command()
@click.option("--dry-run", is_flag=True, help="Print the planned moves only.")
@pass_ctl
@translate_errors
def balance(ctl: CtlContext, dry_run: bool) -> None:
    """Move leaders so each live node leads at most ceil(P/N) partitions.

    Prints the leaders per node before and after. Exit 1 if the cluster is
    still unbalanced afterwards (e.g. elections moved leaders meanwhile).

    \b
    Example:
      prkctl leader balance
      prkctl leader balance --dry-run
    """
    node_timeout = min(ctl.timeout, NODE_TIMEOUT_CAP)

    async def body(client: Any) -> tuple[ClusterView, ClusterView, list[dict[str, Any]]]:
        before = await gather(client, node_timeout)
        view = before
        done: list[dict[str, Any]] = []
        for _ in range(BALANCE_ROUNDS):
            moves = plan_moves(view)
            if not moves or dry_run:
                if dry_run:
                    done = [{"partition": p, "from": s, "to": d} for p, s, d in moves]
                break
            for p, src, dst in moves:
                await client.transfer_leader(p, dst)
                done.append({"partition": p, "from": src, "to": dst})
            view = await gather(client, node_timeout)
        return before, view, done

    before, after, moves = ctl.run_client(body)
    live = [n for n in after.nodes if n["up"]]
    cap = math.ceil(len(after.partitions) / max(1, len(live)))
    worst = max((n["leading"] for n in live), default=0)
    leaderless = [p["partition"] for p in after.partitions if not p["leader"]]

    def human() -> None:
        click.echo("before:")
        click.echo(_counts_table(before))
        verb = "would move" if dry_run else "moved"
        for m in moves:
            click.echo(f"{verb} partition {m['partition']}: node {m['from']} -> node {m['to']}")
        if not moves:
            click.echo("already balanced")
        if not dry_run:
            click.echo("after:")
            click.echo(_counts_table(after))

    ctl.emit({
        "before": before.leader_counts(),
        "after": after.leader_counts(),
        "moves": moves,
        "max_per_node": cap,
        "dry_run": dry_run,
    }, human)
    if not dry_run and (worst > cap or leaderless):
        raise PrkctlError(f"still unbalanced: a node leads {worst} > {cap} partitions"
                          + (f"; partitions {leaderless} have no leader" if leaderless else ""))
