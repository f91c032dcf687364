"""Key -> partition, shared by the server and every client.

The mapping must never change for a given cluster, or a client would route a
key to a partition that does not hold it. A cluster fixes two things at
creation: its partition count and its *key rule*:

- ``"hashtag"`` (every cluster created since hash tags exist): if the key
  holds a ``{`` and, after it, a ``}`` with at least one byte between them,
  only the bytes between the first ``{`` and the first ``}`` after it are
  hashed, as in Redis Cluster. ``user:{42}:name`` and ``user:{42}:mail`` then
  share a partition, so one transaction, batch or lease can cover both. A key
  without such braces (``{}`` is empty, so it does not count) is hashed whole.
- ``"crc32"``: the whole key is always hashed. Data dirs written before hash
  tags existed record no rule and keep this one, so their keys stay where
  they are (a key with braces would move under the new rule).

The hash is ``crc32(hashed bytes) % partitions`` (zlib's CRC-32, IEEE
polynomial), which any language can reproduce. The two rules agree on every
key without a non-empty ``{...}``.
"""

from __future__ import annotations

import zlib
from typing import Final, Literal, TypeAlias

__all__ = ["DEFAULT_KEY_RULE", "KEY_RULES", "KeyRule", "hash_slice", "partition_for"]

KeyRule: TypeAlias = Literal["hashtag", "crc32"]

#: Every rule a cluster may record, newest first.
KEY_RULES: Final[tuple[KeyRule, ...]] = ("hashtag", "crc32")

#: The rule of a newly created cluster.
DEFAULT_KEY_RULE: Final[KeyRule] = "hashtag"


def hash_slice(key: bytes) -> bytes:
    """The bytes of `key` that choose its partition under the ``"hashtag"`` rule."""
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end <= start + 1:  # no closing brace, or "{}" (empty tag): the whole key
        return key
    return key[start + 1 : end]


def partition_for(key: bytes, partitions: int, rule: KeyRule = DEFAULT_KEY_RULE) -> int:
    """The partition (0-based) that owns `key` in a cluster of `partitions` under `rule`."""
    if partitions <= 0:
        raise ValueError(f"partitions ({partitions}) must be > 0")
    if rule == "hashtag":
        if b"{" in key:
            key = hash_slice(key)
        return zlib.crc32(key) % partitions
    if rule == "crc32":
        return zlib.crc32(key) % partitions
    raise ValueError(f"unknown key rule {rule!r} (known: {', '.join(KEY_RULES)})")
