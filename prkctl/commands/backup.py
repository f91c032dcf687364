"""`prkctl backup FILE`: an online backup of every partition (prkdb/backupfile.py).

Each partition's leader snapshots it at an index that covers every write
acknowledged before it was asked (prkdb/server/backup.py); the snapshot file
is streamed from that node in chunks into a temp file next to FILE, checked
(size, SHA-256, its own CRC), and once all partitions are in, FILE.tmp is
written as a tar with a manifest, fsynced and renamed to FILE.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import click

from prkctl.context import CtlContext, pass_ctl, translate_errors
from prkctl.errors import PrkctlError
from prkdb import __version__
from prkdb.backupfile import (
    BackupFileError,
    PartitionEntry,
    member_name,
    new_manifest,
    verify_snapshot_stream,
    write_backup,
)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--snapshot-timeout", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True,
              help="Seconds a partition's leader gets to take its snapshot.")
@click.option("--retries", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Attempts per partition (a node may drop the snapshot file mid-copy).")
@pass_ctl
@translate_errors
def backup(ctl: CtlContext, file: Path, force: bool, snapshot_timeout: float,
           retries: int) -> None:
    """Back up every partition of a running cluster into FILE (a tar), online.

    Each partition is snapshotted by its leader at a committed index that
    covers every write acknowledged before the command started; writes may
    go on meanwhile. Partitions are taken one after another: there is no
    single cross-partition point in time. Restore with `prkdb restore`.

    \b
    Example:
      prkctl --seeds 10.0.0.1:8080 backup /backups/prkdb-$(date +%F).tar
      prkdb restore /backups/prkdb-2024-05-01.tar --config /etc/prkdb/node1.toml
    """
    if file.exists() and not force:
        raise click.BadParameter(f"{file} exists (pass --force to replace it)",
                                 param_hint="FILE")
    parent = file.resolve().parent
    if not parent.is_dir():
        raise click.BadParameter(f"directory {parent} does not exist", param_hint="FILE")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        files: dict[int, IO[bytes]] = {}

        def temp_file() -> IO[bytes]:
            return stack.enter_context(tempfile.TemporaryFile(dir=parent,
                                                              prefix=f".{file.name}."))

        async def body(client: Any) -> tuple[str, str, list[PartitionEntry]]:
            st = await client.status()
            count = len(st.partitions)
            entries = []
            for p in range(count):
                out = files[p] = temp_file()
                t0 = time.monotonic()
                got = await client.backup_partition(p, out, attempts=retries,
                                                    begin_timeout=snapshot_timeout)
                entries.append(PartitionEntry(p, member_name(p), got.index, got.term, got.size,
                                              got.sha256.hex(), got.node_id))
                click.echo(f"partition {p + 1}/{count} (p{p}): index {got.index} term "
                           f"{got.term} from node {got.node_id}, {_mib(got.size)} in "
                           f"{time.monotonic() - t0:.2f}s", err=True)
            return st.cluster_id, st.key_rule, entries

        cluster_id, key_rule, entries = ctl.run_client(body)
        for e in entries:  # the node checked its file; check what we got too
            f = files[e.partition]
            f.seek(0)
            try:
                info = verify_snapshot_stream(f, e.bytes, f"partition {e.partition}")
            except BackupFileError as exc:
                raise PrkctlError(f"backup not written: {exc}") from None
            if (info.partition, info.index, info.term, info.sha256) != \
                    (e.partition, e.index, e.term, e.sha256):
                raise PrkctlError(f"backup not written: partition {e.partition}: the copied "
                                  f"snapshot is not the one its node announced")
        manifest = new_manifest(cluster_id, len(entries), __version__, entries, key_rule)
        write_backup(file, manifest, files)
    summary = {
        "file": str(file),
        "cluster_id": manifest.cluster_id,
        "partitions": manifest.partitions,
        "bytes": manifest.total_bytes,
        "created": manifest.created,
        "prkdb_version": manifest.prkdb_version,
        "seconds": round(time.monotonic() - started, 3),
        "snapshots": [{"partition": e.partition, "index": e.index, "term": e.term,
                       "bytes": e.bytes, "sha256": e.sha256, "node_id": e.node_id}
                      for e in manifest.snapshots],
    }
    ctl.emit(summary, f"backup of cluster {manifest.cluster_id!r} written to {file}: "
                      f"{manifest.partitions} partitions, {_mib(manifest.total_bytes)}")
