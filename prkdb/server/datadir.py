"""Opening a node's data dir: check whose it is, then open the WAL and snapshots.

One place does this, in this order, for `prkdb serve` (node.py), for the
rebuild's survey step and for the tests that check what a node would do
with a damaged dir:

1. `ensure_identity`: read IDENTITY and compare it with the configuration
   (a mismatch refuses to start); on a first start write it.
2. `open_storage`: replay the WAL (segments must carry this dir's id), and
   check that it holds no partition the configuration does not have.
"""

from __future__ import annotations

from pathlib import Path

from prkdb import __version__
from prkdb.config import NodeConfig
from prkdb.logging import NodeLogger
from prkdb.partitioning import DEFAULT_KEY_RULE
from prkdb.storage import SnapshotStore, WriteAheadLog
from prkdb.storage.identity import (
    IDENTITY_FILE,
    DataDirIdentity,
    IdentityError,
    IdentityMismatch,
    read_identity,
    write_identity,
)
from prkdb.storage.record import (
    NO_DIR_ID,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    decode_segment_header,
)
from prkdb.storage.recovery import list_segments

WAL_DIR = "wal"
SNAPSHOT_DIR = "snapshots"


def ensure_identity(cfg: NodeConfig, log: NodeLogger) -> DataDirIdentity:
    """The data dir's identity, checked against `cfg`; written on a first start.

    A dir that already holds a WAL but no IDENTITY was written by a prkdb
    from before identities existed: it is adopted (identity written from the
    configuration, logged as a warning); its WAL is still checked for
    partitions beyond the configured count when it is opened.

    Raises:
        IdentityMismatch: cluster id, node id or partition count differ.
        IdentityError: the IDENTITY file is damaged or from a newer format.
    """
    path = cfg.data_dir / IDENTITY_FILE
    ident = read_identity(cfg.data_dir)
    if ident is not None:
        ident.check(path, cfg.cluster_id, cfg.node_id, cfg.partitions, cfg.key_rule)
        if not ident.key_rule:
            log.info("data_dir_key_rule_legacy", key_rule=ident.rule,
                     detail="a data dir from before hash tags: keys keep mapping by their "
                            "whole key; see docs/operations.md, 'Hash tags'")
        return ident
    wal_dir = cfg.data_dir / WAL_DIR
    segments = list_segments(wal_dir) if wal_dir.is_dir() else []
    stamped = sorted({h.dir_id.hex() for _, path in segments
                      if (h := _header(path)) is not None and h.dir_id not in (None, NO_DIR_ID)})
    if stamped:
        # Written by a prkdb that writes identities: the file was lost, and
        # guessing it (a new id) would make every segment look foreign.
        raise IdentityError(
            f"{path_of(cfg)}: the data dir identity is missing, but its WAL was written with "
            f"one (data dir id {', '.join(stamped)}): restore the IDENTITY file from a copy, "
            f"or treat the node as lost (docs/operations.md, 'Rebuild one node')")
    legacy = bool(segments)
    # A legacy WAL was placed by whole-key hashing: record that rule ("" in
    # the file reads as "crc32"), unless the configuration names one.
    rule = cfg.key_rule or ("" if legacy else DEFAULT_KEY_RULE)
    ident = DataDirIdentity.new(cfg.cluster_id, cfg.node_id, cfg.partitions, __version__, rule)
    write_identity(cfg.data_dir, ident)
    if legacy:
        log.warning("data_dir_identity_adopted", file=str(path), cluster_id=cfg.cluster_id,
                    node_id=cfg.node_id, partitions=cfg.partitions,
                    detail="a data dir from before identities: now bound to this "
                           "configuration")
    else:
        log.info("data_dir_identity_created", file=str(path), data_dir_id=ident.data_dir_id)
    return ident


def path_of(cfg: NodeConfig) -> Path:
    return cfg.data_dir / IDENTITY_FILE


def _header(path: Path) -> SegmentHeader | None:
    with open(path, "rb") as f:
        return decode_segment_header(f.read(SEGMENT_HEADER_SIZE))


def open_storage(cfg: NodeConfig, ident: DataDirIdentity, log: NodeLogger
                 ) -> tuple[WriteAheadLog, SnapshotStore]:
    """Replay the WAL and open the snapshot store of a checked data dir.

    Raises:
        WalCorruptionError: damage that is not a provable torn tail.
        IdentityMismatch: the WAL holds partitions the configuration lacks.
    """
    wal = WriteAheadLog.open(cfg.data_dir / WAL_DIR, segment_size=cfg.storage.segment_size,
                             data_dir_id=ident.dir_id_bytes, logger=log)
    extra = sorted(p for p in wal.recovered() if p >= cfg.partitions)
    if extra:
        wal.close()
        raise IdentityMismatch(cfg.data_dir / IDENTITY_FILE, [
            ("cluster.partitions", f"at least {extra[-1] + 1} (the WAL holds partition "
                                   f"{extra[-1]})", cfg.partitions)])
    snapshots = SnapshotStore(cfg.data_dir / SNAPSHOT_DIR, logger=log,
                              data_dir_id=ident.dir_id_bytes)
    return wal, snapshots
