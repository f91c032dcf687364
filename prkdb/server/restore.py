"""`prkdb restore FILE --config NODE.toml`: one node's data dir of a new cluster, from a backup.

Theory of operation
-------------------
Every node of the new cluster is restored from the same backup file with its
own configuration; then `prkdb serve` starts each one on its data dir as if
it had taken those snapshots itself:

1. Refuse (`RestoreRefused`, exit 2) a data dir that holds anything.
2. Verify the whole backup (prkdb/backupfile.py: tar, manifest, every
   member's SHA-256, every snapshot's header and CRC) and decode every
   partition's state as the node will at start. A damaged backup is refused
   with exit 1, before anything is written.
3. Refuse (exit 2) a configuration whose partition count differs from the
   backup's (keys would map to other partitions), and one whose cluster id
   equals the backup's unless ``keep_cluster_id``: a restored cluster must
   not be mistaken for (or mixed with) the live one it was taken from.
4. Write, in this order: IDENTITY (storage/identity.py), each partition's
   snapshot (SnapshotStore.save, with the NEW cluster's voters), then the
   WAL (opened as datadir.open_storage opens it) with, per partition, the
   snapshot marker and a hard state (term = the snapshot's term, no vote,
   commit = the snapshot's index); one sync, close.

   The order makes an interrupted restore safe to start: without a WAL the
   node counts as one that lost its log (rebuild.py `log_lost`) and does not
   vote; the snapshots are durable before any WAL record names them. An
   interrupted restore is redone by emptying the data dir.

At start, `recover_partition` loads the snapshot (state machine at its
index), takes commit = the snapshot index from the hard state, and the
partition's log begins right after the snapshot: every node has the same
(index, term), so any of them can be elected and the others need nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prkdb import __version__
from prkdb.backupfile import (
    BackupFileError,
    Manifest,
    iter_snapshots,
    snapshot_data,
    verify_backup,
)
from prkdb.config import NodeConfig
from prkdb.raft.types import ConfState, HardState, Snapshot, SnapshotMeta
from prkdb.server.datadir import SNAPSHOT_DIR, WAL_DIR
from prkdb.server.recovery import new_state_machine
from prkdb.storage import SnapshotStore, WriteAheadLog
from prkdb.storage.identity import DataDirIdentity, write_identity


class RestoreRefused(Exception):
    """The restore cannot go ahead; `exit_code` 1 = the backup is damaged, 2 = usage."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RestoreReport:
    manifest: Manifest
    data_dir: Path
    identity: DataDirIdentity


