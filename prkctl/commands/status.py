"""`prkctl status`: nodes up/down and one row per partition, taken from its leader.

Progress (each replica's match index) is only known by a partition's leader,
so we ask every node for its status concurrently and take each partition's
row from the node that leads it (the highest term wins if two claim it).
Exit 0 iff every partition has a leader and a quorum of live replicas: the
command doubles as a health check for scripts and load balancers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click
import trio

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkctl.output import table

# One node gets this long to answer; a dead node must not stall the whole table.
NODE_TIMEOUT_CAP = 2.0


@dataclass
class ClusterView:
    """What `status` learned; `to_json` is the --json shape."""

    cluster_id: str
    nodes: list[dict[str, Any]]
    partitions: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def leaders(self) -> dict[int, int]:
        """partition -> leader node id (only partitions that have one)."""
        return {p["partition"]: p["leader"] for p in self.partitions if p["leader"]}

    def leader_counts(self) -> dict[int, int]:
        counts = {n["id"]: 0 for n in self.nodes}
        for leader in self.leaders().values():
            counts[leader] = counts.get(leader, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "healthy": self.healthy,
            "problems": self.problems,
            "nodes": self.nodes,
            "partitions": self.partitions,
        }


async def gather(client: Any, node_timeout: float) -> ClusterView:
    """Ask every member for its status and assemble the cluster view."""
    first = await client.status()
    members = sorted(first.nodes, key=lambda n: n.node_id)
    views: dict[int, Any] = {}
    errors: dict[int, str] = {}

    async def ask(node_id: int) -> None:
        try:
            views[node_id] = await client.status(node_id, timeout=node_timeout)
        except Exception as e:  # any failure means "down" for this table
            errors[node_id] = getattr(e, "message", "") or str(e) or type(e).__name__

    async with trio.open_nursery() as nursery:
        for n in members:
            nursery.start_soon(ask, n.node_id)

    nodes = []
    for n in members:
        v = views.get(n.node_id)
        nodes.append({
            "id": n.node_id,
            "address": n.client_addr,
            "peer_address": n.peer_addr,
            "up": v is not None,
            "version": (v.server_version or None) if v is not None else None,
            "error": errors.get(n.node_id),
            "leading": 0,
        })
    quorum = len(members) // 2 + 1
    live = len(views)
    problems = []
    if live < quorum:
        problems.append(f"only {live} of {len(members)} nodes answer (quorum is {quorum})")
    count = len(first.partitions)
    partitions = []
    for p in range(count):
        rows = {nid: v.partitions[p] for nid, v in views.items() if p < len(v.partitions)}
        claims = [(r.term, nid) for nid, r in rows.items()
                  if r.role.name == "LEADER" and r.leader == nid]
        entry: dict[str, Any] = {"partition": p, "leader": 0, "term": 0, "commit": 0,
                                 "applied": 0, "replicas": []}
        if claims:
            _, leader = max(claims)
            row = rows[leader]
            entry.update(leader=leader, term=row.term, commit=row.commit, applied=row.applied)
            match = {rp.node_id: rp.match for rp in row.progress}
            for n in members:
                other = rows.get(n.node_id)
                m = match.get(n.node_id)
                entry["replicas"].append({
                    "node": n.node_id,
                    "up": other is not None,
                    "role": other.role.name.lower() if other is not None else None,
                    "match": m,
                    "lag": None if m is None else max(0, row.commit - m),
                    "applied": other.applied if other is not None else None,
                })
        else:
            terms = [r.term for r in rows.values()]
            entry["term"] = max(terms, default=0)
            entry["replicas"] = [
                {"node": n.node_id, "up": n.node_id in rows,
                 "role": rows[n.node_id].role.name.lower() if n.node_id in rows else None,
                 "match": None, "lag": None,
                 "applied": rows[n.node_id].applied if n.node_id in rows else None}
                for n in members
            ]
            problems.append(f"partition {p} has no leader")
        partitions.append(entry)
    view = ClusterView(first.cluster_id, nodes, partitions, problems)
    for node in nodes:
        node["leading"] = view.leader_counts().get(node["id"], 0)
    return view


def fetch(ctl: CtlContext) -> ClusterView:
    node_timeout = min(ctl.timeout, NODE_TIMEOUT_CAP)

    async def body(client: Any) -> ClusterView:
        return await gather(client, node_timeout)

    return ctl.run_client(body)


def render(view: ClusterView) -> str:
    up = sum(n["up"] for n in view.nodes)
    head = (f"cluster {view.cluster_id}: {len(view.nodes)} nodes ({up} up), "
            f"{len(view.partitions)} partitions")
    nodes = table(
        ["NODE", "ADDRESS", "STATE", "VERSION", "LEADS", "ERROR"],
        [[n["id"], n["address"], "up" if n["up"] else "DOWN", n["version"] or "-",
          n["leading"], n["error"] or ""]
         for n in view.nodes],
    )
    rows = []
    for p in view.partitions:
        lag = " ".join(
            f"{r['node']}:{'down' if not r['up'] else ('?' if r['lag'] is None else r['lag'])}"
            for r in p["replicas"]
        )
        rows.append([p["partition"], p["leader"] or "NONE", p["term"], p["commit"],
                     p["applied"], lag])
    parts = table(["PARTITION", "LEADER", "TERM", "COMMIT", "APPLIED", "LAG(node:entries)"], rows)
    verdict = "healthy" if view.healthy else "UNHEALTHY: " + "; ".join(view.problems)
    return f"{head}\n\n{nodes}\n\n{parts}\n\n{verdict}"


@click.command()
@pass_ctl
@translate_errors
def status(ctl: CtlContext) -> None:
    """Show nodes and partitions; exit 0 iff the cluster is healthy.

    Healthy means: every partition has a leader and a quorum of nodes answers.
    LAG is the leader's commit index minus each replica's match index.

    \b
    Example:
      prkctl --seeds 127.0.0.1:8080 status
      prkctl --json status | jq '.partitions[] | {partition, leader}'
      until prkctl status >/dev/null; do sleep 1; done   # wait for health
    """
    view = fetch(ctl)
    ctl.emit(view.to_json(), render(view))
    if not view.healthy:
        # The table (or JSON) is on stdout; the verdict also on stderr, exit 1.
        raise PrkctlError("unhealthy: " + "; ".join(view.problems))
