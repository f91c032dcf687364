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

`ask_peers` is also how a rebuilding node surveys the others (rebuild.py).
With ``[tls]`` the node dials the client ports with its own certificate and
checks that the node answering names the member it asked (`NodeTls.dial`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import trio

from prkdb.config import NodeConfig, parse_addr
from prkdb.errors import ErrorCode, PrkdbError, ProtocolError, error_from_code
from prkdb.logging import NodeLogger
from prkdb.security.tls import NodeTls
from prkdb.server.auth import root_password
from prkdb.server.framed import FramedStream, StreamClosed
from prkdb.state.auth import ROOT
from prkdb.wire import PROTOCOL_VERSION, from_wire
from prkdb.wire.messages import (
    ROLE_CLIENT,
    Error,
    Hello,
    HelloOk,
    Login,
    RebuildFence,
    Status,
    StatusOk,
)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
ASK_TIMEOUT_S = 3.0
_MAX_FRAME = 16 * 1024 * 1024


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


class _Refused(Exception):
    """The peer's address answered, but not as a node of our cluster."""


async def fetch_status(cfg: NodeConfig, peer_id: int, *, fence: bool = False,
                       tls: NodeTls | None = None) -> StatusOk:
    """One peer's Status over its client port (raises OSError, PrkdbError, ...).

    `fence`: ask with RebuildFence (rebuild.py), so the peer first forgets
    every ack of our previous process before it answers.
    """
    peer = cfg.peer(peer_id)
    assert peer is not None
    host, port = parse_addr(peer.client_addr)
    raw = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = raw
    if tls is not None:
        stream = await tls.dial(raw, peer_id, peer.client_addr)  # TlsError: unreachable
    framed = FramedStream(stream, _MAX_FRAME)
    try:
        await framed.send_now(Hello(PROTOCOL_VERSION, cfg.cluster_id, ROLE_CLIENT, 0))
        reply = from_wire(await framed.receive())
        if isinstance(reply, Error) and reply.code == ErrorCode.BAD_VERSION:
            # A node of another version (a rolling upgrade): that says nothing
            # about its layout, so it counts as not reachable yet, not as a mismatch.
            raise ProtocolError(f"node {peer_id} speaks another protocol: {reply.message}")
        if not isinstance(reply, HelloOk):
            raise _Refused(f"node {peer_id} refused our hello: {reply!r:.200}")
        if fence and cfg.auth.enabled:
            # RebuildFence is an admin request: log in as root first (auth.py:
            # may_fence), and go on whatever the answer (it names the problem).
            password = root_password(cfg)
            if password is not None:
                await framed.send_now(Login(2, ROOT, password))
                await framed.receive()
        await framed.send_now(RebuildFence(1, cfg.node_id) if fence else Status(1))
        status = from_wire(await framed.receive())
        if isinstance(status, Error) and status.code in (ErrorCode.UNAUTHENTICATED,
                                                         ErrorCode.PERMISSION_DENIED):
            # Not a layout mismatch: the peer refuses us (an unreachable one, to the caller).
            raise error_from_code(status.code, f"node {peer_id} refused RebuildFence: "
                                  f"{status.message} (give this node the cluster's root "
                                  "password file, or a node certificate)")
        if not isinstance(status, StatusOk):
            raise _Refused(f"node {peer_id} answered Status with {status!r:.200}")
        return status
    finally:
        await framed.aclose()


@dataclass
class Survey:
    """What asking some peers gave: agreeing answers, layouts that differ, silence."""

    answers: dict[int, StatusOk] = field(default_factory=dict)
    mismatched: dict[int, str] = field(default_factory=dict)  # peer -> what differs
    unreachable: dict[int, str] = field(default_factory=dict)  # peer -> why no answer


async def ask_peers(cfg: NodeConfig, peer_ids: list[int], timeout: float, *,
                    fence: bool = False, tls: NodeTls | None = None) -> Survey:
    """Ask `peer_ids` for their Status in parallel, each within `timeout`."""
    survey = Survey()

    async def ask(peer_id: int) -> None:
        try:
            with trio.fail_after(timeout):
                st = await fetch_status(cfg, peer_id, fence=fence, tls=tls)
        except _Refused as e:
            survey.mismatched[peer_id] = str(e)
        except (OSError, PrkdbError, StreamClosed, trio.TooSlowError,
                trio.BrokenResourceError) as e:
            survey.unreachable[peer_id] = str(e) or type(e).__name__
        else:
            problem = layout_problem(cfg, peer_id, st)
            if problem is None:
                survey.answers[peer_id] = st
            else:
                survey.mismatched[peer_id] = problem

    async with trio.open_nursery() as nursery:
        for pid in peer_ids:
            nursery.start_soon(ask, pid)
    return survey


class Quarantine(Protocol):
    def quarantine(self, peer_id: int, reason: str) -> None: ...


async def check_peer_layouts(cfg: NodeConfig, transport: Quarantine, log: NodeLogger,
                             tls: NodeTls | None = None) -> None:
    """Ask every peer once (retrying the ones that cannot be reached); quarantine disagreement."""
    pending = [p.id for p in cfg.peers if p.id != cfg.node_id]
    delay = RETRY_FIRST_S
    while pending:
        survey = await ask_peers(cfg, pending, ASK_TIMEOUT_S, tls=tls)
        for peer_id, problem in survey.mismatched.items():
            transport.quarantine(peer_id, problem)
            log.error("config_mismatch", peer=peer_id, problem=problem,
                      detail="no Raft messages to or from this node until the configs "
                             "agree (fix the config, restart the wrong node)")
        pending = list(survey.unreachable)
        if pending:
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