def check_data_dir_empty(data_dir: Path) -> None:
    """Raise RestoreRefused (exit 2) unless `data_dir` is absent or an empty directory."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise RestoreRefused(f"{data_dir} exists and is not a directory", 2)
    found = sorted(p.name for p in data_dir.iterdir())
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise RestoreRefused(
            f"data dir {data_dir} is not empty (holds {shown}): restore only builds a new "
            f"node's data dir. Point --data-dir (or node.data_dir) at an empty or new "
            f"directory, or move this one away first", 2)


def verify(path: Path, cfg: NodeConfig) -> Manifest:
    """Check the backup completely, decoding each partition's state (step 2).

    Raises:
        RestoreRefused: exit 1, naming what is damaged.
    """
    try:
        manifest = verify_backup(path)
        for entry, raw, info in iter_snapshots(path, manifest):
            sm = new_state_machine(cfg, entry.partition)
            try:
                decoded = sm.decode_snapshot(snapshot_data(raw, info))
            except Exception as e:  # SnapshotDecodeError, or a limit of this config
                raise BackupFileError(f"{path}: {entry.member} (partition {entry.partition}): "
                                      f"the state does not decode: {e}") from None
            if decoded.applied > info.index:
                raise BackupFileError(
                    f"{path}: {entry.member}: state applied up to {decoded.applied}, past "
                    f"the snapshot index {info.index}")
    except BackupFileError as e:
        raise RestoreRefused(f"backup refused: {e}", 1) from None
    except OSError as e:
        raise RestoreRefused(f"backup unreadable: {e}", 1) from None
    return manifest


def check_config(manifest: Manifest, cfg: NodeConfig, *, keep_cluster_id: bool) -> None:
    """Step 3: partition count and cluster id (RestoreRefused, exit 2)."""
    if manifest.partitions != cfg.partitions:
        raise RestoreRefused(
            f"the backup has {manifest.partitions} partitions but the configuration says "
            f"cluster.partitions = {cfg.partitions}; a key's partition depends on the count, "
            f"so set cluster.partitions = {manifest.partitions} for the restored cluster", 2)
    if cfg.key_rule and cfg.key_rule != manifest.key_rule:
        raise RestoreRefused(
            f"the backup's cluster maps keys with key rule {manifest.key_rule!r} but the "
            f"configuration says cluster.key_rule = {cfg.key_rule!r}; keys would be looked for "
            f"in other partitions, so set cluster.key_rule = {manifest.key_rule!r} or leave it "
            f"out", 2)
    if manifest.cluster_id == cfg.cluster_id and not keep_cluster_id:
        raise RestoreRefused(
            f"the configuration's cluster id {cfg.cluster_id!r} is the backup's: a restored "
            f"cluster gets a new id so that it is never mistaken for, or joined to, the "
            f"cluster it was taken from. Set node.cluster_id to a new id in every node's "
            f"config, or pass --keep-cluster-id if the old cluster is gone for good", 2)


def restore(path: Path, cfg: NodeConfig, *, keep_cluster_id: bool = False,
            log: Callable[[str], None] | None = None) -> RestoreReport:
    """Build `cfg.data_dir` from the backup at `path` (module docstring).

    Args:
        log: optional ``log(message)`` for progress lines.

    Raises:
        RestoreRefused: exit_code 1 (damaged backup) or 2 (data dir or config).
        OSError, StorageError: writing failed (the data dir must be emptied
            before trying again).
    """
    say = log or (lambda msg: None)
    path = Path(path)
    data_dir = cfg.data_dir
    check_data_dir_empty(data_dir)
    manifest = verify(path, cfg)
    say(f"backup ok: cluster {manifest.cluster_id!r}, {manifest.partitions} partitions, "
        f"{manifest.total_bytes} bytes, taken {manifest.created}")
    check_config(manifest, cfg, keep_cluster_id=keep_cluster_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    check_data_dir_empty(data_dir)  # nobody wrote into it while we verified

    ident = DataDirIdentity.new(cfg.cluster_id, cfg.node_id, cfg.partitions, __version__,
                                manifest.key_rule)
    write_identity(data_dir, ident)
    store = SnapshotStore(data_dir / SNAPSHOT_DIR, data_dir_id=ident.dir_id_bytes)
    voters = ConfState(tuple(cfg.voter_ids))
    metas: list[SnapshotMeta] = []
    for entry, raw, info in iter_snapshots(path, manifest):
        meta = SnapshotMeta(info.index, info.term, voters)
        store.save(entry.partition, Snapshot(meta, snapshot_data(raw, info)))
        metas.append(meta)
        say(f"partition {entry.partition}: snapshot at index {info.index} term {info.term}")
    wal = WriteAheadLog.open(data_dir / WAL_DIR, segment_size=cfg.storage.segment_size,
                             data_dir_id=ident.dir_id_bytes)
    try:
        for p, meta in enumerate(metas):
            wal.append_snapshot_marker(p, meta)
            wal.append_hard_state(p, HardState(meta.term, 0, meta.index))
        wal.sync()
    finally:
        wal.close()
    _check_written(cfg, ident, metas)
    return RestoreReport(manifest, data_dir, ident)


def _check_written(cfg: NodeConfig, ident: DataDirIdentity, metas: list[SnapshotMeta]) -> None:
    """Reopen the WAL as the node will and check each partition's marker and hard state."""
    wal = WriteAheadLog.open(cfg.data_dir / WAL_DIR, segment_size=cfg.storage.segment_size,
                             data_dir_id=ident.dir_id_bytes)
    try:
        got = wal.recovered()
        for p, meta in enumerate(metas):
            plog = got.get(p)
            if plog is None or plog.snapshot_index != meta.index or \
                    plog.hard_state.commit != meta.index:
                raise RuntimeError(f"partition {p}: the restored WAL does not read back "
                                   f"(marker/hard state {plog and plog.snapshot_index})")
    finally:
        wal.close()

