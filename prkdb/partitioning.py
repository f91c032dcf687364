"""Key -> partition, shared by the server and every client.

The mapping must never change for a given partition count, or a client would
route a key to a partition that does not hold it: it is `crc32(key) % P`
(zlib's CRC-32, IEEE polynomial), which any language can reproduce. The
partition count is fixed when a cluster is created.
"""

from __future__ import annotations

import zlib


def partition_for(key: bytes, partitions: int) -> int:
    """The partition (0-based) that owns `key` in a cluster of `partitions`."""
    if partitions <= 0:
        raise ValueError(f"partitions ({partitions}) must be > 0")
    return zlib.crc32(key) % partitions
