"""`prkctl wal verify|dump DATA_DIR`: offline, read-only checks of a node's WAL.

Run them on a stopped node's data dir (or a copy of it, e.g. a backup). They
never modify a file: a torn tail that `prkdb serve` would cut at start is only
reported (as a warning, exit 0), corruption anywhere else exits 1 naming the
file and the byte offset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from prkctl.cli import CtlContext, PrkctlError, pass_ctl, translate_errors


def wal_dir(data_dir: Path) -> Path:
    """DATA_DIR/wal if it exists (a node's data dir), else DATA_DIR itself."""
    if (data_dir / "wal").is_dir():
        return data_dir / "wal"
    if any(p.suffix == ".wal" for p in data_dir.iterdir()):
        return data_dir
    raise click.BadParameter(f"{data_dir} holds no WAL (no wal/ directory, no *.wal files)",
                             param_hint="DATA_DIR")


DATA_DIR = click.argument(
    "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)


@click.group()
def wal() -> None:
    """Offline tools for a node's write-ahead log (read-only).

    \b
    Example:
      prkctl wal verify /var/lib/prkdb/node1
      prkctl wal dump /var/lib/prkdb/node1 --partition 3 --from 100
    """


@wal.command()
@DATA_DIR
@pass_ctl
@translate_errors
def verify(ctl: CtlContext, data_dir: Path) -> None:
    """Check every WAL record's CRC and the replay rules; exit 1 on corruption.

    \b
    Example:
      prkctl wal verify /var/lib/prkdb/node1 || echo "restore this node from a peer"
    """
    from prkdb.storage import verify as verify_wal

    report = verify_wal(wal_dir(data_dir))
    problem = report.problem
    data = {
        "directory": report.directory,
        "ok": report.ok,
        "records": report.records,
        "segments": [dataclasses.asdict(s) for s in report.segments],
        "partitions": {
            str(p): {"first_index": r.first_index, "last_index": r.last_index,
                     "snapshot_index": r.snapshot_index, "term": r.hard_state.term,
                     "commit": r.hard_state.commit}
            for p, r in sorted(report.partitions.items())
        },
        "problem": None if problem is None else dataclasses.asdict(problem),
    }

    def human() -> None:
        click.echo(f"{report.directory}: {len(report.segments)} segments, "
                   f"{report.records} records")
        for p, r in sorted(report.partitions.items()):
            click.echo(f"  partition {p}: entries {r.first_index}..{r.last_index} "
                       f"snapshot {r.snapshot_index} term {r.hard_state.term} "
                       f"commit {r.hard_state.commit}")
        click.echo("ok" if report.ok else "CORRUPT")

    ctl.emit(data, human)
    if problem is not None and problem.tail:
        click.echo(f"prkctl: warning: torn tail in {problem.file} at offset {problem.offset}: "
                   f"{problem.reason} (cut off at the next start; nothing acknowledged is "
                   "lost)", err=True)
    if not report.ok:
        assert problem is not None
        raise PrkctlError(f"corruption in {problem.file} at offset {problem.offset}: "
                          f"{problem.reason}")


def _record_json(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"file": Path(r.file).name, "offset": r.offset,
                           "kind": r.kind.name, "partition": r.partition}
    if r.entries:
        out["entries"] = [{"term": e.term, "index": e.index, "kind": getattr(e.kind, "name",
                           e.kind), "bytes": len(e.data)} for e in r.entries]
    if r.hard_state is not None:
        hs = r.hard_state
        out["hard_state"] = {"term": hs.term, "vote": hs.vote, "commit": hs.commit}
    if r.snapshot is not None:
        out["snapshot"] = {"index": r.snapshot.index, "term": r.snapshot.term}
        out["last_index"] = r.last_index
    return out


@wal.command()
@DATA_DIR
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition.")
@click.option("--from", "from_index", type=click.IntRange(min=0), default=0,
              help="Hide entries below this index.")
@pass_ctl
@translate_errors
def dump(ctl: CtlContext, data_dir: Path, partition: int | None, from_index: int) -> None:
    """Print the WAL's records, one per line (--json: one JSON object per line).

    Stops at the first bad record; `prkctl wal verify` says why.

    \b
    Example:
      prkctl wal dump /var/lib/prkdb/node1 --partition 0 --from 1200 | less
      prkctl --json wal dump ./data1 | jq -c 'select(.kind == "HARD_STATE")'
    """
    import json

    from prkdb.storage import dump as dump_wal

    for record in dump_wal(wal_dir(data_dir), partition, from_index):
        if ctl.json:
            click.echo(json.dumps(_record_json(record), sort_keys=True))
        else:
            click.echo(str(record))
