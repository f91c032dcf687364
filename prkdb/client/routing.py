"""Where a request goes: seed addresses, the cached topology, read targets.

Theory of operation
-------------------
The client knows nothing about the cluster but its seeds. A `Status` to any
node returns every member's client address and, per partition, the leader
*as that node sees it*. `Topology` caches that answer:

- ``nodes``: node id -> "host:port" (the node's ``client_addr``);
- ``leaders``: partition -> leader node id, 0 = unknown;
- ``partitions`` and ``key_rule``: the partition count and the key rule
  (both fixed for a cluster's life), which `partition_of` needs to route a
  key (`prkdb.partitioning`: hash tags).

The cache is only a hint. A NOT_LEADER reply corrects one partition
(`set_leader` / `forget_leader`); a failed connection forgets every
partition that node led, so the next request asks another node for a fresh
`Status` instead of knocking on a dead leader's door until the deadline.

Invariants: ``leaders`` values are 0 or keys of ``nodes`` (a leader whose
address we do not know is as good as unknown). ``nodes`` changes only through
`apply_status` and `set_leader`, which drop the cached address orders that
every FOLLOWER/STALE read would otherwise sort again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

from prkdb.errors import InvalidRequest
from prkdb.partitioning import DEFAULT_KEY_RULE, KeyRule, partition_for
from prkdb.wire.messages import StatusOk

__all__ = ["Topology", "normalize_address", "split_address"]

_SCHEMES = ("http://", "tcp://", "prkdb://")


def normalize_address(address: str) -> str:
    """``"http://h:p/"``, ``"tcp://h:p"`` or ``"h:p"`` -> ``"h:p"``.

    The scheme is accepted (and dropped) because operators copy addresses from
    HTTP-style configs; PrkDB speaks only its own framing over plain TCP.

    Raises:
        InvalidRequest: not ``host:port`` with a port in 1..65535.
    """
    if not isinstance(address, str):
        raise InvalidRequest(f"address must be a str, got {type(address).__name__}")
    text = address.strip()
    lowered = text.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    else:
        if "://" in text:
            raise InvalidRequest(f"address {address!r}: unsupported scheme (use host:port)")
    text = text.rstrip("/")
    split_address(text, original=address)  # validate
    return text


def split_address(address: str, *, original: str | None = None) -> tuple[str, int]:
    """``"h:p"`` / ``"[v6]:p"`` -> ``(host, port)``.

    Raises:
        InvalidRequest: malformed, or the port is not in 1..65535.
    """
    shown = original if original is not None else address
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or "/" in address:
        raise InvalidRequest(f"address {shown!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidRequest(f"address {shown!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"address {shown!r}: port {port} is not in 1..65535")
    return host, port


@final
class Topology:
    """The client's cached view of members and partition leaders (a hint, never truth)."""

    __slots__ = ("_by_id", "_sorted", "key_rule", "leaders", "nodes", "partitions", "seeds",
                 "version")

    def __init__(self, seeds: Iterable[str]) -> None:
        #: Normalized seed addresses, in the order given; never forgotten.
        self.seeds: list[str] = list(dict.fromkeys(seeds))
        #: node id -> client address ("host:port").
        self.nodes: dict[int, str] = {}
        #: partition -> leader node id; 0 = unknown. Invariant: 0 or in `nodes`.
        self.leaders: dict[int, int] = {}
        #: Partition count; 0 until the first Status answer.
        self.partitions = 0
        #: How keys map to partitions (the cluster's rule; valid once `partitions` > 0).
        self.key_rule: KeyRule = DEFAULT_KEY_RULE
        #: Bumped on every `apply_status`, so waiters can tell a refresh happened.
        self.version = 0
        # Node addresses by node id / by address, derived from `nodes`; None = stale.
        self._by_id: tuple[str, ...] | None = None
        self._sorted: tuple[str, ...] | None = None

    def apply_status(self, status: StatusOk) -> None:
        """Replace the cache with one node's answer (its view of every leader)."""
        self.nodes = {n.node_id: n.client_addr for n in status.nodes}
        self._by_id = self._sorted = None
        self.partitions = len(status.partitions)
        self.key_rule = status.key_rule
        self.leaders = {
            p.partition: (p.leader if p.leader in self.nodes else 0) for p in status.partitions
        }
        self.version += 1

    def partition_of(self, key: bytes) -> int:
        """The partition that owns `key` (needs `partitions` > 0: a Status answer first)."""
        return partition_for(key, self.partitions, self.key_rule)

    def leader_of(self, partition: int) -> int:
        """The cached leader node id of `partition`, 0 if unknown."""
        return self.leaders.get(partition, 0)

    def address_of(self, node_id: int) -> str | None:
        return self.nodes.get(node_id)

    def set_leader(self, partition: int, node_id: int, address: str | None) -> None:
        """Record a NOT_LEADER hint; an address also teaches us the node."""
        if address and self.nodes.get(node_id) != address:
            self.nodes[node_id] = address
            self._by_id = self._sorted = None
        self.leaders[partition] = node_id if node_id in self.nodes else 0

    def addresses_by_id(self) -> tuple[str, ...]:
        """Every node's address, in node id order."""
        if self._by_id is None:
            self._by_id = tuple(self.nodes[n] for n in sorted(self.nodes))
        return self._by_id

    def sorted_addresses(self) -> tuple[str, ...]:
        """Every node's address, sorted by address."""
        if self._sorted is None:
            self._sorted = tuple(sorted(self.nodes.values()))
        return self._sorted

    def forget_leader(self, partition: int) -> None:
        self.leaders[partition] = 0

    def forget_node_leadership(self, address: str) -> None:
        """A node at `address` failed: stop routing leader traffic there."""
        for partition, node_id in self.leaders.items():
            if node_id and self.nodes.get(node_id) == address:
                self.leaders[partition] = 0

    def candidate_addresses(self, start: int = 0) -> list[str]:
        """Every address worth asking for Status: known nodes (rotated by `start`), then seeds."""
        known = [self.nodes[n] for n in sorted(self.nodes)]
        if known:
            k = start % len(known)
            known = known[k:] + known[:k]
        return list(dict.fromkeys([*known, *self.seeds]))
