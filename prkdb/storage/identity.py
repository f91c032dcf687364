"""Whose data dir is this? The `IDENTITY` file written at a data dir's first start.

Theory of operation
-------------------
A data dir holds one node's votes and acknowledged entries for one cluster.
Started under another configuration it silently serves the wrong data: a
dev cluster's dir reused by a production config, alpha's keys served as
cluster beta, a dir written with 8 partitions read with 4 (keys map to other
partitions and answer "not found"). So the first start writes, durably and
atomically, who the dir belongs to, and every start compares:

- cluster id, node id, partition count: must equal the configuration's,
  else the node refuses to start (`IdentityMismatch`, exit 2) naming both
  values and the fix;
- key rule (prkdb.partitioning): how keys map to partitions. A dir written
  before hash tags existed records none and keeps the whole-key rule
  ``"crc32"``, so its keys stay in their partitions; a new dir records the
  configured rule (``"hashtag"`` unless the configuration says otherwise). A
  configured rule that differs from the recorded one is refused;
- format version: the on-disk format the dir was written in (a newer one
  than this code knows is refused);
- data dir id: 16 random bytes (hex), also stamped into every WAL segment
  header (record.py), so a segment copied from another dir is recognised,
  and peers can tell that a member's disk was swapped.

The file is JSON with a CRC over its canonical body, so a damaged identity
is refused (`IdentityError`) rather than guessed at. It is written to a
temp file, fsynced, renamed, and the directory fsynced.
"""

from __future__ import annotations

import json
import os
import secrets
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from prkdb.partitioning import DEFAULT_KEY_RULE, KEY_RULES, KeyRule
from prkdb.storage.errors import StorageError
from prkdb.storage.segment import fsync_dir

IDENTITY_FILE = "IDENTITY"
# 1: data dirs written before the identity existed (segment header v1).
# 2: IDENTITY file; WAL segment headers carry the size and the data dir id.
FORMAT_VERSION = 2


class IdentityError(StorageError):
    """The IDENTITY file exists but cannot be trusted (unreadable, bad CRC, too new)."""


class IdentityMismatch(StorageError):
    """The data dir belongs to another cluster, node or partition count than configured.

    Attributes:
        diffs: (setting, value in the data dir, value in the configuration).
    """

    def __init__(self, path: Path, diffs: list[tuple[str, object, object]]) -> None:
        self.path = path
        self.diffs = diffs
        what = "; ".join(f"{k} is {disk!r} in the data dir but {cfg!r} in the configuration"
                         for k, disk, cfg in diffs)
        super().__init__(
            f"{path.parent} belongs to another cluster layout: {what}. Either point "
            f"node.data_dir at this node's own data dir, or fix the configuration to match "
            f"the data dir (the partition count is fixed for a cluster's life)"
        )


@dataclass(frozen=True)
class DataDirIdentity:
    """Who a data dir belongs to (see the module docstring)."""

    cluster_id: str
    node_id: int
    partitions: int
    format_version: int
    data_dir_id: str  # 32 lowercase hex digits
    created_by: str = ""  # prkdb version that created the dir (informational)
    # How keys map to partitions; "" = written before hash tags (see `rule`).
    key_rule: str = ""

    @classmethod
    def new(cls, cluster_id: str, node_id: int, partitions: int,
            created_by: str = "", key_rule: str = DEFAULT_KEY_RULE) -> DataDirIdentity:
        return cls(cluster_id, node_id, partitions, FORMAT_VERSION, secrets.token_hex(16),
                   created_by, key_rule)

    @property
    def rule(self) -> KeyRule:
        """The key rule this dir's data was placed with ("crc32" for a dir from before)."""
        return "hashtag" if self.key_rule == "hashtag" else "crc32"

    @property
    def dir_id_bytes(self) -> bytes:
        """The 16 bytes stamped into WAL segment headers."""
        return bytes.fromhex(self.data_dir_id)

    def mismatches(self, cluster_id: str, node_id: int, partitions: int,
                   key_rule: str = "") -> list[tuple[str, object, object]]:
        """(setting, on disk, configured) for every setting that differs.

        An empty `key_rule` (not configured) matches any recorded rule.
        """
        out: list[tuple[str, object, object]] = []
        for name, disk, cfg in (("node.cluster_id", self.cluster_id, cluster_id),
                                ("node.id", self.node_id, node_id),
                                ("cluster.partitions", self.partitions, partitions)):
            if disk != cfg:
                out.append((name, disk, cfg))
        if key_rule and key_rule != self.rule:
            out.append(("cluster.key_rule", self.rule, key_rule))
        return out

    def check(self, path: Path, cluster_id: str, node_id: int, partitions: int,
              key_rule: str = "") -> None:
        """Raise IdentityMismatch unless the configuration matches (path: the file)."""
        diffs = self.mismatches(cluster_id, node_id, partitions, key_rule)
        if diffs:
            raise IdentityMismatch(path, diffs)


def _body(ident: DataDirIdentity) -> str:
    doc = asdict(ident)
    if not doc["key_rule"]:
        # Written before the field existed: its CRC covers the body without it.
        del doc["key_rule"]
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def read_identity(data_dir: str | Path) -> DataDirIdentity | None:
    """The data dir's identity, or None if it has no IDENTITY file.

    Raises:
        IdentityError: the file is unreadable, fails its CRC, or was written by
            a newer format than this code knows.
    """
    path = Path(data_dir) / IDENTITY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"{path}: cannot read the data dir identity: {e}") from None
    try:
        doc = json.loads(raw)
        crc = doc.pop("crc32")
        ident = DataDirIdentity(
            cluster_id=str(doc["cluster_id"]), node_id=int(doc["node_id"]),
            partitions=int(doc["partitions"]), format_version=int(doc["format_version"]),
            data_dir_id=str(doc["data_dir_id"]), created_by=str(doc.get("created_by", "")),
            key_rule=str(doc.get("key_rule", "")))
        if ident.key_rule not in ("", *KEY_RULES):
            raise ValueError(f"key_rule {ident.key_rule!r} is not one of {KEY_RULES}")
        if len(ident.data_dir_id) != 32:
            raise ValueError(f"data_dir_id {ident.data_dir_id!r} is not 32 hex digits")
        bytes.fromhex(ident.data_dir_id)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IdentityError(
            f"{path}: the data dir identity is damaged ({e}); this file says which cluster "
            f"and node the data belongs to and must not be guessed: restore it from a copy, "
            f"or treat the node as lost (docs/operations.md, 'Rebuild one node')"
        ) from None
    if zlib.crc32(_body(ident).encode()) != crc:
        raise IdentityError(
            f"{path}: the data dir identity fails its checksum (crc32 {crc} does not match "
            f"its content); restore it from a copy, or treat the node as lost "
            f"(docs/operations.md, 'Rebuild one node')"
        )
    if ident.format_version > FORMAT_VERSION:
        raise IdentityError(
            f"{path}: written in on-disk format {ident.format_version}, this prkdb reads "
            f"formats up to {FORMAT_VERSION}; run the newer prkdb that wrote it"
        )
    return ident


def write_identity(data_dir: str | Path, ident: DataDirIdentity) -> Path:
    """Durably and atomically write IDENTITY (temp file, fsync, rename, dir fsync)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    body = _body(ident)
    doc = json.loads(body)
    doc["crc32"] = zlib.crc32(body.encode())
    path = data_dir / IDENTITY_FILE
    tmp = path.with_name(IDENTITY_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, sort_keys=True, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)
    return path
