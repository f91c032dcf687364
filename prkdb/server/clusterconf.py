"""Render the TOML files of a whole cluster (one per node).

Used by `prkdb dev`, the benchmarks and the test harnesses, so there is one
place that knows how a node config is spelled (the full reference with every
key is conf/prkdb.toml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from prkdb.config import PeerConfig


def render_node_config(
    node_id: int,
    peers: Sequence[PeerConfig],
    *,
    cluster_id: str,
    data_dir: Path,
    partitions: int = 8,
    raft: Mapping[str, int] | None = None,
    log_format: str = "console",
    log_level: str = "info",
    extra: str = "",
    insecure: bool = False,
) -> str:
    """One node's TOML. `raft` overrides [raft] keys; `extra` is appended TOML tables.

    `insecure`: ``[node] insecure = true`` (listen beyond loopback without TLS and auth).
    """
    raft_lines = "".join(f"{k} = {v}\n" for k, v in (raft or {}).items())
    peer_tables = "".join(
        f'\n[[peers]]\nid = {p.id}\nclient = "{p.client_addr}"\npeer = "{p.peer_addr}"\n'
        for p in peers
    )
    insecure_line = "insecure = true\n" if insecure else ""
    return (
        f'[node]\nid = {node_id}\ncluster_id = "{cluster_id}"\ndata_dir = "{data_dir}"\n'
        f"{insecure_line}\n"
        f"[cluster]\npartitions = {partitions}\n\n"
        f"[raft]\n{raft_lines}\n"
        f'[log]\nformat = "{log_format}"\nlevel = "{log_level}"\n\n'
        f"{extra}{peer_tables}"
    )


def write_cluster_configs(
    root: Path,
    peers: Sequence[PeerConfig],
    *,
    cluster_id: str,
    data_dirs: Mapping[int, Path] | None = None,
    **kw: object,
) -> dict[int, Path]:
    """Write `root/node<i>.toml` for every peer; returns node id -> path."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p in peers:
        data_dir = (data_dirs or {}).get(p.id, root / f"node{p.id}")
        path = root / f"node{p.id}.toml"
        path.write_text(
            # `kw` is render_node_config's remaining keywords, passed through untyped.
            render_node_config(p.id, peers, cluster_id=cluster_id,
                               data_dir=Path(data_dir).resolve(), **kw)  # type: ignore[arg-type]
        )
        paths[p.id] = path
    return paths


def local_peers(nodes: int, port: int, host: str = "127.0.0.1") -> list[PeerConfig]:
    """Node i listens for clients on port+i-1 and for peers on port+100+i-1."""
    return [
        PeerConfig(i, f"{host}:{port + i - 1}", f"{host}:{port + 100 + i - 1}")
        for i in range(1, nodes + 1)
    ]
