"""Do the other nodes' configs agree with ours? Checked once per peer at start-up.

Every node has its own copy of the cluster layout (cluster id, the member
ids, the partition count). Copies that disagree are an operator's typo away,
and the Raft groups then disagree on who votes: with two nodes that list
each other but not the rest, two majorities of one term can both elect.
The peer handshake checks only the cluster id, so a node asks each peer for
its Status (client port) until every peer has answered once, and a peer
whose layout differs is quarantined: nothing is sent to it and nothing from
it is delivered, and an error log names the difference. A peer
that cannot be asked yet (down, or its client port unreachable) is asked
again with backoff; meanwhile it is treated as agreeing (the handshake's
cluster-id check still holds), so a slow peer never costs availability.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from prkdb.config import NodeConfig
from prkdb.wire.messages import StatusOk

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
ASK_TIMEOUT_S = 3.0


def layout_problem(cfg: NodeConfig, peer_id: int, st: StatusOk) -> str | None:
    """Why `peer_id`'s Status shows a layout other than ours, or None if it agrees."""
    if st.node_id != peer_id:
        return f"the address of node {peer_id} answers as node {st.node_id}"
    if st.cluster_id != cfg.cluster_id:
        return f"node {peer_id} is in cluster {st.cluster_id!r}, we are in {cfg.cluster_id!r}"
    theirs = sorted(n.node_id for n in st.nodes)
    ours = sorted(p.id for p in cfg.peers)
    if theirs != ours:
        return f"node {peer_id} lists nodes {theirs}, this node's config lists {ours}"
    parts = {p.partition for p in st.partitions}
    if parts != set(range(cfg.partitions)):
        return (f"node {peer_id} has {len(parts)} partitions, this node's config says "
                f"{cfg.partitions}")
    return None


class Quarantine(Protocol):
    def quarantine(self, peer_id: int, reason: str) -> None: ...


async def check_peer_layouts(cfg: NodeConfig, transport: Quarantine, log: Any) -> None:
    """Ask every peer once (retrying the ones that cannot be reached); quarantine disagreement."""
    from prkdb.server.rebuild import survey_once  # the same Status round trip (import cycle)

    pending = [p.id for p in cfg.peers if p.id != cfg.node_id]
    delay = RETRY_FIRST_S
    while pending:
        answers, _ = await survey_once(cfg, pending, ASK_TIMEOUT_S, check=False)
        for peer_id, st in answers.items():
            problem = layout_problem(cfg, peer_id, st)
            if problem is not None:
                transport.quarantine(peer_id, problem)
                log.error("config_mismatch", peer=peer_id, problem=problem,
                          detail="no Raft messages to or from this node until the configs "
                                 "agree (fix the config, restart the wrong node)")
        pending = [p for p in pending if p not in answers]
        if pending:
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
